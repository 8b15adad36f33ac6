"""The ADM UNet (docs/method.md §6) in flax.linen, numerically the reference's `AdmUnet2d`.

Layout is NHWC. Sub-modules are named after the reference's module paths with dots replaced by
underscores (`input_blocks_3_1` is the reference's `input_blocks.3.1`), and the layers inside a
block have fixed names (`in_norm`, `in_conv`, `emb_proj`, `out_norm`, `out_conv`, `skip`; `norm`,
`qkv`, `proj_out`), so converting a reference checkpoint is a name map
(ivd_jax/tools/convert_reference.py).

Numerics follow the reference: GroupNorm statistics, the time embedding, softmax and the output
head run in float32 whatever the compute dtype; parameters are always float32.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ivd_jax.errors import FieldError, UserError

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
# What each block keeps for the backward pass (`remat`): everything; only convolution and matmul
# outputs (the norms, activations and softmax are recomputed); nothing (the whole block runs
# again). The booleans of older configs mean 'none' and 'full'.
_REMAT_POLICIES = {'none': None, 'dots': jax.checkpoint_policies.checkpoint_dots,
                   'full': jax.checkpoint_policies.nothing_saveable}
_REMAT_CANONICAL = {'none': False, 'full': True}
# Attention implementations (AttentionBlock).
_ATTENTION = ('xla', 'cudnn')
# The reference's GroupNorm and PyTorch's default epsilon.
_NORM_EPS = 1e-5


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
  """Sinusoidal embedding [cos, sin] of integer timesteps, float32 [B, dim].

  freqs = exp(-ln(10000) * i / half) for i < half, computed in float32 exactly as the reference's
  buffer is, so that large t (up to 999) give the same phases.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


def _batch_split(x: jax.Array) -> jax.Array:
  """Dim 0 is the logical axis 'batch' (mapped to mesh axes by parallel.activation_rules)."""
  return nn.with_logical_constraint(x, ('batch',) + (None,) * (x.ndim - 1))


class GroupNorm32(nn.Module):
  """GroupNorm in float32, returned in the compute dtype (the reference's GroupNorm32)."""
  num_groups: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.GroupNorm(num_groups=self.num_groups, epsilon=_NORM_EPS, dtype=jnp.float32,
                     param_dtype=jnp.float32, use_fast_variance=False, name='gn')(
                         _batch_split(x).astype(jnp.float32))
    return _batch_split(y.astype(x.dtype))


def _conv(features: int, kernel: int, dtype: Any, name: str, zero: bool = False) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), dtype=dtype,
                 param_dtype=jnp.float32, name=name,
                 kernel_init=nn.initializers.zeros if zero else nn.linear.default_kernel_init)


def _avg_pool2(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _nearest_up2(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


class ResBlock(nn.Module):
  """FiLM residual block; `updown` 'down'/'up' resamples inside the block (resblock_updown)."""
  out_channels: int
  num_groups: int = 32
  dropout: float = 0.0
  updown: Optional[str] = None  # None | 'up' | 'down'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
    # x: [B, H, W, C] compute dtype; emb: [B, E] float32.
    x = _batch_split(x)
    h = nn.silu(GroupNorm32(self.num_groups, name='in_norm')(x))
    if self.updown == 'down':
      h, x = _avg_pool2(h), _avg_pool2(x)
    elif self.updown == 'up':
      h, x = _nearest_up2(h), _nearest_up2(x)
    h = _conv(self.out_channels, 3, self.dtype, 'in_conv')(h)
    emb_out = _batch_split(nn.Dense(2 * self.out_channels, dtype=jnp.float32,
                                    param_dtype=jnp.float32, name='emb_proj')(nn.silu(emb)))
    scale, shift = jnp.split(emb_out.astype(h.dtype)[:, None, None, :], 2, axis=-1)
    h = GroupNorm32(self.num_groups, name='out_norm')(h) * (1 + scale) + shift
    h = nn.silu(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = _conv(self.out_channels, 3, self.dtype, 'out_conv', zero=True)(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, self.dtype, 'skip')(x)
    return _batch_split(x + h)


class AttentionBlock(nn.Module):
  """Self-attention over all positions with the reference's legacy qkv channel order.

  The fused qkv projection's 3C outputs are ordered [head][q|k|v][channel]; q and k are each
  scaled by ch^-1/4 (ch = channels per head), the logits accumulate in float32 and the softmax
  runs in float32. `implementation` 'xla' writes the two products out for XLA to compile (on
  CPU 30-50 % faster than jax.nn.dot_product_attention's own 'xla' path at 1024 positions,
  benchmarks/README.md); 'cudnn' is jax.nn.dot_product_attention's fused flash attention
  (NVIDIA GPUs, bfloat16 compute).
  """
  num_heads: int
  num_groups: int = 32
  dtype: Any = jnp.float32
  implementation: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array, emb: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    del emb, train  # Same call signature as ResBlock.
    x = _batch_split(x)
    b, hgt, wid, c = x.shape
    heads = self.num_heads
    ch = c // heads
    h = GroupNorm32(self.num_groups, name='norm')(x).reshape(b, hgt * wid, c)
    qkv = nn.Dense(3 * c, dtype=self.dtype, param_dtype=jnp.float32, name='qkv')(h)
    qkv = qkv.reshape(b, hgt * wid, heads, 3, ch)  # [B, T, heads, (q,k,v), ch]
    scale = 1.0 / math.sqrt(math.sqrt(ch))
    q, k, v = qkv[..., 0, :] * scale, qkv[..., 1, :] * scale, qkv[..., 2, :]
    if self.implementation == 'cudnn':
      # Fused (flash) attention; its logits and softmax are float32 inside the kernel.
      a = jax.nn.dot_product_attention(q, k, v, scale=1.0, implementation='cudnn')
    else:
      logits = jnp.einsum('bthc,bshc->bhts', q, k, preferred_element_type=jnp.float32)
      weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
      a = jnp.einsum('bhts,bshc->bthc', weights, v)
    a = nn.Dense(c, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                 name='proj_out')(a.reshape(b, hgt * wid, c))
    return _batch_split(x + a.reshape(b, hgt, wid, c))


class UNet(nn.Module):
  """The ADM UNet of docs/method.md §6: epsilon prediction, NHWC, optional class conditioning.

  Attributes:
    image_size: Input resolution the model is built for; `attention_resolutions` are feature-map
      sizes relative to it.
    in_channels: Input channels (4 for G_u, 10 for G_c).
    out_channels: Output channels (4: RGB + depth epsilon).
    model_channels: Base width.
    channel_mult: Width multiplier per level.
    num_res_blocks: Residual blocks per level (the decoder has one more).
    attention_resolutions: Feature-map sizes at which attention blocks follow residual blocks.
    num_classes: Class-embedding rows; 0/None for an unconditional model. Label -1 is the null
      class and embeds as zeros.
    num_head_channels: Channels per attention head; -1 uses `num_heads` heads instead.
    num_heads: Number of heads when `num_head_channels` is -1.
    num_groups: GroupNorm groups.
    dropout: Dropout rate in residual blocks (active only with train=True, rng 'dropout').
    dtype: Compute dtype, 'float32' or 'bfloat16'. Parameters stay float32.
    remat: What each residual/attention block keeps for the backward pass: 'none' (everything),
      'dots' (convolution and matmul outputs; the rest is recomputed) or 'full' (nothing; the
      block runs again). False / True are 'none' / 'full' (the canonical values).
    attention: 'xla' (attention compiled by XLA) or 'cudnn' (jax.nn.dot_product_attention's
      fused kernel; NVIDIA GPUs with bfloat16 compute).
  """
  image_size: int
  in_channels: int = 4
  out_channels: int = 4
  model_channels: int = 128
  channel_mult: Sequence[int] = (1, 1, 2, 3, 4)
  num_res_blocks: int = 2
  attention_resolutions: Sequence[int] = (32, 16, 8)
  num_classes: Optional[int] = None
  num_head_channels: int = 64
  num_heads: int = 1
  num_groups: int = 32
  dropout: float = 0.0
  dtype: str = 'float32'
  remat: Any = False
  attention: str = 'xla'

  def _heads(self, ch: int) -> int:
    return self.num_heads if self.num_head_channels == -1 else ch // self.num_head_channels

  @property
  def remat_policy(self) -> str:
    """`remat` as one of 'none' | 'dots' | 'full'."""
    if isinstance(self.remat, bool):
      return 'full' if self.remat else 'none'
    return str(self.remat)

  def validate(self) -> None:
    """Raises FieldError (naming the UNet field) for a network the reference cannot represent."""
    if self.dtype not in _DTYPES:
      raise FieldError('dtype', f'unknown compute dtype {self.dtype!r}',
                       f'use one of {sorted(_DTYPES)}')
    if self.remat_policy not in _REMAT_POLICIES:
      raise FieldError('remat', f'unknown policy {self.remat!r}',
                       f'use one of {", ".join(_REMAT_POLICIES)}')
    if self.attention not in _ATTENTION:
      raise FieldError('attention', f'unknown implementation {self.attention!r}',
                       f'use one of {", ".join(_ATTENTION)}')
    if not self.channel_mult:
      raise FieldError('channel_mult', 'is empty', 'give one multiplier per level')
    if self.image_size % 2 ** (len(self.channel_mult) - 1):
      raise FieldError('image_size',
                       f'{self.image_size} is not divisible by 2^{len(self.channel_mult) - 1}',
                       'use a size divisible by 2 to the number of down-sampling levels')
    if not 0.0 <= self.dropout < 1.0:
      raise FieldError('dropout', f'{self.dropout} is not in [0, 1)', 'use e.g. 0.0')
    for mult in self.channel_mult:
      ch = self.model_channels * mult
      if ch % self.num_groups:
        raise FieldError('num_groups',
                         f'{ch} channels are not divisible into {self.num_groups} groups',
                         'choose model_channels * channel_mult divisible by num_groups')
      if self.num_head_channels == -1:
        if self.num_heads < 1 or ch % self.num_heads:
          raise FieldError('num_heads', f'{ch} channels do not split into '
                           f'{self.num_heads} heads', 'choose a divisor of the width')
      elif self.num_head_channels < 1 or ch % self.num_head_channels:
        raise FieldError('num_head_channels',
                         f'{ch} channels are not a multiple of {self.num_head_channels}',
                         'choose a divisor of every level width, or -1 to use num_heads')

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, y: Optional[jax.Array] = None, *,
               train: bool = False) -> jax.Array:
    """Predicts epsilon.

    Args:
      x: [B, H, W, in_channels] noisy input.
      t: [B] integer timesteps (the network index, 0..999).
      y: [B] integer labels (-1 = null class) or None (no class embedding, same as all -1).
      train: Enables dropout (needs the 'dropout' rng).

    Returns:
      [B, H, W, out_channels] float32.
    """
    self.validate()
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise UserError(f'UNet input has shape {x.shape}; expected [B, H, W, {self.in_channels}]. '
                      'Fix: pass NHWC images with model.in_channels channels.')
    factor = 2 ** (len(self.channel_mult) - 1)
    if x.shape[1] % factor or x.shape[2] % factor:
      raise UserError(f'UNet input size {x.shape[1:3]} is not divisible by {factor}. Fix: use '
                      f'a resolution divisible by {factor} (e.g. model.image_size).')
    if t.shape != x.shape[:1]:
      raise UserError(f'timesteps have shape {t.shape}; expected [{x.shape[0]}]. '
                      'Fix: pass one integer timestep per example.')
    if y is not None and not self.num_classes:
      raise UserError('class labels were given to an unconditional UNet. Fix: pass y=None or '
                      'build the model with num_classes > 0.')
    dtype = _DTYPES[self.dtype]
    mc = self.model_channels
    emb_dim = 4 * mc

    res_cls, attn_cls = ResBlock, AttentionBlock
    if self.remat_policy != 'none':
      policy = _REMAT_POLICIES[self.remat_policy]
      res_cls = nn.remat(ResBlock, static_argnums=(3,), policy=policy)
      attn_cls = nn.remat(AttentionBlock, static_argnums=(3,), policy=policy)

    def res(ch: int, name: str, updown: Optional[str] = None) -> nn.Module:
      return res_cls(ch, num_groups=self.num_groups, dropout=self.dropout, updown=updown,
                     dtype=dtype, name=name)

    def attn(ch: int, name: str) -> nn.Module:
      return attn_cls(self._heads(ch), num_groups=self.num_groups, dtype=dtype,
                      implementation=self.attention, name=name)

    # Time (and class) embedding, float32.
    emb = timestep_embedding(t, mc)
    emb = _batch_split(nn.Dense(emb_dim, param_dtype=jnp.float32, name='time_embed_fc1')(emb))
    emb = _batch_split(nn.Dense(emb_dim, param_dtype=jnp.float32,
                                name='time_embed_fc2')(nn.silu(emb)))
    if self.num_classes:
      table = nn.Embed(self.num_classes, emb_dim, param_dtype=jnp.float32, name='label_emb')
      if y is not None:
        y = y.astype(jnp.int32)
        emb = emb + jnp.where((y >= 0)[:, None], table(jnp.maximum(y, 0)), 0.0)
      elif self.is_initializing():
        table(jnp.zeros((1,), jnp.int32))  # Create the table even when init sees no labels.

    # Encoder.
    h = _conv(mc, 3, dtype, 'input_blocks_0_0')(x.astype(dtype))
    hs = [h]
    ch, size, idx = mc, self.image_size, 1
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        ch = mult * mc
        h = res(ch, f'input_blocks_{idx}_0')(h, emb, train)
        if size in self.attention_resolutions:
          h = attn(ch, f'input_blocks_{idx}_1')(h, emb, train)
        hs.append(h)
        idx += 1
      if level != len(self.channel_mult) - 1:
        h = res(ch, f'input_blocks_{idx}_0', 'down')(h, emb, train)
        hs.append(h)
        idx += 1
        size //= 2

    # Middle.
    h = res(ch, 'middle_block_0')(h, emb, train)
    h = attn(ch, 'middle_block_1')(h, emb, train)
    h = res(ch, 'middle_block_2')(h, emb, train)

    # Decoder.
    idx = 0
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        ch = mult * mc
        h = res(ch, f'output_blocks_{idx}_0')(h, emb, train)
        sub = 1
        if size in self.attention_resolutions:
          h = attn(ch, f'output_blocks_{idx}_1')(h, emb, train)
          sub = 2
        if level and i == self.num_res_blocks:
          h = res(ch, f'output_blocks_{idx}_{sub}', 'up')(h, emb, train)
          size *= 2
        idx += 1
    assert not hs, len(hs)

    # Output head, float32.
    h = nn.silu(GroupNorm32(self.num_groups, name='out_norm')(h.astype(jnp.float32)))
    return _conv(self.out_channels, 3, jnp.float32, 'out_conv', zero=True)(h)


_FIELDS = ('image_size', 'in_channels', 'out_channels', 'model_channels', 'channel_mult',
           'num_res_blocks', 'attention_resolutions', 'num_classes', 'num_head_channels',
           'num_heads', 'num_groups', 'dropout', 'dtype', 'remat', 'attention')


def unet_from_config(model_config: Any, *, in_channels: Optional[int] = None) -> UNet:
  """Builds a UNet from a ConfigDict (or mapping) with UNet's field names; validates it.

  Fields that are absent take UNet's defaults; `image_size` is required. `in_channels` is the
  network role's input layout (ivd_jax.roles) and overrides the config's field.
  """
  get = model_config.get if hasattr(model_config, 'get') else lambda k, d=None: getattr(
      model_config, k, d)
  if get('image_size') is None:
    raise FieldError('image_size', 'is missing', 'set the training/sampling resolution')
  kwargs = {}
  for field in _FIELDS:
    value = get(field, None)
    if value is None:
      continue
    if field in ('channel_mult', 'attention_resolutions'):
      value = tuple(int(v) for v in value)
    if field == 'num_classes' and not value:
      continue  # 0 and None both mean unconditional; keep one canonical UNet.
    if field == 'remat':
      value = _REMAT_CANONICAL.get(value, value)  # one canonical UNet per policy
    kwargs[field] = value
  if in_channels is not None:
    kwargs['in_channels'] = int(in_channels)
  model = UNet(**kwargs)
  model.validate()
  return model


def widen_input(params: Mapping[str, Any], in_channels: int) -> dict[str, Any]:
  """UNet parameters with a wider first conv: G_u -> G_c initial parameters (docs/method.md §6).

  The first conv gets `in_channels` inputs; the original inputs (x_t) keep their weights, the new
  ones (mask_rgb, y_rgb, y_depth, mask) start at zero, so G_c initially computes exactly G_u.
  """
  flat = traverse_util.flatten_dict(dict(params), sep='/')
  name = 'input_blocks_0_0/kernel'
  if name not in flat:
    raise UserError(f'params have no {name!r}. Fix: pass UNet params (the "params" collection).')
  kernel = flat[name]
  old = kernel.shape[2]
  if in_channels < old:
    raise UserError(f'cannot widen a {old}-channel input to {in_channels} channels. '
                    'Fix: pass in_channels >= the current input channels.')
  pad = [(0, 0), (0, 0), (0, in_channels - old), (0, 0)]
  flat = dict(flat)
  flat[name] = (jnp.pad(kernel, pad) if isinstance(kernel, jax.Array) else
                np.pad(np.asarray(kernel), pad))
  return traverse_util.unflatten_dict(flat, sep='/')
