"""The ADM UNet: reference parameter counts, class embedding, dtypes, remat, dropout, sharding."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from ivd_jax.errors import FieldError, UserError
from ivd_jax.models.unet import UNet, unet_from_config
from ivd_jax.tools.convert_reference import param_shapes, unet_from_kwargs

TINY = dict(image_size=8, in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2),
            num_res_blocks=1, attention_resolutions=(4,), num_classes=5, num_head_channels=32)


def _count(model):
  return sum(int(np.prod(s)) for s in param_shapes(model).values())


def test_param_counts_equal_reference(fixtures_dir):
  counts = json.loads((fixtures_dir / 'adm_param_counts.json').read_text())
  for name, entry in counts.items():
    if name.startswith('_'):
      continue
    model = unet_from_kwargs(entry['constructor_kwargs'])
    shapes = param_shapes(model)
    assert sum(int(np.prod(s)) for s in shapes.values()) == entry['total_params'], name
    assert len(shapes) == entry['num_param_tensors'], name
    by_top = {}
    for path, shape in shapes.items():
      top = path.split('/')[0]
      top = next((p for p in ('time_embed', 'label_emb', 'input_blocks', 'middle_block',
                              'output_blocks') if top.startswith(p)), 'out')
      by_top[top] = by_top.get(top, 0) + int(np.prod(shape))
    assert by_top == entry['params_by_top_module'], name
  # The single-category network built for 64x64 input (benchmarks/unet.py): attention moves one
  # level up, 100.3 M parameters.
  single = dict(counts['rgbd_singlecategory_adm_128_small']['constructor_kwargs'], image_size=64)
  assert _count(unet_from_kwargs(single)) == 100_270_724


def _random_params(shapes, seed):
  """Random parameters everywhere (the zero-initialised layers too), like the reference fixture.

  Built in numpy from the parameter shapes, so no initialiser needs compiling.
  """
  rng = np.random.default_rng(seed)
  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if 'scale' in name:
      return 1 + 0.1 * rng.standard_normal(s.shape).astype(np.float32)
    fan_in = np.prod(s.shape[:-1]) if 'kernel' in name else 1
    return (rng.standard_normal(s.shape) / np.sqrt(max(fan_in, 1)) * (
        1.0 if 'kernel' in name else 0.1)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope='module')
def tiny():
  model = UNet(**TINY)
  x = np.random.default_rng(0).standard_normal((8, 8, 8, 4)).astype(np.float32)
  t = np.array([0, 17, 250, 500, 903, 999, 1, 42])
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(1), x, t, np.zeros((8,), np.int32))
  return model, shapes['params'], x, t


@pytest.fixture(scope='module')
def apply_fns(tiny):
  """Compiled apply(params, y) and apply(params) (no labels) of the tiny model."""
  model, _, x, t = tiny
  return (jax.jit(lambda p, y: model.apply({'params': p}, x, t, y)),
          jax.jit(lambda p: model.apply({'params': p}, x, t)))


@pytest.fixture(scope='module')
def perturbed(tiny, apply_fns):
  """Random parameters in every layer, and the compiled apply(params, y)."""
  return _random_params(tiny[1], 2), apply_fns[0]


def test_class_embedding_null_label(tiny, perturbed, apply_fns):
  _, _, x, t = tiny
  params, apply = perturbed
  none = apply_fns[1](params)
  null = apply(params, np.full((8,), -1))
  np.testing.assert_allclose(null, none, atol=1e-6)
  labels = apply(params, np.arange(8) % 5)
  assert np.abs(np.asarray(labels - none)).max(axis=(1, 2, 3)).min() > 1e-3
  # Mixed batch: the null rows equal the unconditional output, the others their label's.
  mixed = apply(params, jnp.array([-1, 1, -1, 3, -1, 0, 2, -1]))
  np.testing.assert_allclose(mixed[0], none[0], atol=1e-6)
  np.testing.assert_allclose(mixed[3], labels[3], atol=1e-6)
  with pytest.raises(UserError, match='unconditional'):
    jax.eval_shape(UNet(**dict(TINY, num_classes=None)).init, jax.random.PRNGKey(0), x, t, t)
  # init without labels still creates the class table.
  no_labels = jax.eval_shape(UNet(**TINY).init, jax.random.PRNGKey(0), x, t)['params']
  assert no_labels['label_emb']['embedding'].shape == (5, 128)


def test_bfloat16_compute_float32_params(tiny, perturbed):
  _, _, x, t = tiny
  params, apply = perturbed
  bf16 = UNet(**dict(TINY, dtype='bfloat16'))
  fresh = jax.eval_shape(bf16.init, jax.random.PRNGKey(1), x, t)['params']
  assert {p.dtype for p in jax.tree_util.tree_leaves(fresh)} == {jnp.dtype(jnp.float32)}
  ref = apply(params, np.arange(8) % 5)
  out = jax.jit(lambda p: bf16.apply({'params': p}, x, t, np.arange(8) % 5))(params)
  assert out.dtype == jnp.float32
  out, ref = np.asarray(out), np.asarray(ref)
  err = np.abs(out - ref).max() / np.abs(ref).max()
  assert 1e-5 < err < 0.05, err


def test_init_zero_layers_and_remat_gradients():
  # One level, attention only in the middle block: small backward compilations.
  config = dict(TINY, channel_mult=(1,), attention_resolutions=())
  x = np.random.default_rng(1).standard_normal((2, 8, 8, 4)).astype(np.float32)
  t, y = np.array([3, 900]), np.array([1, -1])
  model, remat = UNet(**config), UNet(**dict(config, remat=True))
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x, t, y)['params']
  # The method's zero-initialised layers: each block's last conv, attention proj_out and the
  # final conv, so a fresh network predicts exactly zero.
  flat = traverse_util.flatten_dict(params, sep='/')
  zero = sorted(k for k, v in flat.items() if k.endswith('kernel') and not np.any(np.asarray(v)))
  assert zero == sorted(k for k in flat if k.endswith(('out_conv/kernel', 'proj_out/kernel')))
  assert 'out_conv/kernel' in zero and 'middle_block_1/proj_out/kernel' in zero
  assert len(zero) == 1 + 3 + 2 + 1  # 1 encoder, 3 middle, 2 decoder blocks, the final conv.

  def loss(m, p):
    return jnp.mean(m.apply({'params': p}, x, t, y) ** 2)

  grad = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)
  v_zero, _ = grad(model, params)
  assert float(v_zero) == 0.0
  params = _random_params(jax.eval_shape(lambda: params), 4)
  v0, g0 = grad(model, params)
  v1, g1 = grad(remat, params)
  assert float(v0) > 1e-3
  assert float(v0) == pytest.approx(float(v1), rel=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_dropout_only_in_training(tiny, perturbed):
  _, _, x, t = tiny
  params, apply = perturbed
  model = UNet(**dict(TINY, dropout=0.3))
  y = np.arange(8) % 5
  # With train=False dropout is the identity, so the eval output is apply(params, y).
  train = jax.jit(lambda p, key: model.apply({'params': p}, x, t, y, train=True,
                                             rngs={'dropout': key}))
  out = train(params, jax.random.PRNGKey(6))
  assert np.abs(np.asarray(out) - apply(params, y)).max() > 1e-3
  np.testing.assert_array_equal(out, train(params, jax.random.PRNGKey(6)))
  assert np.abs(np.asarray(out) - train(params, jax.random.PRNGKey(7))).max() > 1e-3
  with pytest.raises(Exception, match='dropout'):  # Training without a dropout rng fails loudly.
    jax.eval_shape(lambda p: model.apply({'params': p}, x, t, y, train=True), params)


def test_unet_from_config_and_validation(tiny):
  model, _, _, _ = tiny
  config = ml_collections.ConfigDict(dict(TINY, num_heads=1, num_groups=32, dropout=0.0,
                                          dtype='float32', remat=False))
  built = unet_from_config(config)
  assert built == model
  # 0 and None both mean unconditional; the config's 0 builds the canonical None model.
  assert unet_from_config(ml_collections.ConfigDict(dict(TINY, num_classes=0))).num_classes is None
  bad = {'dtype': 'float16', 'num_head_channels': 48, 'image_size': 15, 'num_groups': 24,
         'dropout': 1.5}
  for field, value in bad.items():
    config = ml_collections.ConfigDict(dict(TINY))
    config[field] = value
    with pytest.raises(FieldError, match=f'^{field}:') as e:
      unet_from_config(config)
    assert e.value.field == field
  with pytest.raises(UserError, match='expected'):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)),
                   jnp.zeros((1,), jnp.int32))


def test_sharded_apply_matches_single_device(tiny, perturbed):
  model, _, x, t = tiny
  params, apply = perturbed
  y = jnp.array([-1, 1, 2, 3, 4, 0, -1, 2])
  fn = lambda p, x, t, y: model.apply({'params': p}, x, t, y)
  single = apply(params, y)
  mesh = jax.make_mesh((4, 2), ('data', 'fsdp'), axis_types=(AxisType.Auto,) * 2)
  batch = NamedSharding(mesh, P(('data', 'fsdp')))
  repl = NamedSharding(mesh, P())
  sharded = jax.jit(fn, in_shardings=(repl, batch, batch, batch), out_shardings=batch)(
      params, x, t, y)
  assert len(sharded.sharding.device_set) == 8
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5)
