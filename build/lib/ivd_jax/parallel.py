"""Devices: multi-host initialisation, the mesh, and the one rule table that shards every array.

The mesh has two axes, ('data', 'fsdp'). Batches are split over both axes (every device holds a
different slice of the global batch). Parameters and optimizer state are split over 'fsdp' along
their largest dimension that 'fsdp' divides, and replicated when no dimension qualifies (or the
array is too small to be worth splitting). With fsdp = 1 this is plain data parallelism.
"""
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ivd_jax import errors

MESH_AXES = ('data', 'fsdp')
# The batch axis of every input array is split over both mesh axes.
BATCH_SPEC = P(MESH_AXES)
# Arrays with fewer elements than this stay replicated: splitting biases and norm scales saves
# nothing and costs a collective each.
MIN_SHARDED_SIZE = 2**14


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, int]:
  """Turns config.mesh.shape (one entry may be -1: "the rest") into concrete sizes.

  Raises:
    ConfigError: when the shape does not match the number of devices.
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) != 2:
    raise errors.ConfigError('mesh.shape', f'{shape} has {len(shape)} entries',
                             "give two sizes for the axes ('data', 'fsdp'), e.g. (-1, 1)")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise errors.ConfigError('mesh.shape', f'{shape} is not a valid mesh shape',
                             'use positive sizes, at most one of them -1 (all remaining devices)')
  if -1 in shape:
    known = int(np.prod([s for s in shape if s != -1]))
    if num_devices % known:
      raise errors.ConfigError(
          'mesh.shape', f'{shape} cannot cover {num_devices} devices',
          f'make the fixed axis size divide the device count {num_devices}')
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if int(np.prod(shape)) != num_devices:
    raise errors.ConfigError(
        'mesh.shape', f'{shape} has {int(np.prod(shape))} devices but {num_devices} are present',
        f'use a shape whose product is {num_devices}, e.g. ({num_devices}, 1) or (-1, 1)')
  return shape


def make_mesh(mesh_config: Any, devices: Optional[Sequence[jax.Device]] = None) -> jax.sharding.Mesh:
  """Builds the ('data', 'fsdp') mesh from config.mesh (field `shape`).

  Args:
    mesh_config: config.mesh; `shape` is (data, fsdp), one entry may be -1.
    devices: defaults to all devices (all processes).

  Returns:
    A mesh with explicit Auto axis types, so `in_shardings` style jit works on every JAX version.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(mesh_config.shape, len(devices))
  axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  if devices == list(jax.devices()):
    # jax.make_mesh orders devices for the physical topology (ICI rings on TPU).
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types)
  return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  """How many ways the global batch is split."""
  return int(np.prod([mesh.shape[a] for a in MESH_AXES]))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Sharding of [B, ...] input arrays: batch split over ('data', 'fsdp')."""
  return NamedSharding(mesh, BATCH_SPEC)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape: Sequence[int], fsdp_size: int, min_size: int = MIN_SHARDED_SIZE) -> P:
  """The rule: shard the largest dimension divisible by fsdp_size over 'fsdp', else replicate.

  Ties go to the last such dimension (output channels of convolutions and dense kernels), which
  keeps the sharded dimension contiguous per device. Arrays under min_size elements stay
  replicated.
  """
  if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  best = None
  for i, d in enumerate(shape):
    if d % fsdp_size == 0 and (best is None or d >= shape[best]):
      best = i
  if best is None:
    return P()
  spec = [None] * len(shape)
  spec[best] = 'fsdp'
  return P(*spec)


def tree_shardings(mesh: jax.sharding.Mesh, tree: Any, min_size: int = MIN_SHARDED_SIZE) -> Any:
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) by the rule table."""
  fsdp = mesh.shape['fsdp']

  def one(x):
    return NamedSharding(mesh, param_spec(np.shape(x), fsdp, min_size))

  return jax.tree.map(one, tree)


# ---------------------------------------------------------------------------------------------
# Multi-host initialisation: must run before anything queries jax devices.
# Three ways a run becomes multi-process, checked in this order:
# 1. config.distributed.coordinator_address (+ num_processes, process_id): explicit coordinates,
#    e.g. a 2-process run on localhost or a cluster without a scheduler JAX knows.
# 2. The platform provides them: a Cloud TPU pod slice (several TPU worker hostnames) or a SLURM
#    job step with several tasks (srun); jax.distributed.initialize() reads them itself.
# 3. config.distributed.enabled=True: call initialize() with no arguments and let JAX detect the
#    cluster (e.g. other environments JAX supports).
# Single-host runs skip initialisation entirely.
# ---------------------------------------------------------------------------------------------
def _platform_is_multiprocess() -> bool:
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  if len([h for h in hosts.split(',') if h.strip()]) > 1:
    return True
  # SLURM_STEP_ID is set only inside an srun job step, where every task is one JAX process.
  if 'SLURM_STEP_ID' in os.environ and int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    return True
  return False


def maybe_initialize(config: Any) -> bool:
  """Calls jax.distributed.initialize() when configured or when the platform provides it.

  Args:
    config: the run's ConfigDict; its optional `distributed` section has coordinator_address,
      num_processes, process_id, local_device_ids, cpu_collectives ('gloo' for multi-process CPU
      runs) and enabled.

  Returns:
    True when this process is part of a multi-process run.
  """
  dist = config.get('distributed') or {}
  explicit = bool(dist.get('coordinator_address'))
  if not (explicit or dist.get('enabled', False) or _platform_is_multiprocess()):
    return False
  if jax.distributed.is_initialized():
    return True
  kwargs = {}
  if explicit:
    kwargs = dict(coordinator_address=dist['coordinator_address'],
                  num_processes=int(dist['num_processes']), process_id=int(dist['process_id']))
    if dist.get('local_device_ids'):
      kwargs['local_device_ids'] = [int(i) for i in dist['local_device_ids']]
  if dist.get('cpu_collectives'):
    jax.config.update('jax_cpu_collectives_implementation', dist['cpu_collectives'])
  jax.distributed.initialize(**kwargs)
  logging.info('jax.distributed: process %d of %d, %d local / %d global devices',
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True
