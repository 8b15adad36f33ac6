"""Convert transformers depth checkpoints (PyTorch / safetensors) to ivd_jax Flax weights.

Supported: `DPTForDepthEstimation` with a BEiT backbone (MiDaS v3.1, e.g. Intel/dpt-beit-large-512,
the reference's `dpt_beit_large_512`) and `DepthAnythingForDepthEstimation` (Depth Anything V1/V2,
DINOv2 backbone, e.g. depth-anything/Depth-Anything-V2-Base-hf). Both the current (transformers 5)
and the older (4.x, what the hub holds) parameter names are accepted.

  # after downloading a checkpoint folder (config.json + model.safetensors / pytorch_model.bin,
  # optionally preprocessor_config.json):
  python -m ivd_jax.tools.convert_depth --checkpoint /ckpt/dpt-beit-large-512 \
      --output /ckpt/dpt_beit_large_512.npz [--verify]

Reading .safetensors needs `safetensors` (numpy only); .bin needs torch. Nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import re
import sys
from typing import Any, Mapping

from absl import app
from absl import flags
import flax
import jax
import numpy as np

from ivd_jax import errors
from ivd_jax.models import depth_estimator
from ivd_jax.models import dpt
from ivd_jax.models import vit

# ---------------------------------------------------------------------------------------------
# Configs.


# transformers' config defaults for every field read below: config.json files hold only the
# values that differ from them (the hub's backbone_config often lists just a few keys).
_DEFAULTS = {
    'beit': dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, hidden_act='gelu', layer_norm_eps=1e-12, image_size=224,
                 patch_size=16, reshape_hidden_states=True, use_absolute_position_embeddings=False,
                 use_relative_position_bias=False, use_shared_relative_position_bias=False,
                 layer_scale_init_value=0.1, add_fpn=False),
    'dinov2': dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                   hidden_act='gelu', layer_norm_eps=1e-6, image_size=224, patch_size=14,
                   qkv_bias=True, layerscale_value=1.0, use_swiglu_ffn=False,
                   apply_layernorm=True, reshape_hidden_states=True),
    'dpt': dict(neck_hidden_sizes=[96, 192, 384, 768], reassemble_factors=[4, 2, 1, 0.5],
                readout_type='project', fusion_hidden_size=256, hidden_act='gelu',
                is_hybrid=False, add_projection=False, use_batch_norm_in_fusion_residual=False,
                use_bias_in_fusion_residual=None, head_in_index=-1),
    'depth_anything': dict(patch_size=14, neck_hidden_sizes=[48, 96, 192, 384],
                           reassemble_factors=[4, 2, 1, 0.5], fusion_hidden_size=64,
                           head_in_index=-1, reassemble_hidden_size=384, head_hidden_size=32,
                           depth_estimation_type='relative', max_depth=1),
}


def _with_defaults(d: Mapping[str, Any]) -> dict[str, Any]:
  out = dict(_DEFAULTS.get(d.get('model_type'), {}))
  out.update({k: v for k, v in d.items() if v is not None or k not in out})
  return out


def _out_indices(backbone: Mapping[str, Any]) -> tuple[int, ...]:
  """1-based layer numbers: HF out_indices index stage_names, where 0 is the stem."""
  if backbone.get('out_indices'):
    return tuple(int(i) for i in backbone['out_indices'])
  if backbone.get('out_features'):
    return tuple(int(re.fullmatch(r'stage(\d+)', s).group(1)) for s in backbone['out_features'])
  return (int(backbone['num_hidden_layers']),)  # transformers' default: the last stage


def _size(value: Any) -> int:
  if isinstance(value, (list, tuple)):
    if value[0] != value[1]:
      raise errors.UserError(f'non-square pretraining size {value} is not supported')
    return int(value[0])
  return int(value)


def _require(ok: bool, what: str) -> None:
  if not ok:
    raise errors.UserError(f'unsupported checkpoint configuration: {what}. Fix: convert a '
                           'DPT-BEiT (MiDaS v3.1) or Depth Anything (V1/V2) relative-depth model')


def config_from_transformers(hf: Mapping[str, Any]) -> dpt.DPTConfig:
  """DPTConfig from a transformers config.json dict (model_type 'dpt' or 'depth_anything')."""
  model_type = hf.get('model_type')
  _require(model_type in ('dpt', 'depth_anything'), f'model_type {model_type!r}')
  hf = _with_defaults(hf)
  bb = _with_defaults(hf.get('backbone_config') or {})
  _require(bb['hidden_act'] == 'gelu', 'backbone hidden_act must be gelu')
  out = _out_indices(bb)
  if model_type == 'dpt':
    _require(not hf['is_hybrid'] and bb.get('model_type') == 'beit',
             'DPT without a BEiT backbone')
    _require(not hf['add_projection'], 'add_projection')
    _require(not hf['use_batch_norm_in_fusion_residual'], 'batch norm in fusion')
    _require(hf['use_bias_in_fusion_residual'] in (None, True), 'bias-free fusion convs')
    _require(hf['head_in_index'] == -1, 'head_in_index != -1')
    _require(hf['hidden_act'] == 'gelu', 'readout activation must be gelu')
    _require(not bb['add_fpn'] and not bb['reshape_hidden_states'],
             'BEiT backbone with FPN / reshaped features')
    backbone = vit.ViTConfig(
        hidden_size=bb['hidden_size'], num_layers=bb['num_hidden_layers'],
        num_heads=bb['num_attention_heads'], mlp_dim=bb['intermediate_size'],
        patch_size=bb['patch_size'], image_size=_size(bb['image_size']),
        layer_norm_eps=bb['layer_norm_eps'], key_bias=False,
        relative_position_bias=bb['use_relative_position_bias'],
        shared_relative_position_bias=bb['use_shared_relative_position_bias'],
        absolute_position_embeddings=bb['use_absolute_position_embeddings'],
        layer_scale=bb['layer_scale_init_value'] > 0, apply_layernorm=False,
        out_indices=out)
    return dpt.DPTConfig(
        backbone=backbone, neck_hidden_sizes=tuple(hf['neck_hidden_sizes']),
        reassemble_factors=tuple(hf['reassemble_factors']), readout=hf['readout_type'],
        fusion_hidden_size=hf['fusion_hidden_size'], fusion_to_next_size=False,
        head_hidden_size=32, head_to_patch_grid=False, head_activation='relu', max_depth=1.0)
  _require(bb.get('model_type') == 'dinov2', 'Depth Anything without a DINOv2 backbone')
  _require(hf['head_in_index'] == -1, 'head_in_index != -1')
  _require(not bb['reshape_hidden_states'], 'reshaped backbone features')
  _require(hf['reassemble_hidden_size'] == bb['hidden_size'],
           'reassemble_hidden_size != backbone hidden_size')
  backbone = vit.ViTConfig(
      hidden_size=bb['hidden_size'], num_layers=bb['num_hidden_layers'],
      num_heads=bb['num_attention_heads'], mlp_dim=int(bb['hidden_size'] * bb['mlp_ratio']),
      patch_size=bb['patch_size'], image_size=_size(bb['image_size']),
      layer_norm_eps=bb['layer_norm_eps'], key_bias=bb['qkv_bias'],
      query_value_bias=bb['qkv_bias'], relative_position_bias=False,
      absolute_position_embeddings=True, layer_scale=True,
      swiglu=bb['use_swiglu_ffn'], apply_layernorm=bb['apply_layernorm'],
      out_indices=out)
  metric = hf['depth_estimation_type'] == 'metric'
  return dpt.DPTConfig(
      backbone=backbone, neck_hidden_sizes=tuple(hf['neck_hidden_sizes']),
      reassemble_factors=tuple(hf['reassemble_factors']), readout='ignore',
      fusion_hidden_size=hf['fusion_hidden_size'], fusion_to_next_size=True,
      head_hidden_size=hf['head_hidden_size'], head_to_patch_grid=True,
      head_activation='sigmoid' if metric else 'relu',
      max_depth=float(hf.get('max_depth') or 1.0))


def preprocessing_from_transformers(proc: Mapping[str, Any] | None,
                                    config: dpt.DPTConfig) -> depth_estimator.Preprocessing:
  """Preprocessing from a preprocessor_config.json dict (None: the published defaults)."""
  default = depth_estimator.default_preprocessing(config)
  if not proc:
    return default
  size = proc.get('size') or {}
  if 'height' in size:
    hw = (int(size['height']), int(size['width']))
  else:
    hw = default.size
  return depth_estimator.Preprocessing(
      size=hw, keep_aspect_ratio=bool(proc.get('keep_aspect_ratio', False)),
      ensure_multiple_of=int(proc.get('ensure_multiple_of') or 1),
      mean=tuple(proc.get('image_mean', default.mean)),
      std=tuple(proc.get('image_std', default.std)))


# ---------------------------------------------------------------------------------------------
# Parameters.

# transformers 4.x names -> 5.x names (what the hub's checkpoints hold -> what 5.x writes).
_LEGACY_BEIT = [
    (r'^backbone\.embeddings\.', 'backbone.beit.embeddings.'),
    (r'^backbone\.encoder\.relative_position_bias\.', 'backbone.beit.shared_position_bias.'),
    (r'^backbone\.encoder\.layer\.(\d+)\.', r'backbone.beit.layers.\1.'),
    (r'\.attention\.attention\.relative_position_bias\.', '.relative_position_bias.'),
]
_LEGACY_ATTENTION = [
    (r'\.attention\.attention\.query\.', '.attention.q_proj.'),
    (r'\.attention\.attention\.key\.', '.attention.k_proj.'),
    (r'\.attention\.attention\.value\.', '.attention.v_proj.'),
    (r'\.attention\.output\.dense\.', '.attention.o_proj.'),
    (r'\.intermediate\.dense\.', '.mlp.fc1.'),
    (r'\.output\.dense\.', '.mlp.fc2.'),
    (r'\.mlp\.weights_out\.', '.mlp.down_proj.'),
]
_IGNORED = re.compile(r'(relative_position_index|mask_token|^backbone\.beit\.layernorm\.|'
                      r'^backbone\.beit\.pooler\.|num_batches_tracked)')


def _linear(w: np.ndarray) -> np.ndarray:
  return w.T


def _conv(w: np.ndarray) -> np.ndarray:
  return w.transpose(2, 3, 1, 0)  # [out, in, kh, kw] -> [kh, kw, in, out]


def _conv_transpose(w: np.ndarray) -> np.ndarray:
  return w.transpose(2, 3, 0, 1)  # [in, out, kh, kw] -> [kh, kw, in, out]


def _leaf(path: str, suffix: str, w: np.ndarray, kind: str) -> tuple[str, np.ndarray]:
  """(flax path, array) for a torch weight/bias of a linear/conv/norm module."""
  if suffix == 'bias':
    return f'{path}/bias', w
  if kind == 'norm':
    return f'{path}/scale', w
  return f'{path}/kernel', {'linear': _linear, 'conv': _conv, 'convT': _conv_transpose}[kind](w)


def _map_key(key: str, w: np.ndarray, config: dpt.DPTConfig) -> list[tuple[str, np.ndarray]]:
  """One canonical (transformers 5) key -> flax (path, array) pairs; [] when unknown."""
  bb = r'^backbone\.(?:beit\.)?'
  m = re.match(bb + r'embeddings\.(cls_token|position_embeddings)$', key)
  if m:
    return [(f'backbone/{m.group(1)}', w)]
  m = re.match(bb + r'embeddings\.patch_embeddings\.projection\.(weight|bias)$', key)
  if m:
    return [_leaf('backbone/patch_embeddings', m.group(1), w, 'conv')]
  m = re.match(bb + r'shared_position_bias\.relative_position_bias_table$', key)
  if m:
    return [('backbone/shared_relative_position_bias/relative_position_bias_table', w)]
  m = re.match(bb + r'layernorm\.(weight|bias)$', key)
  if m:
    return [_leaf('backbone/layernorm', m.group(1), w, 'norm')]
  m = re.match(bb + r'(?:layers|encoder\.layer)\.(\d+)\.(.+)$', key)
  if m:
    layer, rest = f'backbone/layers_{m.group(1)}', m.group(2)
    simple = {'lambda_1': 'lambda_1', 'lambda_2': 'lambda_2', 'layer_scale1.lambda1': 'lambda_1',
              'layer_scale2.lambda1': 'lambda_2',
              'relative_position_bias.relative_position_bias_table':
                  'relative_position_bias/relative_position_bias_table'}
    if rest in simple:
      return [(f'{layer}/{simple[rest]}', w)]
    m = re.fullmatch(r'(layernorm_before|layernorm_after|norm1|norm2)\.(weight|bias)', rest)
    if m:
      norm = {'layernorm_before': 'norm1', 'layernorm_after': 'norm2'}.get(m.group(1), m.group(1))
      return [_leaf(f'{layer}/{norm}', m.group(2), w, 'norm')]
    m = re.fullmatch(r'(attention|mlp)\.(\w+)\.(weight|bias)', rest)
    if m:
      return [_leaf(f'{layer}/{m.group(1)}/{m.group(2)}', m.group(3), w, 'linear')]
    m = re.fullmatch(r'mlp\.weights_in\.(weight|bias)', rest)  # fused SwiGLU input (4.x)
    if m:
      gate, up = np.split(w, 2, axis=0)
      return [_leaf(f'{layer}/mlp/gate_proj', m.group(1), gate, 'linear'),
              _leaf(f'{layer}/mlp/up_proj', m.group(1), up, 'linear')]
    return []
  m = re.match(r'^neck\.reassemble_stage\.layers\.(\d+)\.(projection|resize)\.(weight|bias)$', key)
  if m:
    i = int(m.group(1))
    kind = 'convT' if m.group(2) == 'resize' and config.reassemble_factors[i] > 1 else 'conv'
    return [_leaf(f'reassemble_{i}/{m.group(2)}', m.group(3), w, kind)]
  m = re.match(r'^neck\.reassemble_stage\.readout_projects\.(\d+)\.0\.(weight|bias)$', key)
  if m:
    return [_leaf(f'readout_projects_{m.group(1)}', m.group(2), w, 'linear')]
  m = re.match(r'^neck\.convs\.(\d+)\.weight$', key)
  if m:
    return [(f'convs_{m.group(1)}/kernel', _conv(w))]
  m = re.match(r'^neck\.fusion_stage\.layers\.(\d+)\.(projection|residual_layer[12]\.'
               r'convolution[12])\.(weight|bias)$', key)
  if m:
    return [_leaf(f'fusion_{m.group(1)}/{m.group(2).replace(".", "/")}', m.group(3), w, 'conv')]
  m = re.match(r'^head\.(?:head\.(0|2|4)|conv([123]))\.(weight|bias)$', key)
  if m:
    n = {'0': 1, '2': 2, '4': 3}[m.group(1)] if m.group(1) else int(m.group(2))
    return [_leaf(f'head_conv{n}', m.group(3), w, 'conv')]
  return []


def canonical_key(key: str, config: dpt.DPTConfig) -> str:
  """transformers 4.x parameter name -> 5.x name (5.x names pass through)."""
  if config.backbone.relative_position_bias or config.readout == 'project':
    for pattern, repl in _LEGACY_BEIT:
      key = re.sub(pattern, repl, key)
  for pattern, repl in _LEGACY_ATTENTION:
    key = re.sub(pattern, repl, key)
  return key


def params_from_state_dict(state_dict: Mapping[str, Any], config: dpt.DPTConfig) -> dict:
  """Flax params of dpt.DPT(config) from a transformers state dict (numpy or torch values).

  Raises UserError on unknown keys, missing parameters, or shape mismatches.
  """
  flat: dict[str, np.ndarray] = {}
  unknown = []
  for key, value in state_dict.items():
    if _IGNORED.search(key):
      continue
    w = np.asarray(value.detach().cpu().float().numpy() if hasattr(value, 'detach') else value,
                   np.float32)
    pairs = _map_key(canonical_key(key, config), w, config)
    if not pairs:
      unknown.append(key)
    flat.update(pairs)
  # Parameters transformers builds but never uses: the first fusion layer's skip unit (it has no
  # skip input) and backbone layers after the last returned one.
  last = max(config.backbone.out_indices)
  flat = {k: v for k, v in flat.items()
          if not k.startswith('fusion_0/residual_layer1/') and not (
              (m := re.match(r'backbone/layers_(\d+)/', k)) and int(m.group(1)) >= last)}
  expected = dpt.param_shapes(config)
  shapes = {k: v.shape for k, v in flax.traverse_util.flatten_dict(expected, sep='/').items()}
  missing = sorted(set(shapes) - set(flat))
  extra = sorted(set(flat) - set(shapes))
  wrong = sorted(k for k in set(shapes) & set(flat) if shapes[k] != flat[k].shape)
  if unknown or missing or extra or wrong:
    raise errors.UserError(
        'checkpoint does not match the model: '
        f'unknown keys {unknown[:5]}, missing {missing[:5]}, unexpected {extra[:5]}, '
        f'wrong shapes {[(k, flat[k].shape, shapes[k]) for k in wrong[:5]]}. Fix: convert a '
        'transformers DPTForDepthEstimation (BEiT) / DepthAnythingForDepthEstimation checkpoint')
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def read_state_dict(checkpoint_dir: str) -> dict[str, Any]:
  """All tensors of a transformers checkpoint folder (safetensors preferred, sharded or not)."""
  files = sorted(os.listdir(checkpoint_dir))
  st = [f for f in files if f.endswith('.safetensors')]
  if st:
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    out = {}
    for f in st:
      out.update(load_file(os.path.join(checkpoint_dir, f)))
    return out
  bins = [f for f in files if f.endswith('.bin') or f.endswith('.pt') or f.endswith('.pth')]
  if not bins:
    raise errors.UserError(f'no .safetensors / .bin weights in {checkpoint_dir!r}. Fix: download '
                           'the whole transformers checkpoint folder')
  import torch  # pylint: disable=g-import-not-at-top
  out = {}
  for f in bins:
    out.update(torch.load(os.path.join(checkpoint_dir, f), map_location='cpu', weights_only=True))
  return out


def convert_checkpoint(checkpoint_dir: str, output: str) -> dpt.DPTConfig:
  """Converts a transformers checkpoint folder to an ivd_jax depth weights .npz."""
  config_path = os.path.join(checkpoint_dir, 'config.json')
  if not os.path.isfile(config_path):
    raise errors.UserError(f'{config_path!r} not found. Fix: pass the checkpoint folder that '
                           'holds config.json and the weights')
  with open(config_path) as f:
    config = config_from_transformers(json.load(f))
  proc_path = os.path.join(checkpoint_dir, 'preprocessor_config.json')
  proc = None
  if os.path.isfile(proc_path):
    with open(proc_path) as f:
      proc = json.load(f)
  params = params_from_state_dict(read_state_dict(checkpoint_dir), config)
  depth_estimator.save_depth_model(output, config, params,
                                   preprocessing_from_transformers(proc, config))
  return config


def verify_against_transformers(checkpoint_dir: str, weights: str, *, seed: int = 0) -> float:
  """Max |flax - torch| / max |torch| of the converted model on a random input (needs torch).

  The input is one normalised image at the checkpoint's pretraining size plus one patch of width,
  so position embeddings / relative position biases are resized as for real photographs.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  config, params, _ = depth_estimator.load_depth_model(weights)
  # local_files_only: a mistyped folder is an error, never a download from the hub.
  model = transformers.AutoModelForDepthEstimation.from_pretrained(
      checkpoint_dir, local_files_only=True).eval()
  p, s = config.backbone.patch_size, config.backbone.image_size
  x = np.random.default_rng(seed).normal(size=(1, s, s + p, 3)).astype(np.float32)
  with torch.no_grad():
    ref = model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2))).predicted_depth.numpy()
  out = np.asarray(jax.jit(dpt.DPT(config).apply)({'params': params}, x))
  return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))


_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'transformers checkpoint folder.')
_OUTPUT = flags.DEFINE_string('output', None, 'Output .npz for estimator_kwargs.weights.')
_VERIFY = flags.DEFINE_bool('verify', False, 'Also run transformers (torch) and the converted '
                            'model on one random input and print the max relative difference.')


def main(argv):
  del argv
  if not _CHECKPOINT.value or not _OUTPUT.value:
    raise app.UsageError('--checkpoint and --output are required')
  try:
    config = convert_checkpoint(_CHECKPOINT.value, _OUTPUT.value)
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  report = {'output': _OUTPUT.value, 'backbone_layers': config.backbone.num_layers,
            'hidden_size': config.backbone.hidden_size}
  if _VERIFY.value:
    report['max_rel_error_vs_transformers'] = verify_against_transformers(_CHECKPOINT.value,
                                                                          _OUTPUT.value)
  print(json.dumps(report))


if __name__ == '__main__':
  app.run(main)
