"""Sampling cost: seconds per G_c denoising step, per further view and per 27-view set.

  python benchmarks/sample.py [--preset=imagenet128] [--batch=1] [--steps=2] [--resolution=128]

Builds the reference ImageNet 128 network shape (docs/method.md §6: model_channels 256,
channel_mult 1,1,2,3,4, 2 res blocks, attention at 32/16/8, 1000 classes; G_c with 10 input
channels) with random weights and times the sampler's compiled step of
ivd_jax.sampling.sampler.ViewSampler: aggregation of a 27-slot view buffer into the new camera
plus `--steps` DDIM steps of G_c with classifier-free guidance. A full view set runs more steps
than a CPU allows, so the per-step and per-aggregation times are measured and the 27-view set is
extrapolated (and labelled so):
  view 0 = 1000 DDPM steps of G_u (same network cost as a G_c step),
  views 1..26 = aggregation + 50 DDIM steps of G_c each.
`--fit_batches=1,2,4,...` instead compiles the step for each batch and reads XLA's memory analysis
(arguments + outputs + temporaries, donated buffers counted once) against the device's memory
(accelerators: memory_stats()['bytes_limit']; CPU: physical RAM), reporting the largest batch that
fits without running it.
Prints one JSON line per case. Never asserts a time.
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ivd_jax.configs import common
from ivd_jax import parallel
from ivd_jax import roles
from ivd_jax.diffusion import schedule as schedule_lib
from ivd_jax.geometry import cameras
from ivd_jax.sampling import networks
from ivd_jax.sampling import sampler as sampler_lib
from ivd_jax.sampling import settings as settings_lib
from ivd_jax.sampling import viewsets
# pylint: enable=g-import-not-at-top,wrong-import-position

NUM_VIEWS = 27
DDPM_STEPS = 1000
DDIM_STEPS = 50


def _timed(fn, *args):
  """(output, wall seconds, process CPU seconds); CPU time is robust to other users' load."""
  t0, c0 = time.perf_counter(), time.process_time()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - t0, time.process_time() - c0


def _call_args(sampler, b: int, res: int) -> tuple:
  """Arguments of the sampler step generating view 26 of a 3x9 set for b instances."""
  poses = cameras.viewset_poses('3x9')
  views = jnp.broadcast_to(cameras.views_from_poses(poses), (b, NUM_VIEWS, 4, 4))
  rng = np.random.default_rng(0)
  buffer = jnp.asarray(rng.uniform(0.2, 0.8, (b, NUM_VIEWS, res, res, 4)), jnp.float32)
  keys = viewsets.instance_keys(0, np.arange(b))
  labels = jnp.zeros((b,), jnp.int32)
  n = NUM_VIEWS - 1
  valid = jnp.arange(NUM_VIEWS) < n
  return (sampler.cond_params, buffer, views, valid, views[:, n], jnp.int32(n), keys, labels)


def _device_memory() -> int:
  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit'])
  return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def _fit(sampler, res: int, batches: list) -> None:
  """Peak memory of the compiled step per batch (XLA's analysis) and the largest that fits."""
  limit = _device_memory()
  fits = 0
  for b in batches:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            _call_args(sampler, b, res))
    t0 = time.perf_counter()
    lowered = sampler._next_view.lower(*abstract)  # pylint: disable=protected-access
    mem = lowered.compile().memory_analysis()
    compile_s = time.perf_counter() - t0
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
    fits = b if peak <= limit else fits
    print(json.dumps(dict(case='fit', batch=b, peak_gib=round(peak / 2**30, 2),
                          temp_gib=round(mem.temp_size_in_bytes / 2**30, 2),
                          device_memory_gib=round(limit / 2**30, 1), fits=peak <= limit,
                          compile_s=round(compile_s, 1), resolution=res,
                          device=jax.devices()[0].device_kind, jax=jax.__version__)), flush=True)
  print(json.dumps(dict(case='largest_batch_that_fits', batch=fits,
                        device_memory_gib=round(limit / 2**30, 1))))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', default='imagenet128', choices=common.PRESETS)
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--steps', type=int, default=2, help='DDIM steps actually run per call')
  parser.add_argument('--resolution', type=int, default=0, help='0 = the preset resolution')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--fit_batches', default='',
                      help='e.g. 1,2,4,8,16: compile only and report the largest batch that fits')
  args = parser.parse_args()

  train_cfg = common.train_config(args.preset, role=roles.COND.name)
  model_cfg = train_cfg.model
  if args.resolution:
    model_cfg.image_size = args.resolution
  model_cfg.dtype = args.dtype
  model = roles.COND.network(model_cfg)
  res = model.image_size
  t0 = time.perf_counter()
  params = jax.jit(model.init)(jax.random.PRNGKey(0),
                               jnp.zeros((1, res, res, roles.COND.in_channels)),
                               jnp.zeros((1,), jnp.int32),
                               jnp.zeros((1,), jnp.int32) if model.num_classes else None)['params']
  params = jax.block_until_ready(params)
  init_s = time.perf_counter() - t0
  num_params = int(sum(x.size for x in jax.tree.leaves(params)))

  sample = common.sample_section()
  sample.guidance = sample.guidance if model.num_classes else 0.0
  sample.sampler_uncond, sample.steps_uncond, sample.steps_cond = 'ddim', args.steps, args.steps
  settings = settings_lib.SampleSettings.from_config(sample)
  mesh = parallel.make_mesh(ml_collections.ConfigDict({'shape': (1, 1)}),
                            devices=jax.devices()[:1])
  sampler = sampler_lib.ViewSampler(None, networks.Network(roles.COND, model, params), settings,
                                    mesh=mesh,
                                    schedule=schedule_lib.schedule_from_config(train_cfg.diffusion))

  if args.fit_batches:
    _fit(sampler, res, [int(v) for v in args.fit_batches.split(',')])
    return
  b = args.batch
  call_args = _call_args(sampler, b, res)
  buffer, views, valid = call_args[1], call_args[2], call_args[3]
  n = NUM_VIEWS - 1

  # Compile the sampler step (aggregation + G_c DDIM) and the aggregation alone.
  t0 = time.perf_counter()
  step = sampler._next_view.lower(*call_args).compile()  # pylint: disable=protected-access
  compile_step_s = time.perf_counter() - t0
  agg_fn = jax.jit(sampler.aggregate)
  t0 = time.perf_counter()
  agg = agg_fn.lower(buffer, views, valid, views[:, n]).compile()
  compile_agg_s = time.perf_counter() - t0

  agg_times, step_times = [], []
  for _ in range(args.repeats):
    agg_times.append(_timed(agg, buffer, views, valid, views[:, n])[1:])
    # The step donates its buffer argument: give it a fresh copy each time.
    fresh = (call_args[0], jnp.array(buffer)) + call_args[2:]
    step_times.append(_timed(step, *fresh)[1:])
  (agg_s, agg_cpu), (call_s, call_cpu) = min(agg_times), min(step_times)
  gc_step_s = max(call_s - agg_s, 0.0) / args.steps
  gc_step_cpu = max(call_cpu - agg_cpu, 0.0) / args.steps
  view_s = agg_s + DDIM_STEPS * gc_step_s
  set_s = DDPM_STEPS * gc_step_s + (NUM_VIEWS - 1) * view_s
  view_cpu = agg_cpu + DDIM_STEPS * gc_step_cpu
  set_cpu = DDPM_STEPS * gc_step_cpu + (NUM_VIEWS - 1) * view_cpu
  run_info = dict(preset=args.preset, resolution=res, batch=b, dtype=args.dtype,
                  params=num_params, backend=jax.default_backend(),
                  device=jax.devices()[0].device_kind, cpu_count=os.cpu_count(),
                  jax=jax.__version__, python=platform.python_version())
  print(json.dumps(dict(case='compile', init_s=round(init_s, 2),
                        next_view_compile_s=round(compile_step_s, 2),
                        aggregate_compile_s=round(compile_agg_s, 2), **run_info)))
  print(json.dumps(dict(case='measured', steps_per_call=args.steps,
                        next_view_call_s=round(call_s, 3), aggregate_27_slots_s=round(agg_s, 3),
                        gc_step_s=round(gc_step_s, 3), gc_step_per_instance_s=round(
                            gc_step_s / b, 3), next_view_call_cpu_s=round(call_cpu, 3),
                        aggregate_27_slots_cpu_s=round(agg_cpu, 3),
                        gc_step_cpu_s=round(gc_step_cpu, 3),
                        load_average_1min=round(os.getloadavg()[0], 2), **run_info)))
  print(json.dumps(dict(case='extrapolated_27_view_set', view0_ddpm_steps=DDPM_STEPS,
                        ddim_steps_per_view=DDIM_STEPS, seconds_per_further_view=round(view_s, 2),
                        seconds_per_view_set=round(set_s, 1),
                        seconds_per_view_set_per_instance=round(set_s / b, 1),
                        cpu_seconds_per_further_view=round(view_cpu, 2),
                        cpu_seconds_per_view_set=round(set_cpu, 1),
                        note='extrapolated from the measured per-step and aggregation times',
                        **run_info)))


if __name__ == '__main__':
  main()
