"""Flax DPT-BEiT and Depth Anything against transformers' PyTorch models (random tiny configs)."""
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='torch is needed for the PyTorch cross-check')
transformers = pytest.importorskip('transformers',
                                   reason='transformers is needed for the PyTorch cross-check')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from ivd_jax import errors  # pylint: disable=g-import-not-at-top,wrong-import-position
from ivd_jax.models import dpt  # pylint: disable=g-import-not-at-top,wrong-import-position
from ivd_jax.tools import convert_depth  # pylint: disable=g-import-not-at-top,wrong-import-position

RTOL = 1e-4


def _randomize(model, seed):
  """Random values in every parameter (HF zero-initialises tables, cls tokens, layer scales)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g) * 0.2
      is_norm_weight = 'norm' in name and name.endswith('weight')
      p.copy_(1.0 + noise if is_norm_weight else noise)
  return model.eval()


def beit_dpt_model():
  backbone = transformers.BeitConfig(
      image_size=64, patch_size=16, num_hidden_layers=4, hidden_size=32, intermediate_size=64,
      num_attention_heads=4, use_relative_position_bias=True, reshape_hidden_states=False,
      out_features=['stage1', 'stage2', 'stage3', 'stage4'])
  config = transformers.DPTConfig(backbone_config=backbone, neck_hidden_sizes=[16, 32, 64, 64],
                                  fusion_hidden_size=32)
  return _randomize(transformers.DPTForDepthEstimation(config), 0)


def depth_anything_model():
  backbone = transformers.Dinov2Config(
      image_size=28, patch_size=14, num_hidden_layers=4, hidden_size=32, num_attention_heads=4,
      out_features=['stage1', 'stage2', 'stage3', 'stage4'], apply_layernorm=True,
      reshape_hidden_states=False)
  config = transformers.DepthAnythingConfig(
      backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
      fusion_hidden_size=16, head_hidden_size=8, patch_size=14)
  return _randomize(transformers.DepthAnythingForDepthEstimation(config), 1)


def _compare(model, shape, seed):
  """Max error of the converted Flax model relative to the PyTorch output's max magnitude."""
  config = convert_depth.config_from_transformers(model.config.to_dict())
  params = convert_depth.params_from_state_dict(model.state_dict(), config)
  x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)  # [B, H, W, 3]
  with torch.no_grad():
    ref = model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2))).predicted_depth.numpy()
  out = np.asarray(jax.jit(dpt.DPT(config).apply)({'params': params}, x))
  assert out.shape == ref.shape
  assert np.abs(ref).max() > 1e-3  # the random network must produce a non-trivial output
  return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.fixture(scope='module')
def beit():
  return beit_dpt_model()


@pytest.fixture(scope='module')
def depth_anything():
  return depth_anything_model()


def test_dpt_beit_matches_transformers(beit):
  # 64x96 input: a 4x6 patch grid, so the 7x7 relative-position table is resized to 7x11.
  assert _compare(beit, (2, 64, 96, 3), 0) < RTOL


def test_dpt_beit_odd_patch_grid_matches_transformers(beit):
  # 5x3 patches: the stride-2 reassemble map is 3x2 and fusion resizes the skip feature.
  assert _compare(beit, (1, 80, 48, 3), 1) < RTOL


def test_depth_anything_matches_transformers(depth_anything):
  # 3x4 patches on a 2x2 pretraining grid: bicubic position embeddings, odd fusion sizes.
  assert _compare(depth_anything, (2, 42, 56, 3), 2) < RTOL


def test_legacy_parameter_names_convert_identically(beit):
  """transformers 4.x names (the hub's checkpoints) give the same params as 5.x names."""
  config = convert_depth.config_from_transformers(beit.config.to_dict())
  new = beit.state_dict()
  legacy = {}
  for k, v in new.items():
    k = k.replace('backbone.beit.layers.', 'backbone.encoder.layer.')
    k = k.replace('backbone.beit.embeddings.', 'backbone.embeddings.')
    k = k.replace('attention.q_proj', 'attention.attention.query')
    k = k.replace('attention.k_proj', 'attention.attention.key')
    k = k.replace('attention.v_proj', 'attention.attention.value')
    k = k.replace('attention.o_proj', 'attention.output.dense')
    k = k.replace('mlp.fc1', 'intermediate.dense').replace('mlp.fc2', 'output.dense')
    k = k.replace('.relative_position_bias.', '.attention.attention.relative_position_bias.')
    legacy[k] = v
  assert set(legacy) != set(new)
  a = convert_depth.params_from_state_dict(new, config)
  b = convert_depth.params_from_state_dict(legacy, config)
  assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


def test_legacy_depth_anything_names_convert_identically(depth_anything):
  config = convert_depth.config_from_transformers(depth_anything.config.to_dict())
  new = depth_anything.state_dict()
  legacy = {}
  for k, v in new.items():
    for old, name in (('attention.q_proj', 'attention.attention.query'),
                      ('attention.k_proj', 'attention.attention.key'),
                      ('attention.v_proj', 'attention.attention.value'),
                      ('attention.o_proj', 'attention.output.dense')):
      k = k.replace(old, name)
    legacy[k] = v
  assert set(legacy) != set(new)
  a = convert_depth.params_from_state_dict(new, config)
  b = convert_depth.params_from_state_dict(legacy, config)
  assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


def test_mismatched_checkpoint_is_a_user_error(beit):
  config = convert_depth.config_from_transformers(beit.config.to_dict())
  state = dict(beit.state_dict())
  del state['neck.convs.0.weight']
  with pytest.raises(errors.UserError, match='missing'):
    convert_depth.params_from_state_dict(state, config)


def test_sparse_hub_configs_give_the_published_models():
  """config.json files list only non-default values; the converter fills transformers' defaults."""
  # depth-anything/Depth-Anything-V2-Small-hf's config.json (architecture fields).
  da2_small = {
      'model_type': 'depth_anything', 'depth_estimation_type': 'relative', 'max_depth': None,
      'fusion_hidden_size': 64, 'head_hidden_size': 32, 'head_in_index': -1,
      'neck_hidden_sizes': [48, 96, 192, 384], 'patch_size': 14,
      'reassemble_factors': [4, 2, 1, 0.5], 'reassemble_hidden_size': 384,
      'backbone_config': {'model_type': 'dinov2', 'hidden_size': 384, 'image_size': 518,
                          'num_attention_heads': 6, 'out_features': ['stage3', 'stage6', 'stage9',
                                                                     'stage12'],
                          'out_indices': [3, 6, 9, 12], 'reshape_hidden_states': False}}
  assert convert_depth.config_from_transformers(da2_small) == dpt.depth_anything_v2('small')
  # MiDaS v3.1 BEiT-L 512 with every default value left out of both levels.
  backbone = transformers.BeitConfig(
      image_size=512, num_hidden_layers=24, hidden_size=1024, intermediate_size=4096,
      num_attention_heads=16, use_relative_position_bias=True, reshape_hidden_states=False,
      out_features=['stage6', 'stage12', 'stage18', 'stage24'])
  beit = transformers.DPTConfig(backbone_config=backbone, neck_hidden_sizes=[256, 512, 1024, 1024])
  sparse = beit.to_diff_dict()
  beit_defaults = transformers.BeitConfig().to_dict()
  sparse['backbone_config'] = {k: v for k, v in sparse['backbone_config'].items()
                               if k == 'model_type' or beit_defaults.get(k, object()) != v}
  assert 'layer_norm_eps' not in sparse['backbone_config']
  assert convert_depth.config_from_transformers(sparse) == dpt.dpt_beit_large_512()


@pytest.mark.parametrize('mode,align', [('bilinear', False), ('bilinear', True),
                                        ('bicubic', False)])
@pytest.mark.parametrize('size', [(7, 11), (3, 2)])
def test_torch_interpolate_matches_torch(mode, align, size):
  x = np.random.default_rng(3).normal(size=(2, 5, 4, 3)).astype(np.float32)
  ref = torch.nn.functional.interpolate(torch.from_numpy(x.transpose(0, 3, 1, 2)), size=size,
                                        mode=mode, align_corners=align).numpy()
  out = np.asarray(dpt.torch_interpolate(x, size, mode=mode, align_corners=align))
  np.testing.assert_allclose(out, ref.transpose(0, 2, 3, 1), atol=1e-5)


def test_presets_have_published_sizes():
  """Parameter counts of the published configs (transformers models of the same configs)."""
  counts = {}
  for name, config in [('beit_large_512', dpt.dpt_beit_large_512()),
                       ('da2_small', dpt.depth_anything_v2('small')),
                       ('da2_base', dpt.depth_anything_v2('base'))]:
    shapes = dpt.param_shapes(config)
    counts[name] = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  # transformers' models of these configs, less the parameters they build but never use (DINOv2's
  # mask token, the skip unit of the first fusion layer): Depth Anything V2 small / base are
  # published as 24.8 M / 97.5 M with those included.
  assert counts == {'beit_large_512': 342_807_233, 'da2_small': 24_710_849,
                    'da2_base': 97_174_849}
