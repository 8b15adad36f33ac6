"""The ADM UNet: reference parameter counts, class embedding, dtypes, remat, dropout, sharding."""
import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from ivd_jax.errors import ConfigError, UserError
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


def _perturbed(params, key, scale=0.05):
  """Non-zero everywhere (the zero-initialised layers too), like the reference fixture."""
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [p + scale * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])


@pytest.fixture(scope='module')
def tiny():
  model = UNet(**TINY)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 4))
  t = jnp.array([0, 17, 250, 500, 903, 999, 1, 42])
  params = jax.jit(model.init)(jax.random.PRNGKey(1), x, t, jnp.zeros((8,), jnp.int32))['params']
  return model, params, x, t


@pytest.fixture(scope='module')
def perturbed(tiny):
  """Parameters with every layer non-zero, and a compiled apply(params, y)."""
  model, params, x, t = tiny
  params = _perturbed(params, jax.random.PRNGKey(2))
  apply = jax.jit(lambda p, y: model.apply({'params': p}, x, t, y))
  return params, apply


def test_zero_initialised_layers(tiny):
  model, params, x, t = tiny
  flat = traverse_util.flatten_dict(params, sep='/')
  zero = [k for k, v in flat.items() if k.endswith('kernel') and not np.any(np.asarray(v))]
  assert 'out_conv/kernel' in zero
  assert 'input_blocks_1_0/out_conv/kernel' in zero and 'middle_block_1/proj_out/kernel' in zero
  assert len(zero) == sum(k.endswith(('out_conv/kernel', 'proj_out/kernel')) for k in flat)
  out = jax.jit(lambda p: model.apply({'params': p}, x, t))(params)
  np.testing.assert_array_equal(out, 0.0)


def test_class_embedding_null_label(tiny, perturbed):
  model, _, x, t = tiny
  params, apply = perturbed
  none = jax.jit(lambda p: model.apply({'params': p}, x, t))(params)
  null = apply(params, jnp.full((8,), -1))
  np.testing.assert_allclose(null, none, atol=1e-6)
  labels = apply(params, jnp.arange(8) % 5)
  assert float(jnp.abs(labels - none).max(axis=(1, 2, 3)).min()) > 1e-3
  # Mixed batch: the null rows equal the unconditional output, the others their label's.
  mixed = apply(params, jnp.array([-1, 1, -1, 3, -1, 0, 2, -1]))
  np.testing.assert_allclose(mixed[0], none[0], atol=1e-6)
  np.testing.assert_allclose(mixed[3], labels[3], atol=1e-6)
  with pytest.raises(UserError, match='unconditional'):
    jax.eval_shape(UNet(**dict(TINY, num_classes=None)).init, jax.random.PRNGKey(0), x, t, t)


def test_bfloat16_compute_float32_params(tiny, perturbed):
  _, _, x, t = tiny
  params, apply = perturbed
  bf16 = UNet(**dict(TINY, dtype='bfloat16'))
  fresh = jax.eval_shape(bf16.init, jax.random.PRNGKey(1), x, t)['params']
  assert {p.dtype for p in jax.tree_util.tree_leaves(fresh)} == {jnp.dtype(jnp.float32)}
  ref = apply(params, jnp.arange(8) % 5)
  out = jax.jit(lambda p: bf16.apply({'params': p}, x, t, jnp.arange(8) % 5))(params)
  assert out.dtype == jnp.float32
  err = float(jnp.abs(out - ref).max() / jnp.abs(ref).max())
  assert 1e-5 < err < 0.05, err


def test_remat_same_values_and_gradients():
  # One level (no resampling) keeps the two backward compilations small.
  config = dict(TINY, channel_mult=(1,), attention_resolutions=(8,))
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
  t, y = jnp.array([3, 900]), jnp.array([1, -1])
  model, remat = UNet(**config), UNet(**dict(config, remat=True))
  params = _perturbed(jax.jit(model.init)(jax.random.PRNGKey(1), x, t, y)['params'],
                      jax.random.PRNGKey(4))

  def loss(m, p):
    return jnp.mean(m.apply({'params': p}, x, t, y) ** 2)

  v0, g0 = jax.jit(jax.value_and_grad(lambda p: loss(model, p)))(params)
  v1, g1 = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
  assert float(v0) > 1e-3
  assert float(v0) == pytest.approx(float(v1), rel=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_dropout_only_in_training(tiny, perturbed):
  _, _, x, t = tiny
  params, apply = perturbed
  model = UNet(**dict(TINY, dropout=0.3))
  y = jnp.arange(8) % 5

  @functools.partial(jax.jit, static_argnums=2)
  def run(p, key, train):
    return model.apply({'params': p}, x, t, y, train=train, rngs={'dropout': key})

  evald = run(params, jax.random.PRNGKey(6), False)
  np.testing.assert_allclose(evald, apply(params, y), atol=1e-6)
  train = run(params, jax.random.PRNGKey(6), True)
  assert float(jnp.abs(train - evald).max()) > 1e-3
  np.testing.assert_array_equal(train, run(params, jax.random.PRNGKey(6), True))
  assert float(jnp.abs(train - run(params, jax.random.PRNGKey(7), True)).max()) > 1e-3


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
    with pytest.raises(ConfigError, match=f'model.{field}'):
      unet_from_config(config)
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
