"""ViT backbones of the DPT depth models: BEiT (MiDaS v3.1) and DINOv2 (Depth Anything V2).

Both follow `transformers` exactly (BeitBackbone and Dinov2Backbone as DPTForDepthEstimation and
DepthAnythingForDepthEstimation call them): pre-norm blocks with layer scale, exact (erf) GELU,
softmax attention; BEiT adds a relative position bias per layer (bilinearly resized to the
input's patch grid, the MiDaS v3.1 rule), DINOv2 an absolute position embedding (bicubically
resized). One module covers both because they differ only in those switches.

Also home of `torch_interpolate`, the resize with PyTorch's `F.interpolate` sampling rules that
the backbones and the DPT neck need to reproduce the reference bit for bit (jax.image.resize
antialiases on downsampling and uses a different cubic kernel).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# PyTorch's bicubic kernel parameter (Keys cubic with a = -0.75).
_TORCH_CUBIC_A = -0.75


@functools.lru_cache(maxsize=256)
def _interp_taps(in_size: int, out_size: int, mode: str,
                 align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
  """torch's 1-D linear/cubic interpolation as (indices, weights), both [out, taps].

  Border indices are clamped as torch does; 2 taps (linear) or 4 (cubic) per output sample.
  """
  dst = np.arange(out_size, dtype=np.float64)
  if align_corners:
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    src = dst * scale
  else:
    src = (dst + 0.5) * (in_size / out_size) - 0.5
    if mode == 'linear':
      src = np.maximum(src, 0.0)  # torch clamps negative source indices for linear modes only
  base = np.floor(src).astype(np.int64)
  t = src - base
  if mode == 'linear':
    index = np.stack([base, base + 1], axis=1)
    weight = np.stack([1.0 - t, t], axis=1)
  elif mode == 'cubic':
    a = _TORCH_CUBIC_A

    def near(x):  # |x| <= 1
      return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
      return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    index = np.stack([base - 1, base, base + 1, base + 2], axis=1)
    weight = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
  else:
    raise ValueError(f'unknown interpolation mode {mode!r}')
  return np.clip(index, 0, in_size - 1).astype(np.int32), weight.astype(np.float32)


def _interp_axis(x: jax.Array, axis: int, out_size: int, kind: str,
                 align_corners: bool) -> jax.Array:
  index, weight = _interp_taps(x.shape[axis], out_size, kind, align_corners)
  shape = [1] * x.ndim
  shape[axis] = out_size
  out = None
  for tap in range(index.shape[1]):  # a few gathers: O(taps) work, not a dense [out, in] matmul
    term = jnp.take(x, index[:, tap], axis=axis) * weight[:, tap].reshape(shape).astype(x.dtype)
    out = term if out is None else out + term
  return out


def torch_interpolate(x: jax.Array, size: tuple[int, int], *, mode: str,
                      align_corners: bool) -> jax.Array:
  """`torch.nn.functional.interpolate` on NHWC arrays ('bilinear' or 'bicubic', no antialias).

  Args:
    x: [B, H, W, C].
    size: output (height, width).
    mode: 'bilinear' or 'bicubic'.
    align_corners: as in torch.

  Returns:
    [B, size[0], size[1], C] in x's dtype.
  """
  kind = {'bilinear': 'linear', 'bicubic': 'cubic'}[mode]
  if x.shape[1] != size[0]:  # both kernels are the identity at equal size
    x = _interp_axis(x, 1, size[0], kind, align_corners)
  if x.shape[2] != size[1]:
    x = _interp_axis(x, 2, size[1], kind, align_corners)
  return x


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """A BEiT or DINOv2 backbone, in the terms of transformers' BeitConfig / Dinov2Config."""
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  patch_size: int = 16
  image_size: int = 384  # pretraining size: sets the position-embedding / bias-table grid
  layer_norm_eps: float = 1e-12
  key_bias: bool = False  # BEiT has no key bias; DINOv2 has (qkv_bias)
  query_value_bias: bool = True
  relative_position_bias: bool = True  # BEiT, one table per layer
  shared_relative_position_bias: bool = False  # BEiT, one table for all layers
  absolute_position_embeddings: bool = False  # DINOv2 (and some BEiTs)
  layer_scale: bool = True
  swiglu: bool = False  # DINOv2 giant
  apply_layernorm: bool = False  # DINOv2 backbones normalise the features they return
  out_indices: tuple[int, ...] = (3, 6, 9, 12)  # 1-based layers whose output is returned

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'ViTConfig':
    d = dict(d)
    d['out_indices'] = tuple(d['out_indices'])
    return cls(**d)


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
  # Two-pass variance like torch; the fast E[x^2] - E[x]^2 form loses digits on large means.
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


def relative_position_index(window: tuple[int, int]) -> np.ndarray:
  """BEiT's [N+1, N+1] index into the bias table for an h x w patch grid (cls token first)."""
  h, w = window
  num_relative = (2 * h - 1) * (2 * w - 1) + 3
  coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing='ij')).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)  # [N, N, 2]
  rel[:, :, 0] += h - 1
  rel[:, :, 1] += w - 1
  rel[:, :, 0] *= 2 * w - 1
  index = np.zeros((h * w + 1,) * 2, np.int64)
  index[1:, 1:] = rel.sum(-1)
  index[0, 0:] = num_relative - 3  # cls -> token
  index[0:, 0] = num_relative - 2  # token -> cls
  index[0, 0] = num_relative - 1  # cls -> cls
  return index


class RelativePositionBias(nn.Module):
  """BEiT relative position bias, resized to the input's patch grid -> [heads, N+1, N+1]."""
  config: ViTConfig

  @nn.compact
  def __call__(self, window: tuple[int, int]) -> jax.Array:
    cfg = self.config
    pre = cfg.image_size // cfg.patch_size
    old_h = old_w = 2 * pre - 1
    table = self.param('relative_position_bias_table', nn.initializers.zeros,
                       (old_h * old_w + 3, cfg.num_heads), jnp.float32)
    new_h, new_w = 2 * window[0] - 1, 2 * window[1] - 1
    # transformers reshapes the table as (old_width, old_height) before resizing it to
    # (new_height, new_width); with the square pretraining grid the order is immaterial.
    grid = table[:old_h * old_w].reshape(1, old_w, old_h, cfg.num_heads)
    grid = torch_interpolate(grid, (new_h, new_w), mode='bilinear', align_corners=False)
    table = jnp.concatenate([grid.reshape(new_h * new_w, cfg.num_heads), table[old_h * old_w:]])
    index = relative_position_index(window)
    n = index.shape[0]
    bias = table[index.reshape(-1)].reshape(n, n, cfg.num_heads)
    return bias.transpose(2, 0, 1)


class Attention(nn.Module):
  """Multi-head self-attention with an optional additive bias [heads, N, N]."""
  config: ViTConfig

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array | None) -> jax.Array:
    cfg = self.config
    head_dim = cfg.hidden_size // cfg.num_heads
    b, n, _ = x.shape

    def proj(name, use_bias):
      y = nn.Dense(cfg.hidden_size, use_bias=use_bias, name=name)(x)
      return y.reshape(b, n, cfg.num_heads, head_dim)

    q = proj('q_proj', cfg.query_value_bias)
    k = proj('k_proj', cfg.key_bias)
    v = proj('v_proj', cfg.query_value_bias)
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) * head_dim**-0.5
    if bias is not None:
      logits = logits + bias[None].astype(logits.dtype)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum('bhqk,bkhd->bqhd', probs, v).reshape(b, n, cfg.hidden_size)
    return nn.Dense(cfg.hidden_size, name='o_proj')(out)


class Mlp(nn.Module):
  """fc1 - GELU(erf) - fc2, or DINOv2's SwiGLU variant."""
  config: ViTConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    if cfg.swiglu:
      hidden = (int(cfg.mlp_dim * 2 / 3) + 7) // 8 * 8
      gate = nn.Dense(hidden, name='gate_proj')(x)
      up = nn.Dense(hidden, name='up_proj')(x)
      return nn.Dense(cfg.hidden_size, name='down_proj')(jax.nn.silu(gate) * up)
    x = jax.nn.gelu(nn.Dense(cfg.mlp_dim, name='fc1')(x), approximate=False)
    return nn.Dense(cfg.hidden_size, name='fc2')(x)


class Block(nn.Module):
  """Pre-norm transformer block with layer scale (BEiT lambda_1/2, DINOv2 layer_scale1/2)."""
  config: ViTConfig

  @nn.compact
  def __call__(self, x: jax.Array, window: tuple[int, int],
               shared_bias: jax.Array | None) -> jax.Array:
    cfg = self.config
    bias = shared_bias
    if cfg.relative_position_bias:
      own = RelativePositionBias(cfg, name='relative_position_bias')(window)
      bias = own if bias is None else own + bias
    ones = nn.initializers.ones
    h = Attention(cfg, name='attention')(_layer_norm(cfg.layer_norm_eps, 'norm1')(x), bias)
    if cfg.layer_scale:
      h = h * self.param('lambda_1', ones, (cfg.hidden_size,), jnp.float32)
    x = x + h
    h = Mlp(cfg, name='mlp')(_layer_norm(cfg.layer_norm_eps, 'norm2')(x))
    if cfg.layer_scale:
      h = h * self.param('lambda_2', ones, (cfg.hidden_size,), jnp.float32)
    return x + h


class ViTBackbone(nn.Module):
  """Patch embedding + transformer; returns the token features of `out_indices`.

  __call__(pixels [B, H, W, 3]) -> list of [B, 1 + (H/p)(W/p), C] (cls token first).
  """
  config: ViTConfig

  @nn.compact
  def __call__(self, pixels: jax.Array) -> list[jax.Array]:
    cfg = self.config
    b, height, width, _ = pixels.shape
    p = cfg.patch_size
    window = (height // p, width // p)
    x = nn.Conv(cfg.hidden_size, (p, p), strides=(p, p), padding='VALID',
                name='patch_embeddings')(pixels)  # [B, h, w, C]
    x = x.reshape(b, window[0] * window[1], cfg.hidden_size)
    cls = self.param('cls_token', nn.initializers.zeros, (1, 1, cfg.hidden_size), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, cfg.hidden_size)).astype(x.dtype), x], 1)
    if cfg.absolute_position_embeddings:
      x = x + self._position_embeddings(x.shape[1] - 1, height, width).astype(x.dtype)
    shared = None
    if cfg.shared_relative_position_bias:
      shared = RelativePositionBias(cfg, name='shared_relative_position_bias')(window)
    outputs = {}
    for i in range(max(cfg.out_indices)):  # later layers would not reach any output
      x = Block(cfg, name=f'layers_{i}')(x, window, shared)
      outputs[i + 1] = x
    features = [outputs[i] for i in cfg.out_indices]
    if cfg.apply_layernorm:
      norm = _layer_norm(cfg.layer_norm_eps, 'layernorm')
      features = [norm(f) for f in features]
    return features

  def _position_embeddings(self, num_patches: int, height: int, width: int) -> jax.Array:
    cfg = self.config
    grid = cfg.image_size // cfg.patch_size
    table = self.param('position_embeddings', nn.initializers.normal(0.02),
                       (1, grid * grid + 1, cfg.hidden_size), jnp.float32)
    # Same rule as transformers: keep the table when the token count matches on a square input,
    # otherwise resize the grid bicubically (align_corners=False) to the input's patch grid.
    if num_patches == grid * grid and height == width:
      return table
    patch = table[:, 1:].reshape(1, grid, grid, cfg.hidden_size)
    new = (height // cfg.patch_size, width // cfg.patch_size)
    patch = torch_interpolate(patch, new, mode='bicubic', align_corners=False)
    return jnp.concatenate([table[:, :1], patch.reshape(1, -1, cfg.hidden_size)], axis=1)
