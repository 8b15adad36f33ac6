"""TSED figures of the modes (evaluation/tsed.py): a run's view sets, the shuffled control and,
on procedural data, the true views (the ceiling). The keys written to manifest.json
(`tsed`), to the quickstart summary (`tsed_ceiling`, each run's `tsed`) and to the eval report
(`tsed`):
  generated            the view sets of the run
  shuffled             their control: each pair's second view from another instance
  true_views           true views of procedural scenes on the same cameras (the ceiling)
  true_views_shuffled  (eval) the true views' control
  from_true_view_0     (eval) the sets generated from the true view 0 of those scenes
  settings             the TsedSettings (T_error, T_matches, resolution, ...)
each a dict of evaluation.tsed figures (tsed, num_pairs, num_consistent, median_sed, ...).
"""
from typing import Any, Optional

import numpy as np

from ivd_jax.evaluation import tsed as tsed_lib
from ivd_jax.evaluation import truth as truth_lib


def tsed_report(rgbd: np.ndarray, views: np.ndarray, s: Any, *,
                name: str) -> Optional[dict[str, Any]]:
  """{name: figures, 'shuffled': the control's, 'settings': ...} of view sets [N, V, H, W, C]
  on views [V or N x V, 4, 4]; None when config.sample.tsed is off or a set has one view."""
  if not s.tsed or np.asarray(views).shape[-3] < 2:
    return None
  settings = tsed_lib.TsedSettings.from_config(s)
  out = tsed_lib.tsed(rgbd, views, fov_deg=s.fov_deg, settings=settings)
  return {name: out['views'], 'shuffled': out['shuffled'], 'settings': settings.as_dict()}


def eval_tsed(s: Any, rgbd: np.ndarray, views: np.ndarray, num_sets: int,
              truth: Optional[truth_lib.TrueViews],
              truth_generated: Optional[np.ndarray]) -> Optional[dict[str, Any]]:
  """The eval report's `tsed`: the first `num_sets` (0: all) generated sets and, with the truth,
  its true views and the sets generated from their view 0."""
  k = num_sets or len(rgbd)
  report = tsed_report(rgbd[:k], views[:k], s, name='generated')
  if report is not None and truth is not None:
    true_sets = np.concatenate([truth.first[:, None, ..., :3], truth.rgb], axis=1)
    ceiling = tsed_report(true_sets, truth.views, s, name='true_views')
    report.update(true_views=ceiling['true_views'], true_views_shuffled=ceiling['shuffled'])
    if truth_generated is not None:
      report['from_true_view_0'] = tsed_report(truth_generated, truth.views, s,
                                               name='generated')['generated']
  return report
