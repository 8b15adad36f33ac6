"""Sharding rule table, mesh construction, and what the rules make XLA do with a train step."""
import jax
import jax.numpy as jnp
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from ivd_jax import errors
from ivd_jax import parallel as shard_lib
from ivd_jax import roles
from ivd_jax.configs import common
from ivd_jax.training import state as state_lib
from ivd_jax.training import step as step_lib


@pytest.mark.parametrize('shape,fsdp,spec', [
    ((3, 3, 64, 128), 2, P(None, None, None, 'fsdp')),  # largest divisible dim: out channels
    ((256, 128), 4, P('fsdp', None)),
    ((3, 3, 128, 128), 4, P(None, None, None, 'fsdp')),  # tie -> the last dimension
    ((3, 3, 100, 129), 4, P(None, None, 'fsdp', None)),  # 129 does not divide, 100 does
    ((3, 3, 5, 2047), 4, P()),  # nothing divisible: replicated
    ((64,), 2, P()),  # small: replicated
    ((3, 3, 64, 128), 1, P()),  # no fsdp axis
])
def test_param_spec_rule(shape, fsdp, spec):
  assert shard_lib.param_spec(shape, fsdp) == spec


def test_mesh_shapes():
  assert shard_lib.resolve_mesh_shape((-1, 1), 8) == (8, 1)
  assert shard_lib.resolve_mesh_shape((2, -1), 8) == (2, 4)
  mesh = shard_lib.make_mesh(ml_collections.ConfigDict({'shape': (4, 2)}))
  assert dict(mesh.shape) == {'data': 4, 'fsdp': 2}
  assert shard_lib.data_parallel_size(mesh) == 8
  assert shard_lib.batch_sharding(mesh).spec == P(('data', 'fsdp'))
  with pytest.raises(errors.ConfigError, match=r'mesh.shape.*product is 8'):
    shard_lib.resolve_mesh_shape((3, 1), 8)
  with pytest.raises(errors.ConfigError, match='mesh.shape'):
    shard_lib.resolve_mesh_shape((-1, 3), 8)
  with pytest.raises(errors.ConfigError, match='mesh.shape'):
    shard_lib.resolve_mesh_shape((-1, -1), 8)
  assert jax.device_count() == 8


def _compiled_step(fsdp: int):
  """The train step of a 2-level UNet at 32 px, compiled for 8 devices as training runs it."""
  config = common.train_config('tiny')
  config.model.update(model_channels=64, channel_mult=(1, 2), num_res_blocks=1, image_size=32,
                      attention_resolutions=(16,), num_head_channels=64)
  config.data.resolution = 32
  config.train.batch_size = 16
  config.mesh.shape = (8 // fsdp, fsdp)
  mesh = shard_lib.make_mesh(config.mesh, devices=jax.devices()[:8])
  with jax.set_mesh(mesh):
    model = roles.role_of(config).network(config.model)
    tx = state_lib.make_optimizer(config.optim)
    abstract, shardings = step_lib.state_shapes(model, tx, config, mesh)
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         abstract, shardings)
    bs = shard_lib.batch_sharding(mesh)
    batch = {'rgbd': jax.ShapeDtypeStruct((16, 32, 32, 4), jnp.float32, sharding=bs),
             'label': jax.ShapeDtypeStruct((16,), jnp.int32, sharding=bs)}
    step = step_lib.jit_train_step(model, tx, config, mesh, shardings)
    return step.lower(state, batch).compile()


def test_sharded_parameters_keep_activations_split_over_the_batch():
  """With fsdp > 1 the parameters are gathered, never the batch (activation_rules).

  Without the rules XLA:CPU gathered whole-batch feature maps (f32[16,32,32,128]) to compute
  parameter shards' gradients, and the step needed more temporary memory than at fsdp 1.
  """
  assert shard_lib.activation_rules(shard_lib.make_mesh(
      ml_collections.ConfigDict({'shape': (8, 1)}))) == ()
  plain, fsdp = _compiled_step(1), _compiled_step(8)
  gathered = [line for line in fsdp.as_text().splitlines() if ' all-gather(' in line]
  assert gathered  # the parameter shards
  # A gathered array with the global batch leading and spatial dimensions is an activation.
  activations = [line for line in gathered if '[16,32,32,' in line or '[16,16,16,' in line]
  assert not activations, activations[:2]
  assert (fsdp.memory_analysis().temp_size_in_bytes <
          plain.memory_analysis().temp_size_in_bytes)
