"""Multi-host initialisation: must run before anything queries jax devices.

Three ways a run becomes multi-process, checked in this order:
1. config.distributed.coordinator_address (+ num_processes, process_id): explicit coordinates,
   e.g. a 2-process run on localhost or a cluster without a scheduler JAX knows.
2. The platform provides them: a Cloud TPU pod slice (several TPU worker hostnames) or a SLURM
   job step with several tasks (srun); jax.distributed.initialize() reads them itself.
3. config.distributed.enabled=True: call initialize() with no arguments and let JAX detect the
   cluster (e.g. other environments JAX supports).
Single-host runs skip initialisation entirely.
"""
import os
from typing import Any

import jax
from absl import logging


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
