"""Sharding rule table and mesh construction."""
import jax
import ml_collections
import pytest
from jax.sharding import PartitionSpec as P

from ivd_jax import errors
from ivd_jax import parallel as shard_lib


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
