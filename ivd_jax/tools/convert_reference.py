r"""Converts the authors' PyTorch ADM checkpoints (`AdmUnet2d`) into ivd_jax UNet parameters.

Library:
  unet_from_kwargs(kwargs) -> UNet
  from_state_dict(state_dict, kwargs) -> (UNet, params)

Command line (torch is needed only to read a .pt file; an .npz of arrays works without it):
  python -m ivd_jax.tools.convert_reference --checkpoint ckpt.pt --config config.json \
      --out /path/to/exported_params

`config.json` is the reference's training config (the UNet arguments under backbone.args) or the
bare constructor arguments. The exported config names the network's role from its input channels
(4: G_u, 10: G_c, 8: the 256_128 super-resolution G_sr, whose low resolution is read from the
config's dataset.args.image_size_lr, else half the image size). A .pt file is read with torch.load(weights_only=True): tensors and
plain containers only, nothing in it runs. A legacy checkpoint that pickles other Python objects
is refused; --allow_pickle reads it with full unpickling, which runs whatever code the file
names -- only for a file from a source you trust. The output is a params-only checkpoint written with
ivd_jax.checkpoint.save_params, which sampling restores with load_params.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from ivd_jax import checkpoint
from ivd_jax import roles
from ivd_jax.errors import UserError
from ivd_jax.models import unet as unet_lib
from ivd_jax.models.unet import UNet

# Reference constructor arguments that ivd_jax implements with one fixed value.
_FIXED = {'conv_resample': True, 'use_scale_shift_norm': True, 'resblock_updown': True,
          'dims': 2, 'num_heads_upsample': -1, 'use_new_attention_order': False}
# Arguments that do not change the network's function or parameters.
_IGNORED = ('use_fp16', 'has_null_class', 'use_checkpoint')

# Reference layer name inside a block -> ivd_jax layer name.
_LAYERS = {'in_layers.0': 'in_norm/gn', 'in_layers.2': 'in_conv', 'emb_layers.1': 'emb_proj',
           'out_layers.0': 'out_norm/gn', 'out_layers.3': 'out_conv', 'skip_connection': 'skip',
           'norm': 'norm/gn', 'qkv': 'qkv', 'proj_out': 'proj_out'}
_TOP = {'time_embed.1': 'time_embed_fc1', 'time_embed.3': 'time_embed_fc2',
        'label_emb': 'label_emb', 'out.0': 'out_norm/gn', 'out.2': 'out_conv'}
_BLOCK = re.compile(r'^(input_blocks\.\d+\.\d+|middle_block\.\d+|output_blocks\.\d+\.\d+)'
                    r'(?:\.(.+))?$')
# Buffers in the reference state dict that are not parameters.
_BUFFERS = re.compile(r'(^|\.)freqs$')


def unet_from_kwargs(kwargs: Mapping[str, Any], *, dtype: str = 'float32',
                     remat: bool = False) -> UNet:
  """Builds the UNet that has the reference `AdmUnet2d(**kwargs)`'s architecture."""
  kwargs = dict(kwargs)
  for key, value in _FIXED.items():
    if key in kwargs and kwargs.pop(key) != value:
      raise UserError(f'reference argument {key}={value!r} is the only supported value. '
                      'Fix: convert a checkpoint trained with the ADM defaults.')
  for key in _IGNORED:
    kwargs.pop(key, None)
  num_head_channels = kwargs.pop('num_head_channels', -1)
  num_heads = kwargs.pop('num_heads', None)
  if num_head_channels in (None, -1):
    if not num_heads:
      raise UserError('reference arguments give neither num_head_channels nor num_heads. '
                      'Fix: set one of them in the config.')
    num_head_channels = -1
  known = ('image_size', 'in_channels', 'out_channels', 'model_channels', 'channel_mult',
           'num_res_blocks', 'attention_resolutions', 'num_classes', 'num_groups', 'dropout')
  unknown = sorted(set(kwargs) - set(known))
  if unknown:
    raise UserError(f'unknown reference UNet arguments {unknown}. Fix: remove them or convert '
                    'the checkpoint by hand.')
  model = UNet(
      image_size=int(kwargs['image_size']),
      in_channels=int(kwargs.get('in_channels', 3)),
      out_channels=int(kwargs.get('out_channels', 3)),
      model_channels=int(kwargs['model_channels']),
      channel_mult=tuple(int(m) for m in kwargs.get('channel_mult', (1, 2, 4, 8))),
      num_res_blocks=int(kwargs['num_res_blocks']),
      attention_resolutions=tuple(int(r) for r in kwargs['attention_resolutions']),
      num_classes=int(kwargs['num_classes']) if kwargs.get('num_classes') else None,
      num_head_channels=int(num_head_channels),
      num_heads=int(num_heads or 1),
      num_groups=int(kwargs.get('num_groups', 32)),
      dropout=float(kwargs.get('dropout', 0.0)),
      dtype=dtype,
      remat=remat)
  model.validate()
  return model


def param_shapes(model: UNet) -> Dict[str, Tuple[int, ...]]:
  """Flat {'a/b/kernel': shape} of the model's parameters, without allocating them."""
  h = model.image_size
  x = jax.ShapeDtypeStruct((1, h, h, model.in_channels), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  y = jax.ShapeDtypeStruct((1,), jnp.int32) if model.num_classes else None
  shapes = jax.eval_shape(lambda *a: model.init(jax.random.PRNGKey(0), *a), x, t, y)['params']
  flat = traverse_util.flatten_dict(shapes, sep='/')
  return {k: tuple(v.shape) for k, v in flat.items()}


def flax_name(torch_key: str) -> Optional[str]:
  """Maps a reference state-dict key to the flat ivd_jax parameter path (None for buffers)."""
  if _BUFFERS.search(torch_key):
    return None
  module, _, leaf = torch_key.rpartition('.')
  if module in _TOP:
    path = _TOP[module]
  else:
    m = _BLOCK.match(module)
    if not m:
      raise UserError(f'unexpected reference parameter {torch_key!r}. Fix: check that the '
                      'checkpoint is an AdmUnet2d state dict.')
    block, layer = m.group(1).replace('.', '_'), m.group(2)
    if layer is None:  # The first conv, input_blocks.0.0.
      path = block
    elif layer in _LAYERS:
      path = f'{block}/{_LAYERS[layer]}'
    else:
      raise UserError(f'unexpected reference layer {torch_key!r}. Fix: check that the '
                      'checkpoint is an AdmUnet2d state dict.')
  if leaf == 'bias':
    return f'{path}/bias'
  if path.endswith('/gn'):
    return f'{path}/scale'
  if path == 'label_emb':
    return f'{path}/embedding'
  return f'{path}/kernel'


def _to_flax_layout(name: str, value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:  # Conv2d [out, in, kh, kw] -> [kh, kw, in, out].
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 3:  # Conv1d [out, in, 1] (attention qkv, proj_out) -> Dense [in, out].
    return value[:, :, 0].T
  if value.ndim == 2 and name.endswith('/kernel'):  # Linear [out, in] -> Dense [in, out].
    return value.T
  return value  # Biases, norm scales, the embedding table [num_classes, E].


def from_state_dict(state_dict: Mapping[str, Any], kwargs: Mapping[str, Any], *,
                    dtype: str = 'float32', remat: bool = False) -> Tuple[UNet, Dict[str, Any]]:
  """Converts a reference state dict (name -> array) into (UNet, params).

  Every parameter of the model must be present with the expected shape, and every reference
  parameter must be used; otherwise a UserError lists the offending names. Embedding tables
  ([num_classes, E]) and 1-D parameters keep their layout; conv and linear weights are transposed.
  """
  model = unet_from_kwargs(kwargs, dtype=dtype, remat=remat)
  expected = param_shapes(model)
  flat = {}
  unused = []
  for key, value in state_dict.items():
    value = np.asarray(value.detach().cpu().numpy() if hasattr(value, 'detach') else value)
    name = flax_name(key)
    if name is None:
      continue
    if name not in expected:
      unused.append(key)
      continue
    value = _to_flax_layout(name, value)
    if value.shape != expected[name]:
      raise UserError(f'reference parameter {key!r} has shape {value.shape} after layout '
                      f'conversion; ivd_jax expects {expected[name]} for {name!r}. Fix: check '
                      'the constructor arguments in the config.')
    flat[name] = np.asarray(value, np.float32)
  missing = sorted(set(expected) - set(flat))
  if unused or missing:
    raise UserError(f'state dict does not match the config: unused reference parameters '
                    f'{unused[:8]}, missing ivd_jax parameters {missing[:8]}. Fix: check the '
                    'constructor arguments in the config.')
  return model, traverse_util.unflatten_dict(flat, sep='/')


def model_config(model: UNet) -> ml_collections.ConfigDict:
  """The `config.model` section that rebuilds `model` with unet_from_config."""
  return ml_collections.ConfigDict({
      'image_size': model.image_size, 'in_channels': model.in_channels,
      'out_channels': model.out_channels, 'model_channels': model.model_channels,
      'channel_mult': tuple(model.channel_mult), 'num_res_blocks': model.num_res_blocks,
      'attention_resolutions': tuple(model.attention_resolutions),
      'num_classes': model.num_classes or 0, 'num_head_channels': model.num_head_channels,
      'num_heads': model.num_heads, 'num_groups': model.num_groups, 'dropout': model.dropout,
      'dtype': model.dtype, 'remat': model.remat})


def export_config(model: UNet, reference_config: Optional[Mapping[str, Any]] = None
                  ) -> ml_collections.ConfigDict:
  """The config saved with converted params: `model`, the `role` its input channels name (none
  for a channel count no role has) and, for G_sr, `sr.low_resolution` (the reference config's
  dataset.args.image_size_lr, else half the image size: the reference's SR is 256_128)."""
  config = ml_collections.ConfigDict({'model': model_config(model)})
  matching = [r for r in roles.ROLES.values() if r.in_channels == model.in_channels]
  if matching:
    config.role = matching[0].name
  if matching and matching[0] is roles.SR:
    dataset = (reference_config or {}).get('dataset') or {}
    low = (dataset.get('args') or {}).get('image_size_lr') or model.image_size // 2
    config.sr = ml_collections.ConfigDict({'low_resolution': int(low)})
  return config


def _reference_kwargs(config: Mapping[str, Any]) -> Mapping[str, Any]:
  if 'backbone' in config:
    return config['backbone'].get('args', config['backbone'])
  if 'constructor_kwargs' in config:
    return config['constructor_kwargs']
  return config


def _load_state_dict(path: str, allow_pickle: bool = False) -> Mapping[str, Any]:
  """Reads a reference state dict from a .pt file (torch) or an .npz of arrays.

  allow_pickle: read a .pt file with full unpickling (code execution; trusted files only)
  instead of torch.load(weights_only=True).
  """
  if path.endswith('.npz'):  # e.g. the fixtures' arrays, stored as "param/<key>".
    with np.load(path, allow_pickle=False) as arrays:
      return {re.sub(r'^param/', '', k): arrays[k] for k in arrays.files
              if not k.startswith(('input/', 'output', 'intermediate/'))}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError('reading a .pt checkpoint needs torch. Fix: pip install torch (CPU build) '
                    '-- it is only needed for conversion.') from e
  try:
    obj = torch.load(path, map_location='cpu', weights_only=not allow_pickle)
  except pickle.UnpicklingError as e:
    if allow_pickle:
      raise UserError(f'{path} cannot be unpickled ({e}). Fix: pass the reference .pt '
                      'checkpoint') from None
    # torch names the object it refused on a line of its own ('... GLOBAL posix.system ...').
    named = [line.strip() for line in str(e).splitlines() if 'global' in line.lower()]
    what = f' ({named[0][:200]})' if named else ''
    raise UserError(
        f'{path} holds pickled Python objects besides tensors, which torch.load(weights_only=True) '
        f'refuses to run{what}. Fix: pass --allow_pickle to load it with full unpickling, which '
        'executes code named in the file: only for a checkpoint from a source you trust') from None
  # Trainer checkpoints nest the weights; prefer EMA weights where present.
  for key in ('ema', 'ema_model', 'backbone', 'model', 'state_dict'):
    if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
      obj = obj[key]
      break
  if not isinstance(obj, Mapping):
    raise UserError(f'{path} holds a {type(obj).__name__}, not a state dict. Fix: pass the '
                    'reference backbone checkpoint.')
  return {re.sub(r'^(module\.|backbone\.)+', '', k): v for k, v in obj.items()}


def main(argv: Optional[list] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', required=True, help='reference .pt state dict')
  parser.add_argument('--config', required=True, help='reference config .json')
  parser.add_argument('--out', required=True, help='output params checkpoint directory')
  parser.add_argument('--widen_to', type=int, default=0,
                      help='widen the first conv to this many inputs (G_u -> G_c init)')
  parser.add_argument('--allow_pickle', action='store_true',
                      help='read a legacy .pt that pickles Python objects with full unpickling; '
                      'this runs code named in the file: only for checkpoints you trust')
  args = parser.parse_args(argv)
  for flag in ('checkpoint', 'config'):
    if not os.path.isfile(getattr(args, flag)):
      raise UserError(f'--{flag} {getattr(args, flag)} does not exist. Fix: pass the path of '
                      f'the reference {flag} file.')
  with open(args.config) as f:
    reference_config = json.load(f)
  kwargs = _reference_kwargs(reference_config)
  model, params = from_state_dict(_load_state_dict(args.checkpoint, args.allow_pickle), kwargs)
  if args.widen_to:
    params = unet_lib.widen_input(params, args.widen_to)
    model = model.clone(in_channels=args.widen_to)
  config = export_config(model, reference_config)
  checkpoint.save_params(args.out, params, config)
  count = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(params))
  print(f'wrote {count} parameters to {args.out}')
  return 0


if __name__ == '__main__':
  try:
    sys.exit(main())
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
