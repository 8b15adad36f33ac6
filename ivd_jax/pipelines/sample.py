"""The `sample` mode: 3D-consistent view sets from G_u and G_c (docs/method.md §7-8).

  python -m ivd_jax.main --config=configs/sample.py:imagenet128 --workdir=DIR \
      --config.sample.uncond=GU --config.sample.cond=GC

Writes DIR/samples/<run>/: manifest.json (settings, timings, pairwise consistency and TSED of
the generated views: pipelines/tsed_report.py), views.npz, overview.png, index.html (the results
page, sampling/page.py) and one folder per instance (sampling/export.py; with sample.mesh the
fused mesh.ply and cameras.ply).
"""
import dataclasses
import json
import time
from typing import Any, Optional

from absl import logging
import jax
import numpy as np

from ivd_jax import checkpoint as ckpt_lib
from ivd_jax import errors
from ivd_jax import parallel
from ivd_jax.evaluation import consistency
from ivd_jax.io import jsonio
from ivd_jax.io import lock as lock_lib
from ivd_jax.io import paths
from ivd_jax.pipelines import superres as superres_stage
from ivd_jax.pipelines import tsed_report
from ivd_jax.sampling import export
from ivd_jax.sampling import generate
from ivd_jax.sampling import mesh as mesh_lib
from ivd_jax.sampling import networks
from ivd_jax.sampling import page as sample_page
from ivd_jax.sampling import photo
from ivd_jax.sampling import sampler as sampler_lib
from ivd_jax.sampling import settings as settings_lib
from ivd_jax.sampling import viewsets

# Multi-process runs: how long the other processes wait for process 0 to write the exports.
_EXPORT_TIMEOUT_S = 24 * 3600


def build_sampler(sample_config: Any, mesh_config: Any, *,
                  need_uncond: bool = True) -> tuple[sampler_lib.ViewSampler, dict]:
  """Loads G_u / G_c from config.sample.uncond / cond; compiles nothing yet.

  Args:
    sample_config: config.sample.
    mesh_config: config.mesh.
    need_uncond: load G_u too (not needed when every view 0 is given).

  Returns:
    (the sampler, info for reports: the networks' model sections and the data encoding
    `data_near` / `data_far` of G_c's training data).
  """
  s = sample_config
  settings = settings_lib.SampleSettings.from_config(s)
  settings.validate()
  cond, cond_config = networks.load_network(s.cond, field='sample.cond', ema=s.ema)
  uncond, uncond_config = None, None
  if need_uncond:
    uncond, uncond_config = networks.load_network(s.uncond, field='sample.uncond', ema=s.ema)
  sampler = sampler_lib.ViewSampler(uncond, cond, settings, mesh=parallel.make_mesh(mesh_config),
                                    schedule=networks.diffusion_schedule(cond_config))
  data_near, data_far = networks.data_encoding(cond_config)
  info = {'cond_model': cond_config.model.to_dict(), 'data_near': data_near,
          'data_far': data_far}
  if uncond_config is not None:
    info['uncond_model'] = uncond_config.model.to_dict()
  return sampler, info


def _validate(s: Any) -> None:
  if s.num_instances < 1:
    raise errors.ConfigError('sample.num_instances', f'{s.num_instances} < 1',
                             'generate at least one instance')
  if s.viewset not in viewsets.VIEWSETS:
    raise errors.ConfigError('sample.viewset', f'unknown view set {s.viewset!r}',
                             f'use one of {viewsets.VIEWSETS}')
  if s.run_name:
    errors.check_name('sample.run_name', s.run_name)  # DIR/samples/<run_name>: one component


def _export_instances(out_dir: str, s: Any, result: generate.ViewSetResult, poses: np.ndarray,
                      fused: Optional[np.ndarray]) -> list[dict]:
  """The manifest entry of every instance; with sample.export, its folder of files too."""
  instances = []
  for k, i in enumerate(result.instance_ids):
    entry = {'index': int(i), 'label': int(result.labels[k]), 'poses': poses[k],
             'views': result.views[k]}
    if s.export:
      name = f'instance_{int(i):04d}'
      entry['files'] = export.export_instance(
          paths.join(out_dir, name), rgbd=result.rgbd[k], views=result.views[k],
          cond_rgbd=result.cond_rgbd[k], cond_mask=result.cond_mask[k],
          cond_mask_rgb=result.cond_mask_rgb[k], near=s.near, far=s.far, fov_deg=s.fov_deg,
          video=None if fused is None else export.fusion_video(fused[k]), fps=s.fps,
          ply_max_depth=s.ply_max_depth or None, grid_view_px=s.grid_view_px,
          mesh=mesh_lib.MeshSettings.from_config(s))
      entry['dir'] = name
    instances.append(entry)
  return instances


@lock_lib.locks_workdir  # one writer per workdir
def sample_and_export(config: Any, workdir: str, *,
                      first_rgbd: Optional[np.ndarray] = None) -> dict:
  """The `sample` mode: generates view sets and writes DIR/samples/<run>/.

  Args:
    config: the config with `sample` and `mesh` sections.
    workdir: outputs go to workdir/samples/<run>/.
    first_rgbd: optional [N, H, W, 4] view 0 of every instance in [0, 1] (data encoding), e.g.
      true renders of unseen scenes; used instead of G_u (and of config.sample.source_image).

  Returns:
    The manifest (also written as manifest.json), including `consistency`, and `dir`.
  """
  s = config.sample
  _validate(s)
  if s.sr_source:  # super-resolve an earlier run's views only (pipelines/superres.py)
    return superres_stage.from_source(config, workdir)
  from_photo = bool(s.source_image) or first_rgbd is not None
  sampler, info = build_sampler(s, config.mesh, need_uncond=not from_photo)
  sr = superres_stage.Stage(config) if s.sr else None
  ids = np.arange(s.num_instances)
  poses, views = viewsets.viewset_views(s.viewset, seed=s.seed, instance_ids=ids,
                                        num_frames=s.num_frames, custom_poses=s.custom_poses)
  num_classes = sampler.cond.model.num_classes or 0
  labels = viewsets.instance_labels(s.label_mode, num_classes, s.seed, ids, tuple(s.labels))
  first = first_rgbd
  if first is None and from_photo:
    first = photo.load_source_view(s, sampler.resolution, near=info['data_near'],
                                   far=info['data_far'])
  frame_views = (viewsets.video_path_views(s.video_path, s.viewset, s.video_frames)
                 if s.video and s.export else None)

  t0 = time.perf_counter()
  result, fused = generate.generate_views(
      sampler, views, seed=s.seed, instance_ids=ids, labels=labels, batch_size=s.batch_size,
      first_rgbd=first, frame_views=frame_views, buffer_size=s.buffer_size,
      progress=s.progress and jax.process_index() == 0)
  total_s = time.perf_counter() - t0

  run_name = s.run_name or f'{s.viewset}_seed{s.seed}'
  out_dir = paths.join(workdir, 'samples', run_name)  # local or gs://
  manifest = {
      'run': run_name,
      'viewset': s.viewset,
      'num_instances': int(s.num_instances),
      'seed': int(s.seed),
      'settings': dataclasses.asdict(sampler.settings),
      'sample_config': s.to_dict(),
      'resolution': sampler.resolution,
      'devices': jax.device_count(),
      'from_photo': from_photo,
      'timings': dict(result.timings, total_s=total_s),
      **info,
  }
  manifest['consistency'] = None
  if s.consistency and views.shape[1] > 1:
    t0 = time.perf_counter()
    manifest['consistency'] = consistency.pairwise_consistency(
        result.rgbd, result.views, near=s.near, far=s.far, fov_deg=s.fov_deg, ssaa=s.ssaa,
        atol=s.atol, rtol=s.rtol, neighbours=s.consistency_neighbours or None)
    manifest['timings']['consistency_s'] = time.perf_counter() - t0
  t0 = time.perf_counter()
  manifest['tsed'] = tsed_report.tsed_report(result.rgbd, result.views, s, name='generated')
  manifest['timings']['tsed_s'] = time.perf_counter() - t0
  if sr is not None:  # the super-resolution stage: DIR/samples/<run>/sr/
    manifest['sr'] = sr.run(out_dir, low_rgbd=result.rgbd, views=result.views,
                            labels=result.labels, instance_ids=result.instance_ids,
                            data_encoding=(info['data_near'], info['data_far']))
  if jax.process_index() != 0:  # process 0 alone writes the files; the others wait for it
    ckpt_lib.wait_for_all_processes('ivd_jax:sample_export', timeout_s=_EXPORT_TIMEOUT_S)
    return dict(manifest, dir=out_dir, instances=[])
  manifest['instances'] = _export_instances(out_dir, s, result, poses, fused)
  if s.export:
    export.export_run(out_dir, rgbd=result.rgbd, views=result.views, labels=result.labels,
                      instance_ids=result.instance_ids, grid_view_px=s.grid_view_px)
  jsonio.write_manifest(paths.join(out_dir, 'manifest.json'), manifest)
  if s.export:
    logging.info('results page: %s', sample_page.write_run_page(out_dir, manifest))
  logging.info('wrote %s (consistency %s)', out_dir, json.dumps(manifest['consistency']))
  manifest['dir'] = out_dir
  ckpt_lib.wait_for_all_processes('ivd_jax:sample_export', timeout_s=_EXPORT_TIMEOUT_S)
  return manifest
