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
  try:
    shape = tuple(int(s) for s in shape)
  except (TypeError, ValueError):
    raise errors.ConfigError('mesh.shape', f'{shape!r} is not a tuple of integers',
                             "give two sizes for the axes ('data', 'fsdp'), e.g. "
                             "--config.mesh.shape='(-1, 1)'") from None
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


def activation_rules(mesh: jax.sharding.Mesh) -> tuple:
  """Flax logical-axis rules for the activations the networks mark ('batch': every block's input
  and output), applied while a train step is traced.

  With sharded parameters (fsdp > 1) the batch stays split over both mesh axes inside the
  network, and so do the cotangents: XLA then gathers each parameter shard for the forward and
  reduce-scatters its gradient. Left to itself it may instead gather the whole batch of an fsdp
  group to compute one parameter shard's gradient (TPU v5e-64, fsdp 8, 2 examples per chip:
  15.4 GB of temporaries, 3.7x those of fsdp 1). Plain data parallelism needs no rule.
  """
  return (('batch', MESH_AXES),) if mesh.shape['fsdp'] > 1 else ()


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
# detect_cluster() decides, from the config and the environment only (no network, no devices),
# whether this process is one of several; the first rule that matches wins:
#   'config'    config.distributed.coordinator_address (+ num_processes, process_id): explicit
#               coordinates (launch/local.sh, a cluster without a scheduler JAX knows).
#   'env'       JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID in the environment:
#               the same, set by a launcher (the simulated pod of tests/test_launch.py).
#   (IVD_JAX_DISTRIBUTED=0 stops here: the rules below never initialise.)
#   'requested' config.distributed.enabled=True or IVD_JAX_DISTRIBUTED=1 (launch/tpu_pod.sh sets
#               it on every worker): JAX finds the cluster itself. On a Cloud TPU VM slice its
#               GceTpuCluster reads the workers from the metadata server, because an ssh shell on
#               a TPU VM carries no TPU_* variables that would tell the slice apart from one host.
#   'gke-tpu'   TPU_PROCESS_ADDRESSES / TPU_WORKER_HOSTNAMES name several hosts (GKE TPU pods).
#   'cloud-tpu' TPU topology variables of a multi-host slice: TPU_PROCESS_BOUNDS or
#               TPU_HOST_BOUNDS with more than one process, MEGASCALE_NUM_SLICES > 1 (multislice),
#               or TPU_ACCELERATOR_TYPE above 8 (v4-16, v5litepod-16, ...: every type up to
#               -8 is one host, every larger one is several).
#   'slurm'     an srun job step with several tasks: the variables JAX's SlurmCluster reads
#               (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID)
#               plus SLURM_STEP_ID, which only a job step has (not the sbatch batch shell).
# Anything else is a single-process run and skips initialisation.
# ---------------------------------------------------------------------------------------------
ENV_DISTRIBUTED = 'IVD_JAX_DISTRIBUTED'
_SLURM_VARS = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
               'SLURM_LOCALID', 'SLURM_STEP_ID')


def _int(value: Any, default: int = 0) -> int:
  try:
    return int(str(value).strip().strip("'\""))
  except ValueError:
    return default


def _product(bounds: str) -> int:
  """'2,2,8' -> 32; an empty or malformed value counts as one."""
  sizes = [_int(b, 1) for b in bounds.split(',') if b.strip()]
  return int(np.prod(sizes)) if sizes else 1


def _host_list(value: str) -> list[str]:
  return [h for h in value.split(',') if h.strip()]


def _tpu_multihost(env: Any) -> Optional[str]:
  """'gke-tpu', 'cloud-tpu' or None from TPU variables of the environment."""
  hosts = env.get('TPU_PROCESS_ADDRESSES') or env.get('TPU_WORKER_HOSTNAMES') or ''
  if len(_host_list(hosts)) > 1:
    return 'gke-tpu'
  if (_product(env.get('TPU_PROCESS_BOUNDS', '')) > 1 or
      _product(env.get('TPU_HOST_BOUNDS', '')) > 1 or
      _int(env.get('MEGASCALE_NUM_SLICES', 1), 1) > 1):
    return 'cloud-tpu'
  accelerator = env.get('TPU_ACCELERATOR_TYPE', '')
  if '-' in accelerator and _int(accelerator.rsplit('-', 1)[1]) > 8:
    return 'cloud-tpu'
  return None


def detect_cluster(dist: Any, env: Any = None) -> tuple[Optional[str], dict[str, Any]]:
  """How this process joins a multi-process run: (rule, jax.distributed.initialize kwargs).

  Args:
    dist: config.distributed (or {}); see the rules above.
    env: the environment, default os.environ.

  Returns:
    (None, {}) for a single-process run; otherwise the rule's name and the keyword arguments
    (empty where JAX detects the coordinates itself).
  """
  env = os.environ if env is None else env
  dist = dist or {}
  if dist.get('coordinator_address'):
    kwargs = dict(coordinator_address=dist['coordinator_address'],
                  num_processes=int(dist['num_processes']), process_id=int(dist['process_id']))
    if dist.get('local_device_ids'):
      kwargs['local_device_ids'] = [int(i) for i in dist['local_device_ids']]
    return 'config', kwargs
  if env.get('JAX_COORDINATOR_ADDRESS') and env.get('JAX_NUM_PROCESSES'):
    if _int(env['JAX_NUM_PROCESSES'], 1) > 1:
      return 'env', dict(coordinator_address=env['JAX_COORDINATOR_ADDRESS'],
                         num_processes=_int(env['JAX_NUM_PROCESSES']),
                         process_id=_int(env.get('JAX_PROCESS_ID', 0)))
  switch = env.get(ENV_DISTRIBUTED, '').strip().lower()
  if switch in ('0', 'false', 'no', 'off'):
    return None, {}
  if dist.get('enabled', False) or switch in ('1', 'true', 'yes', 'on'):
    return 'requested', {}
  tpu = _tpu_multihost(env)
  if tpu:
    return tpu, {}
  if all(v in env for v in _SLURM_VARS) and _int(env['SLURM_NTASKS'], 1) > 1:
    return 'slurm', {}
  return None, {}


def maybe_initialize(config: Any) -> bool:
  """Calls jax.distributed.initialize() when configured or when the platform provides it.

  Args:
    config: the run's ConfigDict; its optional `distributed` section has coordinator_address,
      num_processes, process_id, local_device_ids, cpu_collectives ('gloo' for multi-process CPU
      runs) and enabled. The environment is read as detect_cluster() describes.

  Returns:
    True when this process is part of a multi-process run.
  """
  dist = config.get('distributed') or {}
  rule, kwargs = detect_cluster(dist)
  if rule is None:
    return False
  if jax.distributed.is_initialized():
    return True
  if dist.get('cpu_collectives'):
    jax.config.update('jax_cpu_collectives_implementation', dist['cpu_collectives'])
  jax.distributed.initialize(**kwargs)
  logging.info('jax.distributed (%s): process %d of %d, %d local / %d global devices', rule,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True
