"""DPT relative-depth models in Flax: MiDaS v3.1 DPT-BEiT and Depth Anything V2 (DINOv2).

Layer for layer the semantics of transformers' `DPTForDepthEstimation` (BEiT backbone, the
reference's `dpt_beit_large_512`) and `DepthAnythingForDepthEstimation`:

  backbone tokens of 4 layers
  -> reassemble: readout (BEiT: 'project' the cls token into every token; DINOv2: drop it),
     tokens -> [B, h, w, C] maps, 1x1 projection, resize by factors (4, 2, 1, 0.5)
     (transposed conv / identity / 3x3 stride-2 conv), 3x3 conv to the fusion width
  -> fusion: from the coarsest map, pre-activation residual units, x2 bilinear
     (align_corners=True) upsampling, 1x1 projection
  -> head: 3x3 conv, upsample to the input size, 3x3 conv, ReLU, 1x1 conv, ReLU.

Output: relative inverse depth (disparity) [B, H, W] at the network input resolution.
Tensors are NHWC; parameter names follow transformers' modules (see tools/convert_depth.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ivd_jax.models import vit

torch_interpolate = vit.torch_interpolate


@dataclasses.dataclass(frozen=True)
class DPTConfig:
  """The whole depth network: backbone, neck (reassemble + fusion) and head."""
  backbone: vit.ViTConfig = vit.ViTConfig()
  neck_hidden_sizes: tuple[int, ...] = (96, 192, 384, 768)
  reassemble_factors: tuple[float, ...] = (4, 2, 1, 0.5)
  readout: str = 'project'  # 'project' (DPT), 'add', or 'ignore' (Depth Anything)
  fusion_hidden_size: int = 256
  # DPT upsamples every fused map x2 and resizes the next feature to it; Depth Anything resizes
  # each fused map to the next feature's size (they differ only for odd patch grids).
  fusion_to_next_size: bool = False
  head_hidden_size: int = 32
  # DPT's head upsamples x2; Depth Anything's to the patch grid times the patch size.
  head_to_patch_grid: bool = False
  head_activation: str = 'relu'  # 'relu' (relative) or 'sigmoid' (metric Depth Anything)
  max_depth: float = 1.0

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'DPTConfig':
    d = dict(d)
    d['backbone'] = vit.ViTConfig.from_dict(d['backbone'])
    d['neck_hidden_sizes'] = tuple(d['neck_hidden_sizes'])
    d['reassemble_factors'] = tuple(d['reassemble_factors'])
    return cls(**d)


def _conv(features: int, kernel: int, name: str, *, stride: int = 1,
          use_bias: bool = True) -> nn.Conv:
  pad = kernel // 2  # torch's symmetric 'same' padding for odd kernels
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=use_bias, name=name)


class PatchUpsample(nn.Module):
  """ConvTranspose2d with kernel == stride (non-overlapping): [B,h,w,C] -> [B,fh,fw,out].

  kernel is [f, f, in, out] (torch weight [in, out, f, f] transposed).
  """
  features: int
  factor: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    f = self.factor
    b, h, w, c = x.shape
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (f, f, c, self.features),
                        jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    y = jnp.einsum('bhwc,ijco->bhiwjo', x, kernel.astype(x.dtype))
    return y.reshape(b, h * f, w * f, self.features) + bias.astype(x.dtype)


class ReassembleLayer(nn.Module):
  """1x1 projection then resize by `factor` (4, 2: transposed conv; 1: none; 0.5: stride 2)."""
  channels: int
  factor: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _conv(self.channels, 1, 'projection')(x)
    if self.factor > 1:
      return PatchUpsample(self.channels, int(self.factor), name='resize')(x)
    if self.factor < 1:
      return _conv(self.channels, 3, 'resize', stride=int(1 / self.factor))(x)
    return x


class PreActResidual(nn.Module):
  """ReLU - conv3x3 - ReLU - conv3x3, plus the input."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = _conv(self.features, 3, 'convolution1')(jax.nn.relu(x))
    h = _conv(self.features, 3, 'convolution2')(jax.nn.relu(h))
    return h + x


class FusionLayer(nn.Module):
  """Adds a refined skip feature, refines, upsamples (bilinear, align_corners) and projects."""
  features: int
  to_next_size: bool

  @nn.compact
  def __call__(self, x: jax.Array, skip: jax.Array | None,
               next_size: tuple[int, int] | None) -> jax.Array:
    if skip is not None:
      if skip.shape != x.shape:
        skip = torch_interpolate(skip, x.shape[1:3], mode='bilinear', align_corners=False)
      x = x + PreActResidual(self.features, name='residual_layer1')(skip)
    x = PreActResidual(self.features, name='residual_layer2')(x)
    if self.to_next_size and next_size is not None:
      size = next_size
    else:
      size = (2 * x.shape[1], 2 * x.shape[2])
    x = torch_interpolate(x, size, mode='bilinear', align_corners=True)
    return _conv(self.features, 1, 'projection')(x)


class DPT(nn.Module):
  """DPT depth network. __call__(pixels [B, H, W, 3] normalised) -> disparity [B, H', W'].

  H, W must be multiples of the patch size; the output is H x W (BEiT, patch 16 with factor 4
  maps) or (H//14*14) x (W//14*14) (Depth Anything).
  """
  config: DPTConfig

  @nn.compact
  def __call__(self, pixels: jax.Array) -> jax.Array:
    cfg = self.config
    p = cfg.backbone.patch_size
    b, height, width, _ = pixels.shape
    grid = (height // p, width // p)
    tokens = vit.ViTBackbone(cfg.backbone, name='backbone')(pixels)

    # Reassemble: tokens -> image-like maps at 4 resolutions.
    maps = []
    for i, (x, channels, factor) in enumerate(
        zip(tokens, cfg.neck_hidden_sizes, cfg.reassemble_factors)):
      cls, x = x[:, :1], x[:, 1:]  # [B, 1, C], [B, hw, C]
      c = x.shape[-1]
      if cfg.readout == 'project':
        x = jnp.concatenate([x, jnp.broadcast_to(cls, x.shape)], axis=-1)
        x = jax.nn.gelu(nn.Dense(c, name=f'readout_projects_{i}')(x), approximate=False)
      elif cfg.readout == 'add':
        x = x + cls
      x = x.reshape(b, grid[0], grid[1], c)
      x = ReassembleLayer(channels, factor, name=f'reassemble_{i}')(x)
      maps.append(_conv(cfg.fusion_hidden_size, 3, f'convs_{i}', use_bias=False)(x))

    # Fusion, coarsest first.
    maps = maps[::-1]
    fused = None
    for i, x in enumerate(maps):
      next_size = maps[i + 1].shape[1:3] if i + 1 < len(maps) else None
      layer = FusionLayer(cfg.fusion_hidden_size, cfg.fusion_to_next_size, name=f'fusion_{i}')
      fused = layer(x, None, next_size) if fused is None else layer(fused, x, next_size)

    # Head on the finest fused map.
    x = _conv(cfg.fusion_hidden_size // 2, 3, 'head_conv1')(fused)
    if cfg.head_to_patch_grid:
      size = (grid[0] * p, grid[1] * p)
    else:
      size = (2 * x.shape[1], 2 * x.shape[2])
    x = torch_interpolate(x, size, mode='bilinear', align_corners=True)
    x = jax.nn.relu(_conv(cfg.head_hidden_size, 3, 'head_conv2')(x))
    x = _conv(1, 1, 'head_conv3')(x)
    if cfg.head_activation == 'sigmoid':
      x = jax.nn.sigmoid(x)
    else:
      x = jax.nn.relu(x)
    return x[..., 0] * cfg.max_depth


def dpt_beit_large_512() -> DPTConfig:
  """MiDaS v3.1 `dpt_beit_large_512` (transformers: Intel/dpt-beit-large-512), the reference's."""
  return DPTConfig(
      backbone=vit.ViTConfig(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096,
                             patch_size=16, image_size=512, layer_norm_eps=1e-12,
                             out_indices=(6, 12, 18, 24)),
      neck_hidden_sizes=(256, 512, 1024, 1024), fusion_hidden_size=256)


def depth_anything_v2(size: str = 'base') -> DPTConfig:
  """Depth Anything V2 relative depth, 'small' | 'base' | 'large' (depth-anything/*-hf)."""
  table = {  # hidden, layers, heads, out_indices, neck sizes, fusion width
      'small': (384, 12, 6, (3, 6, 9, 12), (48, 96, 192, 384), 64),
      'base': (768, 12, 12, (3, 6, 9, 12), (96, 192, 384, 768), 128),
      'large': (1024, 24, 16, (5, 12, 18, 24), (256, 512, 1024, 1024), 256),
  }
  if size not in table:
    raise ValueError(f'unknown Depth Anything V2 size {size!r}; use one of {sorted(table)}')
  hidden, layers, heads, out, neck, fusion = table[size]
  return DPTConfig(
      backbone=vit.ViTConfig(hidden_size=hidden, num_layers=layers, num_heads=heads,
                             mlp_dim=4 * hidden, patch_size=14, image_size=518,
                             layer_norm_eps=1e-6, key_bias=True, relative_position_bias=False,
                             absolute_position_embeddings=True, apply_layernorm=True,
                             out_indices=out),
      neck_hidden_sizes=neck, readout='ignore', fusion_hidden_size=fusion,
      fusion_to_next_size=True, head_hidden_size=32, head_to_patch_grid=True)


def param_shapes(config: DPTConfig) -> Any:
  """The params pytree of DPT(config) as jax.ShapeDtypeStructs (nothing is allocated)."""
  p = config.backbone.patch_size
  x = jax.ShapeDtypeStruct((1, 2 * p, 2 * p, 3), jnp.float32)
  return jax.eval_shape(lambda x: DPT(config).init(jax.random.PRNGKey(0), x), x)['params']
