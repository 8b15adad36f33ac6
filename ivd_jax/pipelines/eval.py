"""The `eval` mode: FID / IS / KID of generated novel views (docs/method.md §10), 3D consistency,
and on procedural data the error against the true novel views.

  python -m ivd_jax.main --config=configs/eval.py:imagenet128 --workdir=DIR \
      --config.sample.uncond=GU --config.sample.cond=GC --config.data.dir=PREPARED_IMAGENET

Steps:
1. The Inception weights are loaded first (a missing file is a UserError naming the converter
   command), then everything else is validated, before anything compiles.
2. Generated images: the protocol's view sets are sampled with ivd_jax.sampling.generate (view set,
   class labels, steps and guidance from config.sample; the `imagenet128` preset is
   docs/method.md §10: `random`, uniform classes, 1000 DDPM + 50 DDIM steps, w = 0.5), or read
   from config.eval.generated (evaluation.images.read_images: a folder of images, an .npz with
   `images` [N, H, W, 3], or the sample mode's views.npz). The scored images are the novel views
   (every view but view 0) unless eval.views says otherwise.
3. Reference statistics of the real images (config.data through ivd_jax.data.pipeline in file
   order, every example of eval.reference_split, or eval.reference: a folder / .npz of images),
   computed once and cached in DIR/eval/reference_<key>.npz (evaluation.reference). The key
   covers the dataset, the image count and the weights, so a stale cache is never used.
4. FID, IS (eval.is_splits splits; needs a weights file with the softmax layer), KID; 3D
   consistency of the generated sets (evaluation.consistency and .tsed); on procedural data the
   error of novel views generated from the true view 0 of the first eval.truth_scenes scenes of
   the prepared 'test' split against that split's true novel views, on its cameras
   (evaluation.truth). These are read before anything compiles.
5. Writes DIR/eval/<name>.json, DIR/eval/<name>.png (evaluation.report) and the results page
   DIR/eval/<name>.html (evaluation.page).
This module only wires the stages together: data and sampling produce arrays, evaluation scores
them.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Iterator, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

from ivd_jax import errors
from ivd_jax import parallel
from ivd_jax.data import pipeline
from ivd_jax.data import procedural
from ivd_jax.data import records
from ivd_jax.evaluation import consistency
from ivd_jax.evaluation import fid
from ivd_jax.evaluation import images as images_lib
from ivd_jax.evaluation import page as page_lib
from ivd_jax.evaluation import reference
from ivd_jax.evaluation import report as report_lib
from ivd_jax.evaluation import truth as truth_lib
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.io import lock as lock_lib
from ivd_jax.io import paths
from ivd_jax.models import inception
from ivd_jax.pipelines import sample as sample_pipeline
from ivd_jax.pipelines import tsed_report
from ivd_jax.sampling import generate
from ivd_jax.sampling import sampler as sampler_lib
from ivd_jax.sampling import viewsets

# Co-visibility of the stored true views: their depth is a 16-bit z-buffer whose rounding moves a
# point off its surface by up to ~5e-4 of its depth inside the scenes' dome; the exact test's own
# tolerance (1e-5) would call a fifth of the co-visible pixels occluded.
_STORED_DEPTH_RTOL = 1e-3


def _validate(config: Any, has_logits: bool) -> None:
  e = config.eval
  if e.num_images < 2:
    raise errors.ConfigError('eval.num_images', f'{e.num_images} < 2',
                             'score at least 2 images (the protocol uses 10000)')
  if e.views not in images_lib.VIEW_CHOICES:
    raise errors.ConfigError('eval.views', f'unknown choice {e.views!r}',
                             f'use one of {images_lib.VIEW_CHOICES}')
  if e.is_splits < 1 or (has_logits and e.num_images < e.is_splits):
    raise errors.ConfigError('eval.is_splits', f'{e.is_splits} splits of {e.num_images} images',
                             'use 10 splits (the standard) and at least as many images')
  if e.kid_subsets < 1 or e.kid_subset_size < 2:
    raise errors.ConfigError('eval.kid_subset_size', 'KID needs >= 1 subset of >= 2 images',
                             'use the standard 100 subsets of 1000')
  if e.name:
    errors.check_name('eval.name', e.name)  # DIR/eval/<name>.json: one path component
  for field in ('generated', 'reference'):
    path = e.get(field)
    if path and not paths.exists(path):  # local or gs://
      raise errors.ConfigError(f'eval.{field}', f'{path} does not exist',
                               'give a folder of images or an .npz file')
  if not e.generated and not (config.sample.uncond and config.sample.cond):
    raise errors.ConfigError(
        'sample.uncond', 'no networks and no generated images given',
        'set --config.sample.uncond=GU --config.sample.cond=GC (training workdirs or exported '
        'params), or --config.eval.generated=FOLDER_OR_NPZ')


# ------------------------------------------------------------------------------------------------
# Sampling: the generated view sets.
# ------------------------------------------------------------------------------------------------


def _generate(config: Any, sampler: sampler_lib.ViewSampler, info: dict) -> images_lib.Generated:
  s, e = config.sample, config.eval
  probe_views = viewsets.viewset_views(s.viewset, seed=s.seed, instance_ids=[0],
                                       num_frames=s.num_frames, custom_poses=s.custom_poses)[1]
  per_set = {'novel': probe_views.shape[1] - 1, 'first': 1, 'all': probe_views.shape[1]}[e.views]
  if per_set < 1:
    raise errors.ConfigError('eval.views', f'view set {s.viewset!r} has no novel views',
                             "use a view set with >= 2 views (the protocol: 'random')")
  num_sets = -(-e.num_images // per_set)
  ids = np.arange(num_sets)
  _, view_sets = viewsets.viewset_views(s.viewset, seed=s.seed, instance_ids=ids,
                                        num_frames=s.num_frames, custom_poses=s.custom_poses)
  num_classes = sampler.cond.model.num_classes or 0
  labels = viewsets.instance_labels(s.label_mode, num_classes, s.seed, ids, tuple(s.labels))
  t0 = time.perf_counter()
  result, _ = generate.generate_views(
      sampler, view_sets, seed=s.seed, instance_ids=ids, labels=labels,
      batch_size=s.batch_size, buffer_size=s.buffer_size,
      progress=bool(s.progress) and jax.process_index() == 0)
  seconds = time.perf_counter() - t0
  settings = dict(viewset=s.viewset, label_mode=s.label_mode, guidance=float(s.guidance),
                  sampler_uncond=s.sampler_uncond, steps_uncond=int(s.steps_uncond),
                  steps_cond=int(s.steps_cond), seed=int(s.seed), num_view_sets=int(num_sets),
                  sample_settings=dataclasses.asdict(sampler.settings), **info)
  return images_lib.Generated(images_lib.from_view_sets(result.rgbd, e.views, e.num_images),
                              source='generated', rgbd=result.rgbd, views=result.views,
                              settings=settings, seconds=seconds)


# ------------------------------------------------------------------------------------------------
# Data: the real images of the reference statistics.
# ------------------------------------------------------------------------------------------------


def _largest_divisor(n: int, at_most: int) -> int:
  return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def _pipeline_images(config: Any, workdir: str, limit: int
                     ) -> tuple[list[int], tuple[int, int, int], Iterator[np.ndarray]]:
  """The real set in file order, the first `limit` images (0: all), split over the processes.

  Returns:
    (images of every process: process p holds the p-th consecutive part, [H, W, 3], iterator of
    this process's uint8 RGB batches).
  """
  e = config.eval
  data_config = config.data
  if not data_config.get('dir'):
    data_config = config.data.copy_and_resolve_references()
    with data_config.unlocked():
      data_config.dir = records.data_dir(config, workdir)
  procs = jax.process_count()
  probe = pipeline.create_input_iterator(data_config, global_batch_size=procs, mesh=None,
                                         seed=0, split=e.reference_split, shuffle=False,
                                         num_epochs=1)
  counts = [probe.num_examples]
  if procs > 1:  # tfds.split_for_jax_process: consecutive parts, in process order
    counts = [int(c) for c in multihost_utils.process_allgather(np.int32(probe.num_examples))]
  if limit:
    starts = np.cumsum([0] + counts[:-1])
    counts = [int(np.clip(limit - s, 0, c)) for s, c in zip(starts, counts)]
  n = counts[jax.process_index()]
  resolution = int(probe.metadata['resolution'])

  def batches():
    if not n:
      return
    # A batch size dividing the count, so that the pipeline's drop_remainder keeps every image.
    local = _largest_divisor(n, max(1, e.batch_size // procs))
    it = pipeline.create_input_iterator(data_config, global_batch_size=local * procs, mesh=None,
                                        seed=0, split=e.reference_split, shuffle=False,
                                        num_epochs=1)
    seen = 0
    for batch in it:
      rgb = np.asarray(batch['rgbd'])[..., :3]
      yield fid.images_to_uint8(rgb[:n - seen], (-1.0, 1.0))
      seen += rgb.shape[0]
      if seen >= n:
        return

  return counts, (resolution, resolution, 3), batches()


def _reference(config: Any, workdir: str, extractor: fid.FeatureExtractor,
               weights_path: str) -> tuple[reference.ReferenceStats, bool]:
  """The real set's statistics, from the cache when its key matches (see module docstring)."""
  e = config.eval
  weights = reference.weights_identity(paths.stage(weights_path))
  if e.reference:
    meta = {'reference': paths.abspath(e.reference), 'limit': int(e.num_reference),
            'weights': weights}

    def real_features():  # every process reads them all
      return extractor.replicated(images_lib.read_images(e.reference, field='reference',
                                                         views='all', limit=e.num_reference).images)
  else:
    data_dir = records.data_dir(config, workdir)
    metadata = records.load_metadata(data_dir)
    meta = {'data_dir': paths.abspath(data_dir), 'split': e.reference_split,
            'limit': int(e.num_reference), 'weights': weights,
            'dataset': {k: metadata.get(k) for k in ('source', 'resolution', 'near', 'far',
                                                     'seed', 'splits', 'classes')}}

    def real_features():  # each process reads its part
      counts, shape, batches = _pipeline_images(config, workdir, e.num_reference)
      logging.info('eval: reference statistics of %d real images', sum(counts))
      return extractor.in_order(batches, counts, shape)

  def compute():
    return reference.ReferenceStats.from_features(real_features().pool, {},
                                                  kid_max=e.kid_max_reference, seed=e.seed)

  path = e.reference_cache or reference.cache_path(paths.join(workdir, 'eval'), meta)
  return reference.cached_reference(path, meta, compute)


# ------------------------------------------------------------------------------------------------
# Procedural truth: data gives the true views, sampling the generated ones, evaluation scores.
# ------------------------------------------------------------------------------------------------


def _is_procedural(config: Any, workdir: str) -> bool:
  path = records.data_dir(config, workdir)
  if not paths.is_file(paths.join(path, 'metadata.json')):
    return False
  return records.load_metadata(path).get('source') == 'procedural'


def _read_truth(config: Any, workdir: str) -> truth_lib.TrueViews:
  """The true views of the first eval.truth_scenes scenes of the prepared 'test' split.

  Colour, depth and cameras come from the split (records.read_test_views); which novel-view
  pixels view 0 sees is traced in the scene the split names (procedural.covisibility).
  """
  s, e = config.sample, config.eval
  data_dir = records.data_dir(config, workdir)
  metadata = records.load_metadata(data_dir)
  if records.SPLIT_TEST not in metadata.get('splits', {}):
    raise errors.ConfigError(
        'eval.truth_scenes', f'{e.truth_scenes} test scenes asked of {data_dir}, which has no '
        f'{records.SPLIT_TEST!r} split', 'prepare the procedural data with '
        '--config.data.num_eval_examples=N, or set --config.eval.truth_scenes=0')
  test = records.read_test_views(data_dir, e.truth_scenes,
                                 cache_dir=str(config.data.get('cache_dir') or ''))
  rgbd, views = test['rgbd'], test['views']
  depth = np.asarray(depth_lib.depth_from_zbuf(rgbd[:, 1:, ..., 3], float(metadata['near']),
                                               float(metadata['far'])))
  covisible = []
  for seed, scene_views, scene_depth in zip(test['scene_seed'], views, depth):
    scene = procedural.sample_scene(int(seed))
    covisible.append(np.stack([
        procedural.covisibility(scene, v, d, scene_views[0], fov_deg=s.fov_deg,
                                rtol=_STORED_DEPTH_RTOL)
        for v, d in zip(scene_views[1:], scene_depth)]))
  return truth_lib.TrueViews(first=rgbd[:, 0], views=views, rgb=rgbd[:, 1:, ..., :3],
                             depth=depth, covisible=np.stack(covisible))


def _truth(config: Any, workdir: str, truth: truth_lib.TrueViews,
           sampler: sampler_lib.ViewSampler) -> tuple[dict, np.ndarray]:
  """(figures, generated view sets) of novel views generated from the true view 0."""
  s = config.sample
  if truth.first.shape[1] != sampler.resolution:
    raise errors.ConfigError(
        'eval.truth_scenes', f'the test scenes are {truth.first.shape[1]} px but the networks '
        f'generate {sampler.resolution} px', "evaluate on data at the networks' resolution, or "
        'set --config.eval.truth_scenes=0')
  result, _ = generate.generate_views(sampler, truth.views, seed=s.seed + 1,
                                      instance_ids=np.arange(len(truth)),
                                      batch_size=s.batch_size, first_rgbd=truth.first,
                                      buffer_size=s.buffer_size)
  metadata = records.load_metadata(records.data_dir(config, workdir))
  figures = truth_lib.novel_view_error(truth, result.rgbd, near=float(metadata['near']),
                                       far=float(metadata['far']))
  figures.update(viewset=f'{records.SPLIT_TEST} split', views_per_scene=int(truth.views.shape[1]))
  return figures, result.rgbd


# ------------------------------------------------------------------------------------------------
# The mode.
# ------------------------------------------------------------------------------------------------


def _real_size(config: Any, workdir: str) -> Optional[tuple[int, int]]:
  """(height, width) of the real images: eval.reference's, or the prepared data's resolution."""
  if config.eval.reference:
    return images_lib.image_size(config.eval.reference, 'reference')
  resolution = records.load_metadata(records.data_dir(config, workdir)).get('resolution')
  return (int(resolution), int(resolution)) if resolution else None


def _default_name(config: Any) -> str:
  e = config.eval
  if e.generated:
    return os.path.splitext(paths.basename(e.generated))[0]
  s = config.sample
  return f'{s.viewset}_w{s.guidance:g}_n{e.num_images}_seed{s.seed}'


@lock_lib.locks_workdir  # one writer per workdir
def evaluate(config: Any, workdir: str) -> dict:
  """Mode 'eval' (see the module docstring). Returns the report written to DIR/eval/<name>.json."""
  e = config.eval
  t_start = time.perf_counter()
  weights_path = e.inception_weights or inception.default_weights_path()
  params, has_logits = inception.load_params(paths.stage(weights_path))  # gs://: a local copy
  _validate(config, has_logits)
  truth: Optional[truth_lib.TrueViews] = None
  if (e.truth_scenes > 0 and (not e.generated or config.sample.cond) and
      _is_procedural(config, workdir)):
    truth = _read_truth(config, workdir)
  extractor = fid.FeatureExtractor(params, with_logits=has_logits, batch_size=e.batch_size,
                                   mesh=parallel.make_mesh(config.mesh), precision=e.precision)
  sampler: Optional[sampler_lib.ViewSampler] = None
  info = {}
  real_size = _real_size(config, workdir)
  size_field = 'eval.generated' if e.generated else 'sample.cond'
  if not e.generated or truth is not None:
    sampler, info = sample_pipeline.build_sampler(config.sample, config.mesh,
                                                  need_uncond=not e.generated)
    if not e.generated:  # refused before anything is generated
      images_lib.check_size((sampler.resolution,) * 2, real_size, resize=e.resize_generated,
                            field=size_field)

  # Generated images.
  if e.generated:
    gen = images_lib.read_images(e.generated, field='generated', views=e.views,
                                 limit=e.num_images)
  else:
    gen = _generate(config, sampler, info)
  images_lib.check_size(gen.images.shape[1:3], real_size, resize=e.resize_generated,
                        field=size_field)
  gen.images = images_lib.resize_images(gen.images, real_size)
  if len(gen.images) < e.num_images:
    logging.warning('eval: only %d generated images (eval.num_images=%d)', len(gen.images),
                    e.num_images)

  # Reference statistics, then the generated features and the scores.
  ref, cached = _reference(config, workdir, extractor, weights_path)
  t0 = time.perf_counter()
  feats = extractor.replicated(gen.images)  # the same images on every process
  extract_s = time.perf_counter() - t0
  report = {
      'name': e.name or _default_name(config),
      **report_lib.scores(ref, feats, is_splits=e.is_splits, kid_subsets=e.kid_subsets,
                          kid_subset_size=e.kid_subset_size, seed=e.seed),
      'num_images': len(gen.images), 'num_reference': ref.num_images,
      'images': gen.source, 'views': e.views,
      'image_size': list(gen.images.shape[1:3]),
      'settings': {
          'inception_weights': paths.abspath(weights_path),
          'inception_precision': e.precision, 'is_splits': int(e.is_splits),
          'kid_subsets': int(e.kid_subsets),
          'kid_subset_size': int(min(e.kid_subset_size, len(gen.images),
                                     len(ref.features))),
          'reference': ref.meta, 'reference_cached': cached,
          'sampling': gen.settings,
      },
      'compare_paper': bool(e.compare_paper),
  }

  # 3D consistency of the generated view sets.
  report['consistency'] = None
  if e.consistency and gen.rgbd is not None and gen.views is not None and gen.rgbd.shape[1] > 1:
    s = config.sample
    k = e.consistency_sets or len(gen.rgbd)
    report['consistency'] = consistency.pairwise_consistency(
        gen.rgbd[:k], gen.views[:k], near=s.near, far=s.far, fov_deg=s.fov_deg, ssaa=s.ssaa,
        atol=s.atol, rtol=s.rtol, neighbours=s.consistency_neighbours or None)

  # Procedural truth.
  truth_generated = None
  if truth is not None:
    report['truth'], truth_generated = _truth(config, workdir, truth, sampler)

  report['tsed'] = None  # beside the pairwise figures (pipelines/tsed_report.py)
  if e.consistency and gen.rgbd is not None and gen.views is not None:
    report['tsed'] = tsed_report.eval_tsed(config.sample, gen.rgbd, gen.views, e.consistency_sets,
                                           truth, truth_generated)

  report['timings'] = {'generate_s': gen.seconds, 'extract_s': extract_s,
                       'images_per_s': len(gen.images) / max(extract_s, 1e-9),
                       'total_s': time.perf_counter() - t_start}
  out_dir = paths.join(workdir, 'eval')  # local or gs://
  report['json'] = paths.join(out_dir, f"{report['name']}.json")
  if jax.process_index() == 0:
    if e.report_png:
      report['png'] = report_lib.write_report_png(
          paths.join(out_dir, f"{report['name']}.png"), report, gen,
          truth_first=None if truth is None else truth.first, truth_generated=truth_generated)
    report['page'] = page_lib.write_report_page(paths.join(out_dir, f"{report['name']}.html"),
                                                report)
    report_lib.write_json(report['json'], report)
  logging.info('eval %s: FID %.3f, IS %s, KID %.5f', report['name'], report['fid'],
               report['inception_score'], report['kid'])
  return report
