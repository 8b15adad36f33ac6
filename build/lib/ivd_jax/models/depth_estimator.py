"""Monocular disparity for `prepare`: a batched, mesh-sharded, jitted DPT depth estimator.

Hook (docs/method.md §3, the contract's `config.data.estimator`):

  config.data.estimator = 'ivd_jax.models.depth_estimator:estimator'
  config.data.estimator_kwargs = {'weights': '/path/dpt_beit_large_512.npz'}

`estimator(**kwargs)` returns fn(images uint8 [B, H, W, 3]) -> np.float32 [B, H, W] raw disparity
on the scale of the reference's MiDaS files, which prepare turns into zbuf with
`geometry.depth.zbuf_from_midas`. Weights files come from `python -m ivd_jax.tools.convert_depth`.

Inside one jitted function per (batch, height, width), with the batch sharded over the mesh:
  1. the model's own image processor (transformers' DPTImageProcessor): resize with
     keep-aspect-ratio "as little as possible" to multiples of 32 (BEiT) / 14 (DINOv2),
     bicubic with antialiasing, uint8 rounding, rescale, mean/std normalisation;
  2. the network (models/dpt.py);
  3. resize back to the image, bicubic (align_corners=False), as MiDaS' run.py and
     transformers' post_process_depth_estimation do;
  4. the scale (see `normalization` below).

The disparity scale. DPT models predict affine-invariant inverse depth: their training loss
aligns scale and shift per image, so the absolute scale of the raw output is an arbitrary,
per-checkpoint convention (MiDaS v3.1 BEiT models output thousands, Depth Anything single digits
to tens). The reference fixed its depth scale through MiDaS `dpt_beit_large_512`'s raw output
(docs/method.md §3 divides it by 6250: raw 6250 is depth 1, the orbit centre of §2).
  - 'none': the raw output. For the converted `dpt_beit_large_512` this IS the reference's scale:
    the same network and normalisation, and the same network input size (MiDaS' "minimal"
    keep-aspect resize to multiples of 32); only the resize kernel differs (cv2 bicubic in MiDaS'
    run.py, antialiased Pillow bicubic in transformers), and not at all when the image is already
    512 px (prepare's default estimator_resolution). Default for BEiT checkpoints.
  - 'median' (default for every other checkpoint, e.g. Depth Anything V2): a per-image scale, no
    shift (zero disparity stays at infinity: sky stays on the far plane), that puts the median of
    the image's positive disparities at `target_median`, default 6250, i.e. the median pixel at
    depth 1, the orbit centre the reference's cameras turn around. The reference's own per-image
    scale cannot be recovered without running its model, and a global factor needs calibration
    data; anchoring the median is the one choice that depends on neither, and zbuf_from_midas then
    treats the result exactly as it treats the reference's files (including pulling the nearest
    point to `near` when the image's disparity range exceeds 2x its median).
  - 'scale': a fixed factor `scale` calibrated against the reference: `fit_scale` on images that
    have both (the reference's MiDaS files, or this module's BEiT estimator with 'none').
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import jax.numpy as jnp
import numpy as np

from ivd_jax import errors
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.models import dpt

# transformers' IMAGENET_STANDARD_* (MiDaS BEiT) and IMAGENET_DEFAULT_* (Depth Anything).
HALF = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# docs/method.md §3: the reference divides raw MiDaS disparity by this, so this raw value is depth
# 1.
REFERENCE_DISPARITY_AT_DEPTH_1 = float(depth_lib.MIDAS_SCALE)
NORMALIZATIONS = ('auto', 'none', 'median', 'scale')
_CONFIG_KEY = '__config__'


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """transformers' DPTImageProcessor settings (the fields that matter for inference)."""
  size: tuple[int, int] = (512, 512)  # (height, width) target before aspect/multiple rules
  keep_aspect_ratio: bool = True
  ensure_multiple_of: int = 32
  mean: tuple[float, float, float] = HALF
  std: tuple[float, float, float] = HALF

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'Preprocessing':
    return cls(size=tuple(d['size']), keep_aspect_ratio=bool(d['keep_aspect_ratio']),
               ensure_multiple_of=int(d['ensure_multiple_of']), mean=tuple(d['mean']),
               std=tuple(d['std']))


def default_preprocessing(config: dpt.DPTConfig) -> Preprocessing:
  """The published processors: MiDaS BEiT-512 (0.5 mean/std, x32), Depth Anything (518, x14)."""
  if config.backbone.absolute_position_embeddings and config.backbone.patch_size == 14:
    return Preprocessing(size=(518, 518), ensure_multiple_of=14, mean=IMAGENET_MEAN,
                         std=IMAGENET_STD)
  s = config.backbone.image_size
  return Preprocessing(size=(s, s), ensure_multiple_of=32, mean=HALF, std=HALF)


def network_input_size(height: int, width: int, pre: Preprocessing) -> tuple[int, int]:
  """DPTImageProcessor's output size: scale as little as possible, then snap to the multiple."""

  def snap(val: float) -> int:
    m = pre.ensure_multiple_of
    x = round(val / m) * m
    return x if x >= m else math.ceil(val / m) * m  # never 0 (min_val = 0 in transformers)

  scale_h, scale_w = pre.size[0] / height, pre.size[1] / width
  if pre.keep_aspect_ratio:
    if abs(1 - scale_w) < abs(1 - scale_h):
      scale_h = scale_w
    else:
      scale_w = scale_h
  return snap(scale_h * height), snap(scale_w * width)


def preprocess(images: jax.Array, pre: Preprocessing) -> jax.Array:
  """The image processor on device: uint8 [B, H, W, 3] -> normalised float32 [B, h, w, 3].

  transformers resizes the uint8 image (Pillow, or torchvision's Pillow-compatible path: bicubic,
  antialiased, i.e. the Keys a = -0.5 kernel widened by the downscale factor, which is what
  jax.image.resize does) and rounds back to uint8 before rescaling and normalising.
  """
  b, height, width, _ = images.shape
  nh, nw = network_input_size(height, width, pre)
  x = images.astype(jnp.float32)
  # Two separable passes, width first, each rounded back to uint8: how Pillow resamples.
  if nw != width:
    x = jnp.clip(jnp.round(jax.image.resize(x, (b, height, nw, 3), 'bicubic')), 0, 255)
  if nh != height:
    x = jnp.clip(jnp.round(jax.image.resize(x, (b, nh, nw, 3), 'bicubic')), 0, 255)
  mean = np.asarray(pre.mean, np.float32)
  std = np.asarray(pre.std, np.float32)
  return (x / 255.0 - mean) / std


# ---------------------------------------------------------------------------------------------
# Weights files: one .npz with the flattened params and the JSON config.


def save_depth_model(path: str, config: dpt.DPTConfig, params: Any,
                     preprocessing: Preprocessing | None = None) -> None:
  """Writes params (float32) + model and preprocessing config to one .npz file."""
  preprocessing = preprocessing or default_preprocessing(config)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  arrays = {k: np.asarray(v, np.float32) for k, v in flat.items()}
  meta = {'model': config.to_dict(), 'preprocessing': preprocessing.to_dict()}
  arrays[_CONFIG_KEY] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'wb') as f:  # a file object keeps np.savez from appending '.npz'
    np.savez(f, **arrays)


def load_depth_model(path: str) -> tuple[dpt.DPTConfig, dict[str, Any], Preprocessing]:
  """Reads a file written by save_depth_model -> (config, params, preprocessing)."""
  if not os.path.isfile(path):
    raise errors.UserError(
        f'depth weights file {path!r} not found. Fix: convert a checkpoint with '
        '`python -m ivd_jax.tools.convert_depth --checkpoint DIR --output FILE.npz` and pass '
        'FILE.npz as estimator_kwargs.weights')
  with np.load(path) as data:
    if _CONFIG_KEY not in data:
      raise errors.UserError(f'{path!r} is not an ivd_jax depth weights file (no config). Fix: '
                             'write it with ivd_jax.tools.convert_depth')
    meta = json.loads(bytes(data[_CONFIG_KEY]).decode())
    flat = {k: np.asarray(data[k]) for k in data.files if k != _CONFIG_KEY}
  params = flax.traverse_util.unflatten_dict(flat, sep='/')
  return (dpt.DPTConfig.from_dict(meta['model']), params,
          Preprocessing.from_dict(meta['preprocessing']))


# ---------------------------------------------------------------------------------------------
# Scale.


def fit_scale(disparity: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
  """Global factor s with s * disparity ~ reference (median of per-image median ratios).

  For 'scale' normalisation: pass this estimator's raw output (normalization='none') and the
  reference disparity (the reference's MiDaS files, or the BEiT estimator) for the same images.
  """
  ratios = []
  for d, r in zip(disparity, reference):
    d, r = np.asarray(d, np.float64), np.asarray(r, np.float64)
    valid = (d > 0) & (r > 0)
    if valid.any():
      ratios.append(np.median(r[valid]) / np.median(d[valid]))
  if not ratios:
    raise errors.UserError('fit_scale: no image has positive disparity in both inputs. Fix: '
                           'pass raw (normalization="none") disparity maps of the same images')
  return float(np.median(ratios))


def _apply_normalization(d: jax.Array, mode: str, target_median: float,
                         scale: float) -> jax.Array:
  if mode == 'median':
    # Median over pixels with positive disparity: the ReLU output is exactly 0 where the model
    # sees infinity (sky), and a sky-dominated image must not get a zero median.
    flat = d.reshape(d.shape[0], -1)
    med = jnp.nanmedian(jnp.where(flat > 0, flat, jnp.nan), axis=1)
    factor = jnp.where(jnp.isfinite(med) & (med > 0), target_median / med, 1.0)
    return d * factor[:, None, None]
  if mode == 'scale':
    return d * scale
  return d


# ---------------------------------------------------------------------------------------------
# The estimator.


class DepthEstimator:
  """Callable: images uint8 [B, H, W, 3] -> np.float32 [B, H, W] disparity (MiDaS scale).

  Args:
    weights: a .npz written by tools/convert_depth.py.
    batch_size: images per device step (rounded up to a multiple of the device count); the last
      chunk is padded, so one compilation serves a whole folder of equal-size images.
    normalization: 'auto' | 'none' | 'median' | 'scale' (module docstring).
    target_median: median disparity for 'median'.
    scale: factor for 'scale'.
    dtype: 'float32' or 'bfloat16' compute (bfloat16 for accelerators; softmax stays float32).
    mesh: a jax Mesh; the batch is split over all its axes. Default: this process's devices
      (each process annotates its own files).
  """

  def __init__(self, weights: str, *, batch_size: int = 8, normalization: str = 'auto',
               target_median: float = REFERENCE_DISPARITY_AT_DEPTH_1, scale: float = 1.0,
               dtype: str = 'float32', mesh: jax.sharding.Mesh | None = None):
    if normalization not in NORMALIZATIONS:
      raise errors.FieldError('normalization',
                              f'unknown value {normalization!r}', f'use one of {NORMALIZATIONS}')
    if dtype not in ('float32', 'bfloat16'):
      raise errors.FieldError('dtype', f'unknown dtype {dtype!r}',
                              "use 'float32' or 'bfloat16'")
    if not target_median > 0 or not scale > 0:
      raise errors.FieldError('target_median, scale', 'must be > 0',
                              'pass positive numbers')
    self.weights = weights
    self.config, params, self.preprocessing = load_depth_model(weights)
    if normalization == 'auto':
      # The converted MiDaS BEiT is the reference's own model: its raw output is the scale.
      beit = self.config.backbone.relative_position_bias
      normalization = 'none' if beit else 'median'
    self.normalization = normalization
    if mesh is None:  # this process's devices on one axis (each host annotates its own files)
      devices = jax.local_devices()
      mesh = jax.make_mesh((len(devices),), ('batch',), axis_types=(jax.sharding.AxisType.Auto,),
                           devices=devices)
    self.mesh = mesh
    # The batch is split over every axis of the mesh, whatever the caller named them.
    n = mesh.devices.size
    self.batch_size = -(-max(1, int(batch_size)) // n) * n
    self._batch_sharding = NamedSharding(mesh, P(tuple(mesh.axis_names)))
    compute = jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32
    params = jax.tree.map(lambda x: jnp.asarray(x, compute), params)
    self._params = jax.device_put(params, NamedSharding(mesh, P()))
    self._model = dpt.DPT(self.config)
    self._compute = compute
    self._target_median = float(target_median)
    self._scale = float(scale)
    self._fns: dict[tuple[int, int], Callable[..., jax.Array]] = {}

  def _fn(self, height: int, width: int) -> Callable[..., jax.Array]:
    if (height, width) not in self._fns:
      def forward(params, images):  # [B, H, W, 3] uint8 -> [B, H, W] float32
        x = preprocess(images, self.preprocessing).astype(self._compute)
        d = self._model.apply({'params': params}, x).astype(jnp.float32)
        d = dpt.torch_interpolate(d[..., None], (height, width), mode='bicubic',
                                  align_corners=False)[..., 0]
        return _apply_normalization(d, self.normalization, self._target_median, self._scale)

      self._fns[(height, width)] = jax.jit(
          forward, in_shardings=(NamedSharding(self.mesh, P()), self._batch_sharding),
          out_shardings=self._batch_sharding)
    return self._fns[(height, width)]

  def __call__(self, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
      raise errors.UserError(f'depth estimator expects uint8 images [B, H, W, 3], got '
                             f'{images.dtype} {images.shape}. Fix: pass RGB uint8 batches')
    b, h, w, _ = images.shape
    fn = self._fn(h, w)
    pending = []
    for start in range(0, b, self.batch_size):
      chunk = images[start:start + self.batch_size]
      k = chunk.shape[0]
      if k < self.batch_size:  # pad with copies so every chunk reuses one compilation
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - k, 0)])
      # Dispatch every chunk before reading any back: transfers overlap the computation.
      pending.append((start, k, fn(self._params, jax.device_put(chunk, self._batch_sharding))))
    out = np.empty((b, h, w), np.float32)
    for start, k, result in pending:
      out[start:start + k] = np.asarray(result)[:k]
    return out


def estimator(**kwargs: Any) -> DepthEstimator:
  """The contract's factory: `estimator(weights=..., **options)` -> callable (DepthEstimator)."""
  if 'weights' not in kwargs or not kwargs['weights']:
    raise errors.FieldError('weights', 'no depth weights file given',
                            'set it to a .npz written by `python -m ivd_jax.tools.convert_depth`')
  return DepthEstimator(**kwargs)
