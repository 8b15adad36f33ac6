"""Multi-host initialisation: must run before anything queries jax devices."""
import os

import jax
from absl import logging


def maybe_initialize(config) -> None:
  """Calls jax.distributed.initialize() when configured or when the platform provides it.

  config.distributed (optional) may carry coordinator_address, num_processes, process_id;
  otherwise Cloud TPU pods and SLURM jobs are detected from their environment, where JAX finds
  the coordinates itself.
  """
  dist = config.get('distributed') or {}
  explicit = bool(dist.get('coordinator_address'))
  platform = any(k in os.environ for k in ('TPU_WORKER_HOSTNAMES', 'SLURM_JOB_ID')) and int(
      os.environ.get('SLURM_NTASKS', os.environ.get('TPU_WORKER_COUNT', '2'))) > 1
  if not (explicit or platform or dist.get('enabled', False)):
    return
  kwargs = {}
  if explicit:
    kwargs = dict(coordinator_address=dist['coordinator_address'],
                  num_processes=int(dist['num_processes']), process_id=int(dist['process_id']))
  if dist.get('cpu_collectives'):
    jax.config.update('jax_cpu_collectives_implementation', dist['cpu_collectives'])
  jax.distributed.initialize(**kwargs)
  logging.info('jax.distributed: process %d of %d, %d global devices', jax.process_index(),
               jax.process_count(), jax.device_count())
