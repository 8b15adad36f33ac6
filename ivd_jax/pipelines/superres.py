"""The super-resolution stage of the `sample` mode: a view set through G_sr, DIR/samples/<run>/sr/.

  python -m ivd_jax.main --config=configs/sample.py:imagenet128 --workdir=DIR \
      --config.sample.uncond=GU --config.sample.cond=GC --config.sample.sr=G_SR
  python -m ivd_jax.main --config=configs/sample.py --workdir=DIR \
      --config.sample.sr=G_SR --config.sample.sr_source=DIR/samples/RUN     # an earlier run

sample.sr_mode 'consistent' (default) or 'independent' (ivd_jax/sampling/superres.py). Writes
beside the run's own files: sr/manifest.json (settings, timings and the pairwise 3D consistency of
the super-resolved views), sr/views.npz, sr/overview.png and one folder per instance (view PNGs,
depth, grids, the conditions in consistent mode, fusion video, PLY at the high resolution).
"""
import json
import time
from typing import Any, Optional

from absl import logging
import jax
import numpy as np

from ivd_jax import checkpoint as ckpt_lib
from ivd_jax import errors
from ivd_jax.evaluation import consistency
from ivd_jax.io import jsonio
from ivd_jax.io import npz
from ivd_jax.io import paths
from ivd_jax.sampling import export
from ivd_jax.sampling import superres
from ivd_jax.sampling import viewsets

SR_DIR = 'sr'
# Multi-process runs: how long the other processes wait for process 0 to write the exports.
_EXPORT_TIMEOUT_S = 24 * 3600


class Stage:
  """G_sr loaded before the view set is generated (a bad checkpoint fails in seconds)."""

  def __init__(self, config: Any):
    self.config = config
    self.sampler, self.info = superres.build(config.sample, config.mesh)

  def run(self, run_dir: str, *, low_rgbd: np.ndarray, views: np.ndarray, labels: np.ndarray,
          instance_ids: np.ndarray, data_encoding: tuple[float, float],
          source: str = '') -> dict:
    """Super-resolves the views [N, V, h, w, 4] (in [0, 1], z-buffer depth of `data_encoding`;
    read from `source` if given), writes run_dir/sr/ (process 0) and returns its manifest."""
    s = self.config.sample
    low = superres.reencode_depth(low_rgbd, source=data_encoding,
                                  target=(self.info['data_near'], self.info['data_far']))
    frame_views = (viewsets.video_path_views(s.video_path, s.viewset, s.video_frames)
                   if s.video and s.export else None)
    result, fused = superres.super_resolve(
        self.sampler, low, views, seed=s.seed, instance_ids=instance_ids, labels=labels,
        batch_size=s.batch_size, frame_views=frame_views,
        progress=s.progress and jax.process_index() == 0)
    st = self.sampler.settings
    manifest = {'mode': st.mode, 'steps': st.steps, 'start': st.start, 'guidance': st.guidance,
                'replace_rgb': st.replace_rgb, 'replace_depth': st.replace_depth,
                'constrain_depth': st.constrain_depth, 'source_resolution': int(low.shape[2]),
                'timings': dict(result.timings), 'dir': SR_DIR, **self.info}
    if source:
      manifest['source'] = source
    manifest['consistency'] = None
    if s.consistency and views.shape[1] > 1:
      t0 = time.perf_counter()
      manifest['consistency'] = consistency.pairwise_consistency(
          result.rgbd, views, near=s.near, far=s.far, fov_deg=s.fov_deg, ssaa=s.ssaa,
          atol=s.atol, rtol=s.rtol, neighbours=s.consistency_neighbours or None)
      manifest['timings']['consistency_s'] = time.perf_counter() - t0
    if jax.process_index() == 0:
      out_dir = paths.join(run_dir, SR_DIR)
      manifest['instances'] = self._export(out_dir, result, views, labels, instance_ids, fused)
      if s.export:
        export.export_run(out_dir, rgbd=result.rgbd, views=views, labels=labels,
                          instance_ids=instance_ids)
      jsonio.write_manifest(paths.join(out_dir, 'manifest.json'), manifest)
      logging.info('wrote %s (SR consistency %s)', out_dir, json.dumps(manifest['consistency']))
    return manifest

  def _export(self, out_dir: str, result: superres.SRResult, views: np.ndarray,
              labels: np.ndarray, instance_ids: np.ndarray,
              fused: Optional[np.ndarray]) -> list[dict]:
    s = self.config.sample
    instances = []
    for k, i in enumerate(instance_ids):
      entry = {'index': int(i), 'label': int(labels[k])}
      if s.export:
        pick = lambda a: None if a is None else a[k]
        entry['dir'] = f'instance_{int(i):04d}'
        entry['files'] = export.export_instance(
            paths.join(out_dir, entry['dir']), rgbd=result.rgbd[k], views=views[k],
            cond_rgbd=pick(result.cond_rgbd), cond_mask=pick(result.cond_mask),
            cond_mask_rgb=pick(result.cond_mask_rgb), near=s.near, far=s.far,
            fov_deg=s.fov_deg, video=None if fused is None else export.fusion_video(fused[k]),
            fps=s.fps, ply_max_depth=s.ply_max_depth or None)
      instances.append(entry)
    return instances


def from_source(config: Any, workdir: str) -> dict:
  """Super-resolves the views of an earlier run (sample.sr_source: its folder or views.npz) into
  DIR/samples/<run_name, default the source run's name>/sr/; returns the SR manifest."""
  s = config.sample
  if not s.sr:
    raise errors.ConfigError('sample.sr', 'sample.sr_source is set but no G_sr is given',
                             'set sample.sr to a G_sr training workdir or exported params')
  source = s.sr_source
  if paths.is_dir(source):
    source = paths.join(source, 'views.npz')
  if not paths.is_file(source):
    raise errors.ConfigError('sample.sr_source', f'{source} does not exist',
                             'give a sample run folder (DIR/samples/RUN) or its views.npz')
  run_dir = paths.dirname(source)
  with npz.load_npz(source) as f:
    arrays = {k: np.asarray(f[k]) for k in ('rgbd', 'views', 'labels', 'instance_ids')}
  # The depth encoding of the source views: G_c's, recorded in the source run's manifest.
  encoding = None
  if paths.is_file(paths.join(run_dir, 'manifest.json')):
    source_manifest = json.loads(paths.read_text(paths.join(run_dir, 'manifest.json')))
    if 'data_near' in source_manifest:
      encoding = (float(source_manifest['data_near']), float(source_manifest['data_far']))
  stage = Stage(config)
  out = paths.join(workdir, 'samples', s.run_name or paths.basename(run_dir))
  manifest = stage.run(out, low_rgbd=arrays['rgbd'], views=arrays['views'],
                       labels=arrays['labels'], instance_ids=arrays['instance_ids'],
                       data_encoding=encoding or (stage.info['data_near'],
                                                  stage.info['data_far']), source=source)
  ckpt_lib.wait_for_all_processes('ivd_jax:sr_export', timeout_s=_EXPORT_TIMEOUT_S)
  return dict(manifest, dir=paths.join(out, SR_DIR))
