"""The quickstart (mode 'quickstart'): the whole method end to end on the embedded scenes.

  python -m ivd_jax.main --config=configs/quickstart.py --workdir=DIR

Stages, each resumable (re-running skips finished work):
  1. prepare the procedural RGBD dataset   -> DIR/data
  2. train G_u                              -> DIR/uncond
  3. train G_c, initialised from G_u        -> DIR/cond
  4. sample a view set with a fusion video  -> DIR/samples/<run>/
  5. 3D consistency of the generated views and of the true views of unseen procedural scenes
     (the ceiling) on the same cameras      -> DIR/quickstart_summary.json
"""
import os
import sys
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from ivd_jax.training import presets


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(f'[quickstart] {message}', flush=True)
  logging.info('quickstart: %s', message)


def stage_config(config: ml_collections.ConfigDict, workdir: str, *,
                 conditional: bool) -> ml_collections.ConfigDict:
  """The training config of G_u or G_c: the `tiny` preset with the quickstart's overrides."""
  c = presets.train_config('tiny', conditional=conditional)
  c.data = ml_collections.ConfigDict(config.data.to_dict())
  c.data.dir = config.data.dir or os.path.join(workdir, 'data')
  for key, value in config.model.items():
    c.model[key] = value
  c.model.in_channels = 10 if conditional else 4
  c.mesh = ml_collections.ConfigDict(config.mesh.to_dict())
  for key, value in (config.train_cond if conditional else config.train_uncond).items():
    c.train[key] = value
  # One checkpoint at the end (resume granularity is a whole stage on this small run), no
  # periodic preview grids: the sampled view sets are the pictures.
  c.checkpoint.every_steps = c.train.num_steps
  c.log.every_steps = max(1, min(c.log.every_steps, c.train.num_steps))
  c.log.sample_every_steps = 0
  if conditional:
    c.init_from = os.path.join(workdir, 'uncond')
  return c


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs all stages; returns (and writes) the summary with both consistency figures."""
  from ivd_jax.data import builders  # pylint: disable=g-import-not-at-top
  from ivd_jax.evaluation import consistency  # pylint: disable=g-import-not-at-top
  from ivd_jax.inference import export  # pylint: disable=g-import-not-at-top
  from ivd_jax.inference import views as views_lib  # pylint: disable=g-import-not-at-top
  from ivd_jax.training import train  # pylint: disable=g-import-not-at-top

  os.makedirs(workdir, exist_ok=True)
  timings, t_all = {}, time.perf_counter()
  uncond_cfg = stage_config(config, workdir, conditional=False)
  cond_cfg = stage_config(config, workdir, conditional=True)
  # Validate every stage before the first one spends minutes (G_c's init_from appears later).
  early_cond = ml_collections.ConfigDict(cond_cfg.to_dict())
  early_cond.init_from = ''
  for c in (uncond_cfg, early_cond):
    train.validate_config(c, num_devices=jax.device_count(), process_count=jax.process_count())
  views_lib.SampleSettings.from_config(config.sample).validate()

  t0 = time.perf_counter()
  _say(f'1/5 preparing {config.data.num_examples} procedural scenes at '
       f'{config.data.resolution} px -> {uncond_cfg.data.dir}')
  builders.prepare(ml_collections.ConfigDict({'mode': 'prepare', 'data': uncond_cfg.data}),
                   workdir)
  timings['prepare_s'] = time.perf_counter() - t0

  for name, c, sub in (('G_u', uncond_cfg, 'uncond'), ('G_c', cond_cfg, 'cond')):
    t0 = time.perf_counter()
    _say(f'{2 if sub == "uncond" else 3}/5 training {name} for {c.train.num_steps} steps '
         f'(batch {c.train.batch_size}) -> {os.path.join(workdir, sub)}')
    metrics = train.train_and_evaluate(c, os.path.join(workdir, sub))
    timings[f'train_{sub}_s'] = time.perf_counter() - t0
    _say(f'    {name} done in {timings[f"train_{sub}_s"]:.0f} s, final loss '
         f'{metrics.get("loss", float("nan")):.4f}')

  t0 = time.perf_counter()
  sample_cfg = ml_collections.ConfigDict({
      'mode': 'sample', 'sample': config.sample.to_dict(), 'mesh': config.mesh.to_dict()})
  sample_cfg.sample.uncond = os.path.join(workdir, 'uncond')
  sample_cfg.sample.cond = os.path.join(workdir, 'cond')
  s = sample_cfg.sample
  _say(f'4/5 sampling {s.num_instances} instances of view set {s.viewset!r} '
       f'({s.steps_uncond} {s.sampler_uncond.upper()} steps for view 0, {s.steps_cond} DDIM '
       'steps per further view) and a fusion video')
  manifest = views_lib.sample_and_export(sample_cfg, workdir)
  timings['sample_s'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  _say('5/5 consistency ceiling: true views of unseen procedural scenes on the same cameras')
  seeds = [config.ceiling_seed + i for i in range(config.ceiling_scenes)]
  ceiling = consistency.procedural_ceiling(
      seeds, np.asarray(manifest['instances'][0]['views']), config.data.resolution, near=s.near,
      far=s.far, data_near=config.data.near, data_far=config.data.far, fov_deg=s.fov_deg,
      ssaa=s.ssaa, atol=s.atol, rtol=s.rtol, neighbours=s.consistency_neighbours or None)
  timings['ceiling_s'] = time.perf_counter() - t0
  timings['total_s'] = time.perf_counter() - t_all

  out_dir = manifest.pop('dir')
  manifest['consistency_ceiling'] = ceiling
  summary = {
      'samples': out_dir,
      'consistency': manifest['consistency'],
      'consistency_ceiling': ceiling,
      'timings': timings,
      'instances': [os.path.join(out_dir, i['dir']) for i in manifest['instances']
                    if 'dir' in i],
  }
  if jax.process_index() == 0:
    export.write_manifest(os.path.join(out_dir, 'manifest.json'), manifest)
    export.write_manifest(os.path.join(workdir, 'quickstart_summary.json'), summary)
    _print_summary(summary)
  return summary


def _print_summary(summary: dict[str, Any]) -> None:
  gen, ceil = summary['consistency'], summary['consistency_ceiling']
  lines = [
      '',
      f'Done in {summary["timings"]["total_s"] / 60:.1f} min. Pictures:',
      f'  {summary["samples"]}/overview.png     first views of every instance',
  ]
  for inst in summary['instances']:
    lines.append(f'  {inst}/grid_rgb.png, grid_depth.png, orbit.mp4 (orbit.gif), points.ply')
  if gen:
    lines += [
        '3D consistency (every view warped into every other view):',
        f'  generated : colour PSNR {gen["psnr"]:.2f} dB, depth agreement '
        f'{gen["depth_agreement"]:.3f}, co-visible {gen["covisible"]:.3f}',
        f'  true views: colour PSNR {ceil["psnr"]:.2f} dB, depth agreement '
        f'{ceil["depth_agreement"]:.3f}, co-visible {ceil["covisible"]:.3f}  (ceiling)',
    ]
  print('\n'.join(lines), file=sys.stdout, flush=True)
