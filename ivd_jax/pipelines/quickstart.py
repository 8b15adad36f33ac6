"""The quickstart (mode 'quickstart'): the whole method end to end on the embedded scenes.

  python -m ivd_jax.main --config=configs/quickstart.py --workdir=DIR

Stages, each resumable (re-running skips finished work):
  1. prepare the procedural RGBD dataset   -> DIR/data
  2. train G_u                              -> DIR/uncond
  3. train G_c, initialised from G_u        -> DIR/cond
  4. full generation: view 0 from G_u, every further view from G_c, fusion video
                                            -> DIR/samples/<sample.run_name>/
  5. novel views of unseen scenes: view 0 is the true render of a held-out procedural scene,
     every further view from G_c with the visible content pinned to the warped condition
                                            -> DIR/samples/<novel.run_name>/
  6. 3D consistency (pairwise warps and TSED) of both runs and of the true views of the held-out
     scenes (the ceiling) on the same cameras, with TSED's shuffled control; fused meshes of the
     true views and their Chamfer distance to the scenes' analytic surfaces
                                            -> DIR/quickstart_summary.json,
                                               DIR/samples/quickstart_true_views/
and a results page of the whole run (both runs' pages linked) -> DIR/index.html.

With config.pretrained (the `pretrained` preset: networks shipped in ivd_jax/pretrained/), stages
2-3 are skipped and prepare writes only the few scenes the novel views and the ceiling need.
"""
import json
import sys
import time
from typing import Any, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from ivd_jax import errors
from ivd_jax import roles
from ivd_jax.data import procedural
from ivd_jax.data import records
from ivd_jax.data import surfaces
from ivd_jax.evaluation import consistency
from ivd_jax.evaluation import mesh as mesh_eval
from ivd_jax.geometry import cameras
from ivd_jax.io import jsonio
from ivd_jax.io import lock as lock_lib
from ivd_jax.io import paths
from ivd_jax.pipelines import prepare as prepare_pipeline
from ivd_jax.pipelines import sample as sample_pipeline
from ivd_jax.pipelines import train
from ivd_jax.pipelines import tsed_report
from ivd_jax.sampling import export
from ivd_jax.sampling import mesh as mesh_lib
from ivd_jax.sampling import page as sample_page
from ivd_jax.sampling import settings as sample_settings
from ivd_jax.training import checks


# The true views' meshes (the ceiling's scenes) go to DIR/samples/<TRUE_VIEWS_RUN>/; points
# sampled on each for its Chamfer distance to the analytic surfaces.
TRUE_VIEWS_RUN = 'quickstart_true_views'
_MESH_POINTS = 200_000


def _say(message: str) -> None:
  if jax.process_index() == 0:
    print(f'[quickstart] {message}', flush=True)
  logging.info('quickstart: %s', message)


def stage_config(config: ml_collections.ConfigDict, workdir: str,
                 role: str) -> ml_collections.ConfigDict:
  """The training config of stage `role` ('uncond' or 'cond') with its workdir paths filled in."""
  c = ml_collections.ConfigDict(config[role].to_dict())
  c.data.dir = config.data.dir or paths.join(workdir, 'data')
  init_from = roles.get(c.role).init_from
  if init_from:
    c.init_from = paths.join(workdir, init_from)
  return c


@lock_lib.locks_workdir  # one writer per workdir (each training stage locks its own)
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs all stages; returns (and writes) the summary with both consistency figures."""
  paths.makedirs(workdir)  # local or gs://
  timings, t_all = {}, time.perf_counter()
  uncond_cfg = stage_config(config, workdir, 'uncond')
  cond_cfg = stage_config(config, workdir, 'cond')
  pretrained = str(config.get('pretrained') or '')
  # Validate every stage before the first one spends minutes (G_c's init_from appears later).
  early_cond = ml_collections.ConfigDict(cond_cfg.to_dict())
  early_cond.init_from = ''
  for c in (() if pretrained else (uncond_cfg, early_cond)):
    checks.validate_config(c, num_devices=jax.device_count(), process_count=jax.process_count())
  if pretrained:
    _check_pretrained(config, pretrained)
  sample_settings.SampleSettings.from_config(config.sample).validate()
  sample_settings.SampleSettings.from_config(_novel_sample_config(config)).validate()
  _check_truth_cameras(config)

  t0 = time.perf_counter()
  _say(f'1/6 preparing {config.data.num_examples} procedural scenes at '
       f'{config.data.resolution} px -> {uncond_cfg.data.dir}')
  prepare_pipeline.run(uncond_cfg, workdir)
  timings['prepare_s'] = time.perf_counter() - t0

  for name, c, sub in (('G_u', uncond_cfg, 'uncond'), ('G_c', cond_cfg, 'cond')):
    if pretrained:
      _say(f'{2 if sub == "uncond" else 3}/6 {name}: the shipped network '
           f'{paths.join(pretrained, sub)} (no training)')
      continue
    t0 = time.perf_counter()
    _say(f'{2 if sub == "uncond" else 3}/6 training {name} for {c.train.num_steps} steps '
         f'(batch {c.train.batch_size}) -> {paths.join(workdir, sub)}')
    metrics = train.train_and_evaluate(c, paths.join(workdir, sub))
    timings[f'train_{sub}_s'] = time.perf_counter() - t0
    stopped = metrics.get('stopped', 'finished')
    if stopped != 'finished':
      # Preempted / Ctrl-C: the trainer saved its state; later stages must not start on a
      # half-trained network. Re-running the same command resumes this stage.
      _say(f'    {name} stopped by {stopped} at step {metrics.get("step")}; re-run the same '
           'command to resume')
      return {'stopped': stopped, 'stage': sub, 'timings': timings}
    _say(f'    {name} done in {timings[f"train_{sub}_s"]:.0f} s, final loss '
         f'{metrics.get("loss", float("nan")):.4f}')

  t0 = time.perf_counter()
  s = config.sample
  _say(f'4/6 full generation: {s.num_instances} instances of view set {s.viewset!r} '
       f'({s.steps_uncond} {s.sampler_uncond.upper()} G_u steps for view 0, {s.steps_cond} DDIM '
       'G_c steps per further view) and a fusion video')
  full = sample_pipeline.sample_and_export(_sample_config(config, workdir, config.sample), workdir)
  timings['sample_full_s'] = time.perf_counter() - t0

  # Novel views of unseen scenes: view 0 is the TRUE render of a held-out procedural scene (the
  # photo-start path of sample mode); G_c with the same settings as the full generation. The
  # quickstart's condition edits are 1.0 (configs/quickstart.py): networks trained for minutes
  # on a CPU barely follow their condition (their visible-region loss with and without it differs
  # by a few per cent), so at the reference's weights (0.1 / 0.2) the visible content drifts; at
  # 1.0 it is kept wherever it is visible and G_c only fills the newly revealed holes.
  t0 = time.perf_counter()
  novel_sample = _novel_sample_config(config)
  n = novel_sample.num_instances
  # The held-out truth: the test split prepare wrote (true renders of unseen scenes on the
  # cameras of the sampled view set, checked up front by _check_truth_cameras).
  truth = records.read_test_views(uncond_cfg.data.dir, max(config.ceiling_scenes, n),
                                  cache_dir=str(config.data.get('cache_dir') or ''))
  seeds = truth['scene_seed'].tolist()
  _say(f'5/6 novel views of {n} unseen test-split scenes: true view 0, {novel_sample.steps_cond} '
       f'DDIM G_c steps per further view with condition edits rgb {novel_sample.replace_rgb} / '
       f'depth {novel_sample.replace_depth}')
  novel = sample_pipeline.sample_and_export(_sample_config(config, workdir, novel_sample),
                                            workdir, first_rgbd=truth['rgbd'][:n, 0])
  timings['sample_novel_s'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  _say('6/6 consistency ceiling: true views of the held-out procedural scenes on the same '
       'cameras')
  # The true views in the data encoding (what the networks output), scored like generated views.
  ceiling = consistency.pairwise_consistency(
      truth['rgbd'], truth['views'][0], near=s.near, far=s.far, fov_deg=s.fov_deg, ssaa=s.ssaa,
      atol=s.atol, rtol=s.rtol, neighbours=s.consistency_neighbours or None)
  ceiling_tsed = tsed_report.tsed_report(truth['rgbd'], truth['views'][0], s,
                                         name='true_views')
  ceiling_mesh = _true_view_meshes(config, workdir, truth)
  timings['ceiling_s'] = time.perf_counter() - t0
  timings['total_s'] = time.perf_counter() - t_all

  runs = {}
  for key, manifest, label in (('full_generation', full, 'full generation (G_u view 0, G_c '
                                'further views)'),
                               ('novel_views', novel, 'novel views of unseen scenes (true view '
                                '0, G_c fills the holes)')):
    out_dir = manifest.pop('dir')
    manifest['consistency_ceiling'] = ceiling
    manifest['tsed_ceiling'] = ceiling_tsed
    manifest['quickstart_run'] = key
    instances = [paths.join(out_dir, i['dir']) for i in manifest['instances'] if 'dir' in i]
    runs[key] = {
        'label': label,
        'samples': out_dir,
        'overview': paths.join(out_dir, 'overview.png'),
        'consistency': manifest['consistency'],
        'tsed': manifest.get('tsed'),
        'instances': instances,
        'videos': [paths.join(i, 'orbit.mp4') for i in instances],
        'timings': manifest['timings'],
    }
    if jax.process_index() == 0:
      jsonio.write_manifest(paths.join(out_dir, 'manifest.json'), manifest)
      if config.sample.export:  # again, now with the ceiling
        runs[key]['page'] = sample_page.write_run_page(
            out_dir, manifest, back=[('quickstart', paths.join(workdir, sample_page.PAGE_NAME))])
  runs['novel_views']['scene_seeds'] = seeds[:n]
  runs['novel_views']['condition_edits'] = {
      k: float(novel_sample[k]) for k in ('replace_rgb', 'replace_depth', 'constrain_depth')}
  summary = {
      **runs,
      'consistency_ceiling': ceiling,
      'tsed_ceiling': ceiling_tsed,
      'mesh_ceiling': ceiling_mesh,
      'ceiling_scene_seeds': seeds,
      'timings': timings,
  }
  if pretrained:
    summary['pretrained'] = pretrained
  if jax.process_index() == 0:
    summary['page'] = sample_page.write_quickstart_page(workdir, summary, config.to_dict())
    jsonio.write_manifest(paths.join(workdir, 'quickstart_summary.json'), summary)
    _print_summary(summary)
  return summary


def _true_view_meshes(config: ml_collections.ConfigDict, workdir: str,
                      truth: dict[str, np.ndarray]) -> Optional[dict[str, Any]]:
  """Fused meshes of the held-out scenes' true views (DIR/samples/<TRUE_VIEWS_RUN>/scene_XXXX/:
  mesh.ply, cameras.ply) and their error against the scenes' analytic surfaces, averaged over
  the scenes (data/surfaces.py: exact distances, the seen surfaces at twice the resolution)."""
  s = config.sample
  settings = mesh_lib.MeshSettings.from_config(s)
  if settings is None or not s.export or jax.process_index() != 0:
    return None
  figures, dirs = [], []
  for k, (seed, rgbd, views) in enumerate(zip(truth['scene_seed'], truth['rgbd'],
                                              truth['views'])):
    out = paths.join(workdir, 'samples', TRUE_VIEWS_RUN, f'scene_{k:04d}')
    files, fused = export.export_mesh(out, rgbd=rgbd, views=views, near=s.near, far=s.far,
                                      fov_deg=s.fov_deg, settings=settings)
    scene = procedural.sample_scene(int(seed))
    bounds = files['mesh_grid']['bounds']
    on_mesh = mesh_eval.sample_surface(fused.vertices, fused.faces, _MESH_POINTS, seed=k)
    seen = surfaces.surface_points(scene, views, 2 * rgbd.shape[1], fov_deg=s.fov_deg,
                                   bounds=bounds)
    figures.append(mesh_eval.chamfer(on_mesh, seen, within=files['mesh_grid']['voxel'],
                                     mesh_to_surface=surfaces.distance(scene, on_mesh)))
    dirs.append(out)
  out = {key: float(np.mean([f[key] for f in figures]))
         for key in ('chamfer', 'accuracy', 'completeness', 'precision', 'recall')}
  return dict(out, num_scenes=len(figures), voxel=settings.voxel, meshes=dirs)


def _check_truth_cameras(config: ml_collections.ConfigDict) -> None:
  """The test split's true views must be the sampled view set's cameras (same truth, two uses)."""
  d, s = config.data, config.sample
  same = d.novel_viewset == s.viewset and (
      s.viewset != 'custom' or np.allclose(cameras.viewset_poses(list(d.novel_poses)),
                                           cameras.viewset_poses(list(s.custom_poses))))
  if not same or s.viewset == 'random':
    raise errors.ConfigError(
        'data.novel_viewset', f'the test split holds view set {d.novel_viewset!r} but the '
        f'quickstart samples {s.viewset!r}',
        'set data.novel_viewset to sample.viewset (and data.novel_poses to sample.custom_poses '
        "for 'custom'; 'random' differs per scene and cannot be the ceiling)")
  if config.ceiling_scenes > d.num_eval_examples:
    raise errors.ConfigError('ceiling_scenes', f'{config.ceiling_scenes} scenes asked of a test '
                             f'split of {d.num_eval_examples}',
                             'raise data.num_eval_examples or lower ceiling_scenes')


def _check_pretrained(config: ml_collections.ConfigDict, pretrained: str) -> None:
  """The shipped networks exist and were trained on the data this run prepares."""
  for sub in ('uncond', 'cond'):
    path = paths.join(pretrained, sub, 'config.json')
    if not paths.is_file(path):
      raise errors.ConfigError('pretrained', f'{path} does not exist',
                               'point it at a folder with uncond/ and cond/ exported networks '
                               '(python -m ivd_jax.tools.export_demo)')
    data = json.loads(paths.read_text(path)).get('data', {})
    for field in ('resolution', 'near', 'far'):
      if field in data and data[field] != config.data[field]:
        raise errors.ConfigError(f'data.{field}', f'{config.data[field]} but the network in '
                                 f'{paths.dirname(path)} was trained with {data[field]}',
                                 f'leave data.{field} at the preset value')


def _sample_config(config: ml_collections.ConfigDict, workdir: str,
                   sample: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A sample-mode config that reads the quickstart's G_u and G_c (or the shipped ones)."""
  c = ml_collections.ConfigDict({'mode': 'sample', 'sample': sample.to_dict(),
                                 'mesh': config.mesh.to_dict(),
                                 'distributed': config.distributed.to_dict()})
  networks = str(config.get('pretrained') or '') or workdir
  c.sample.uncond = paths.join(networks, 'uncond')
  c.sample.cond = paths.join(networks, 'cond')
  return c


def _novel_sample_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """config.sample with the overrides of config.novel (run name, instances, ...)."""
  sample = ml_collections.ConfigDict(config.sample.to_dict())
  for key, value in config.novel.items():
    sample[key] = value
  return sample


def _consistency_line(name: str, c: Optional[dict]) -> str:
  if not c:
    return f'  {name}: (one view only)'
  return (f'  {name}: colour PSNR {c["psnr"]:5.2f} dB, depth agreement '
          f'{c["depth_agreement"]:.3f}, co-visible {c["covisible"]:.3f}')


def _tsed_line(name: str, t: Optional[dict]) -> str:
  if not t:
    return f'  {name}: (not scored)'
  return (f'  {name}: TSED {t["tsed"]:.3f} ({t["num_consistent"]}/{t["num_pairs"]} pairs), '
          f'median SED {t["median_sed"]:5.2f} px, {t["matches_per_pair"]:.1f} matches per pair')


def _print_summary(summary: dict[str, Any]) -> None:
  lines = ['', f'Done in {summary["timings"]["total_s"] / 60:.1f} min.']
  for key in ('full_generation', 'novel_views'):
    run = summary[key]
    lines += [f'{run["label"]}:',
              f'  {run["overview"]}     first views of every instance']
    for inst in run['instances']:
      lines.append(f'  {inst}/orbit.mp4 (+ orbit.gif, grid_rgb.png, grid_depth.png, '
                   'points.ply, mesh.ply, cameras.ply)')
  lines += [
      '3D consistency (every view warped into every other view):',
      _consistency_line('full generation      ', summary['full_generation']['consistency']),
      _consistency_line('novel views (unseen) ', summary['novel_views']['consistency']),
      _consistency_line('true views (ceiling) ', summary['consistency_ceiling']),
  ]
  ceiling = summary.get('tsed_ceiling') or {}
  if ceiling:
    t = ceiling['settings']
    lines += [
        f'TSED (Yu et al. 2023: neighbouring views consistent when their SIFT matches have a '
        f'median epipolar distance < {t["error"]:g} px at {t["resolution"]} px, >= '
        f'{t["matches"]} matches):',
        _tsed_line('full generation      ', (summary['full_generation'].get('tsed') or {}).get(
            'generated')),
        _tsed_line('novel views (unseen) ', (summary['novel_views'].get('tsed') or {}).get(
            'generated')),
        _tsed_line('true views (ceiling) ', ceiling.get('true_views')),
        _tsed_line('shuffled true views  ', ceiling.get('shuffled')),
    ]
  m = summary.get('mesh_ceiling')
  if m:
    lines.append(f'Fused meshes of the true views ({m["num_scenes"]} scenes, voxel '
                 f'{m["voxel"]:g}): Chamfer {m["chamfer"]:.4f} to the analytic surfaces (accuracy '
                 f'{m["accuracy"]:.4f}, completeness {m["completeness"]:.4f}) -> '
                 f'{paths.dirname(m["meshes"][0])}')
  lines.append(f'Results page: {summary["page"]}')
  print('\n'.join(lines), file=sys.stdout, flush=True)
