r"""Fit plans: per-device memory of the imagenet128 train step on real targets, without them.

  python benchmarks/fit.py                                   # the four targets, G_u
  python benchmarks/fit.py --records=benchmarks/fit_records.jsonl --markdown   # the table, reused
  python benchmarks/fit.py --targets=v5e-64 --fsdp=1,8,64 --role=cond
  python benchmarks/fit.py --targets=a100-40gb-x8 --fsdp=8 --remat=dots --records=fit.jsonl
  python benchmarks/fit.py --size=tiny --targets=cpu-8 --fsdp=1,2,4,8   # seconds (the test)

The train step is training/step.py's (jit_train_step: the state sharded by parallel.py's rule
table over ('data', 'fsdp'), the batch over both axes, the state donated), lowered with abstract
inputs (step.state_shapes: nothing is allocated) and compiled for the target:
  v4-32, v5e-64   TPU slices described by jax.experimental.topologies (needs the libtpu wheel:
                  `pip install -e .[tpu]`): the TPU compiler's own memory analysis, and a
                  program that does not fit fails to compile (reported as not fitting);
  h100-80gb-x8, a100-40gb-x8   ESTIMATES: the same step compiled by XLA:CPU for 8 simulated
                  devices (one compilation serves both; only the memory differs). XLA:GPU
                  schedules and fuses differently, so treat these bytes as +-20 %;
  cpu-8           8 simulated CPU devices of 1 GiB (tests, tiny shapes).
Per device and fsdp size it prints the parameter bytes (params + EMA), optimizer bytes (AdamW
moments), the input batch, activations and temporaries, and the largest batch per device that
fits `--usable` of the device memory. Activations are what grows with the batch: XLA's temporary
bytes are compiled at two batches per device (the recipe's, global batch / devices, and twice
that) for the first fsdp size of a target and extrapolated linearly, temp(b) = temporaries +
b * activations per example; the other fsdp sizes compile the recipe batch only and take the
activations per example from the first (they do not depend on how parameters are sharded;
`--two_points` compiles both batches for every size). Compilations at the predicted largest
batch check the extrapolation (`check_*` fields; `--max_checks`). One JSON line per compilation
and per (target, fsdp); `--markdown` adds a table. A 421 M step takes minutes to compile on a
small host (8 minutes for v5e-64 on 2 quiet cores): `--records=FILE` keeps every compilation's
result in a JSON-lines file, so a rerun, or a run cut short, only compiles what is new. TPU
programs compile at backend optimisation level 0: the buffers, hence the bytes, are those of the
default level (checked on a quarter-width network) and it compiles 10 % faster.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from typing import Any, Optional

# The GPU estimates need 8 CPU devices: set before jax is imported.
if '--xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # TPU targets are compile-only devices
# Compiling for a described slice uses no TPU: libtpu's one-process-per-host lock is not needed.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import accelerator
from ivd_jax import parallel
from ivd_jax import roles
from ivd_jax.configs import common
from ivd_jax.training import state as state_lib
from ivd_jax.training import step as step_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  memory_gib: float  # per device
  kind: str  # 'tpu' (compiled for the slice) | 'cpu-estimate' (simulated devices)
  topology: Optional[dict] = None  # jax.experimental.topologies.get_topology_desc arguments
  devices: int = 8


# TPU slices as maxtext's accelerator table describes them (topology, chip config, host bounds).
TARGETS = {
    'h100-80gb-x8': Target('8 x H100 80 GB (estimate: XLA:CPU, 8 simulated devices)', 80.0,
                           'cpu-estimate'),
    'a100-40gb-x8': Target('8 x A100 40 GB (estimate: XLA:CPU, 8 simulated devices)', 40.0,
                           'cpu-estimate'),
    'v4-32': Target('TPU v4-32 (16 chips x 32 GiB)', 32.0, 'tpu', dict(
        topology_name='v4:2x2x4', chip_config_name='megacore', chips_per_host_bounds=(2, 2, 1),
        num_slices=1, wrap=(False, False, False)), 16),
    'v5e-64': Target('TPU v5e-64 (64 chips x 16 GiB)', 16.0, 'tpu', dict(
        topology_name='v5e:8x8', chip_config_name='default', chips_per_host_bounds=(2, 2, 1),
        num_slices=1, wrap=(False, False, False)), 64),
    'cpu-8': Target('8 simulated CPU devices x 1 GiB', 1.0, 'cpu-estimate'),
}
DEFAULT_FSDP = {'h100-80gb-x8': (1, 8), 'a100-40gb-x8': (1, 8), 'v4-32': (1, 16),
                'v5e-64': (1, 8, 64), 'cpu-8': (1, 8)}


def target_devices(target: Target) -> list:
  if target.kind == 'tpu':
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    return list(topologies.get_topology_desc(platform='tpu', **target.topology).devices)
  devices = jax.devices('cpu')
  if len(devices) < target.devices:
    raise SystemExit(f'{len(devices)} CPU devices; run with XLA_FLAGS='
                     f'--xla_force_host_platform_device_count={target.devices}')
  return devices[:target.devices]


def fit_config(size: str, role: str, fsdp: int, num_devices: int,
               remat: str = 'none') -> ml_collections.ConfigDict:
  config = common.train_config('imagenet128', role=role)
  config.model.remat = remat
  if size == 'tiny':
    config.model.update(accelerator.TINY_MODEL)
    config.data.resolution = config.model.image_size
    config.data.num_classes = config.model.num_classes
    config.train.batch_size = 2 * num_devices
    config.mesh.fsdp_min_size = 1024  # its kernels are small: shard them too
  config.mesh.shape = (num_devices // fsdp, fsdp)
  return config


def _per_device_bytes(tree: Any, shardings: Any) -> int:
  return int(sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize
                 for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))))


class Records:
  """Compilation results in a JSON-lines file (none: kept in memory only), by what was compiled."""

  def __init__(self, path: str = ''):
    self.path, self.results = path, {}
    if path and os.path.exists(path):
      with open(path) as f:
        for line in f:
          if line.strip():
            record = json.loads(line)
            self.results[record['key']] = record['result']

  def get(self, key: str) -> Optional[dict]:
    return self.results.get(key)

  def put(self, key: str, result: dict) -> None:
    self.results[key] = result
    if self.path:
      os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
      with open(self.path, 'a') as f:
        f.write(json.dumps(dict(key=key, result=result)) + '\n')


class Plan:
  """One (target, fsdp, model) combination: compiles the step at any batch per device."""

  def __init__(self, config: ml_collections.ConfigDict, devices: list, target: str = '',
               records: Optional[Records] = None):
    self.config = config
    kind = TARGETS[target].kind if target in TARGETS else target
    self.compiler_options = {'xla_backend_optimization_level': 0} if kind == 'tpu' else None
    # With the program's hash, what identifies a compilation (the GPU estimates share theirs).
    self.key_base = dict(target=target if kind == 'tpu' else kind, devices=len(devices),
                         jax=jax.__version__, compiler_options=self.compiler_options)
    self.records = records or Records()
    self.mesh = parallel.make_mesh(config.mesh, devices=devices)
    self.n = len(devices)
    role = roles.role_of(config)
    self.model = role.network(config.model)
    self.tx = state_lib.make_optimizer(config.optim)
    self.abstract, self.shardings = step_lib.state_shapes(self.model, self.tx, config, self.mesh)
    self.state_bytes = dict(
        params=_per_device_bytes(self.abstract.params, self.shardings.params) +
        _per_device_bytes(self.abstract.ema_params, self.shardings.ema_params),
        optimizer=_per_device_bytes(self.abstract.opt_state, self.shardings.opt_state))
    res = config.model.image_size
    self.example_bytes = res * res * 4 * 4 + 4  # rgbd float32 + label

  def compile(self, batch_per_device: int) -> dict:
    """Memory analysis of the step compiled for this batch (or the compiler's refusal)."""
    config = ml_collections.ConfigDict(self.config.to_dict())
    b = batch_per_device * self.n
    config.train.batch_size = b
    res = config.model.image_size
    bs = parallel.batch_sharding(self.mesh)
    batch = {'rgbd': jax.ShapeDtypeStruct((b, res, res, 4), jnp.float32, sharding=bs),
             'label': jax.ShapeDtypeStruct((b,), jnp.int32, sharding=bs)}
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         self.abstract, self.shardings)
    t0 = time.perf_counter()
    with jax.set_mesh(self.mesh):
      step = step_lib.jit_train_step(self.model, self.tx, config, self.mesh, self.shardings)
      lowered = step.lower(state, batch)
    # A record is reused only for the same program (any change to the code or the config makes
    # another) on the same target with the same compiler.
    key = json.dumps(dict(self.key_base, batch_per_device=batch_per_device, program=hashlib.sha256(
        lowered.as_text().encode()).hexdigest()[:16]), sort_keys=True)
    result = self.records.get(key)
    if result is not None:
      return dict(result, recorded=True)
    try:
      compiled = lowered.compile(compiler_options=self.compiler_options)
    except Exception as e:  # pylint: disable=broad-except
      # The TPU compiler refuses a program that does not fit its memory.
      result = dict(batch_per_device=batch_per_device, fits_compiler=False,
                    compile_s=round(time.perf_counter() - t0, 1),
                    error=f'{type(e).__name__}: {str(e)[:300]}')
    else:
      mem = compiled.memory_analysis()
      peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes +
              mem.temp_size_in_bytes)
      result = dict(batch_per_device=batch_per_device,
                    compile_s=round(time.perf_counter() - t0, 1),
                    argument_bytes=int(mem.argument_size_in_bytes),
                    output_bytes=int(mem.output_size_in_bytes),
                    alias_bytes=int(mem.alias_size_in_bytes),
                    temp_bytes=int(mem.temp_size_in_bytes), peak_bytes=int(peak))
    self.records.put(key, result)
    return result


def extrapolate(lo: dict, hi: dict, plan: Plan, usable_bytes: float) -> dict:
  """Linear temp(b) from two compilations -> the breakdown and the largest batch that fits."""
  b1, b2 = lo['batch_per_device'], hi['batch_per_device']
  act = (hi['temp_bytes'] - lo['temp_bytes']) / (b2 - b1)  # per example
  fixed_temp = lo['temp_bytes'] - act * b1
  # Everything but the batch-proportional part: arguments without the batch, outputs not
  # aliased to the donated state, batch-independent temporaries.
  fixed = (lo['argument_bytes'] - b1 * plan.example_bytes + lo['output_bytes'] -
           lo['alias_bytes'] + fixed_temp)
  per_example = act + plan.example_bytes
  largest = int((usable_bytes - fixed) // per_example) if per_example > 0 else 0
  return dict(activation_bytes_per_example=int(act), temporary_bytes=int(fixed_temp),
              fixed_bytes=int(fixed), bytes_per_example=int(per_example),
              largest_batch_per_device=max(largest, 0))


def plan_target(name: str, size: str, role: str, fsdps: tuple, usable: float,
                out: Any, max_checks: int = 3, records: Optional[Records] = None,
                two_points: bool = False, remat: str = 'none') -> list[dict]:
  """Every fsdp size of one target; returns the summary rows (also printed)."""
  target = TARGETS[name]
  devices = target_devices(target)
  usable_bytes = usable * target.memory_gib * GIB
  records = records or Records()  # the GPU estimates share compilations
  rows, slope = [], None
  for fsdp in fsdps:
    config = fit_config(size, role, fsdp, len(devices), remat)
    plan = Plan(config, devices, name, records)
    recipe = max(1, config.train.batch_size // len(devices))
    compiled = []
    for bpd in (recipe, 2 * recipe) if two_points or slope is None else (recipe,):
      compiled.append(plan.compile(bpd))
      print(json.dumps(dict(target=name, fsdp=fsdp, kind='compile', role=role, **compiled[-1])),
            file=out, flush=True)
    lo = compiled[0]
    if len(compiled) == 2:
      hi = compiled[1]
      if 'error' not in lo and 'error' not in hi:
        slope = (hi['peak_bytes'] - lo['peak_bytes']) / (hi['batch_per_device'] - recipe)
    elif 'error' not in lo:  # a point on the line with the first fsdp size's slope
      hi = dict(lo, batch_per_device=2 * recipe, peak_bytes=int(lo['peak_bytes'] + slope * recipe),
                temp_bytes=int(lo['temp_bytes'] + (slope - plan.example_bytes) * recipe),
                argument_bytes=lo['argument_bytes'] + recipe * plan.example_bytes,
                extrapolated=True)
    else:
      hi = lo
    summary = dict(target=name, description=target.name, role=role, size=size, remat=remat,
                   fsdp=fsdp,
                   mesh=list(config.mesh.shape), devices=len(devices),
                   params=state_lib.param_count(plan.abstract.params),
                   memory_gib=target.memory_gib, usable=usable,
                   recipe_global_batch=recipe * len(devices), recipe_batch_per_device=recipe,
                   params_bytes=plan.state_bytes['params'],
                   optimizer_bytes=plan.state_bytes['optimizer'],
                   input_bytes=recipe * plan.example_bytes)
    if 'error' in lo or 'error' in hi:
      summary.update(fits_recipe=False, error=(lo.get('error') or hi.get('error')))
    else:
      ext = extrapolate(lo, hi, plan, usable_bytes)
      summary.update(activation_bytes=int(ext['activation_bytes_per_example'] * recipe),
                     peak_bytes=lo['peak_bytes'],
                     fits_recipe=lo['peak_bytes'] <= usable_bytes, **ext)
      # The largest batch may be one of the batches compiled: then it is verified already.
      for point in compiled:
        if (point['batch_per_device'] == ext['largest_batch_per_device'] and
            point['peak_bytes'] <= usable_bytes):
          summary.update(largest_verified=True, check_batch_per_device=point['batch_per_device'],
                         check_peak_bytes=point['peak_bytes'], check_fits=True,
                         check_predicted_peak_bytes=point['peak_bytes'])
    summary['slope_from_first_fsdp'] = len(compiled) == 1
    summary['plan'], summary['points'] = plan, [lo, hi]
    rows.append(summary)
  if max_checks:
    _check_largest(rows, name, usable_bytes, out, max_checks)
  for row in rows:
    row.pop('plan'), row.pop('points')
    print(json.dumps(dict(kind='plan', **row)), file=out, flush=True)
  return rows


def _check_largest(rows: list, name: str, usable_bytes: float, out: Any,
                   max_checks: int = 3) -> None:
  """Compiles the largest predicted batch of the target (over its fsdp sizes) to check it.

  Memory is close to, not exactly, linear in the batch; so a check that does not fit, or that
  misses the prediction by more than 5 %, moves the line to the two largest batches compiled
  and predicts again (a compilation the compiler refuses gives no bytes: bisect instead), up to
  `max_checks` times. The row then holds the largest batch verified to fit.
  """
  ok = [r for r in rows if r.get('largest_batch_per_device')]
  if not ok:
    return
  best = max(ok, key=lambda r: (r['largest_batch_per_device'], -r['fsdp']))
  points = {p['batch_per_device']: p['peak_bytes'] for p in best['points']}
  fitting = max(b for b, m in points.items() if m <= usable_bytes) if any(
      m <= usable_bytes for m in points.values()) else 0
  refused = None
  b = best['largest_batch_per_device']
  checks = []
  for _ in range(max_checks):
    (b1, m1), (b2, m2) = sorted(points.items())[-2:]
    predicted = m1 + (m2 - m1) / (b2 - b1) * (b - b1)
    got = best['plan'].compile(b)
    print(json.dumps(dict(target=name, fsdp=best['fsdp'], kind='check', **got)), file=out,
          flush=True)
    peak = got.get('peak_bytes')
    checks.append(dict(batch_per_device=b, predicted_peak_bytes=int(predicted),
                       peak_bytes=peak))
    if peak is None:  # refused by the compiler: between the largest that fit and this
      refused = b if refused is None else min(refused, b)
    else:
      points[b] = peak
      if peak <= usable_bytes:
        fitting = max(fitting, b)
        if abs(predicted - peak) <= 0.05 * peak:
          break
    (b1, m1), (b2, m2) = sorted(points.items())[-2:]
    nxt = int(b2 + (usable_bytes - m2) // ((m2 - m1) / (b2 - b1)))
    if refused is not None:
      nxt = min(nxt, (fitting + refused) // 2)
    if nxt in points or nxt <= fitting:
      break
    b = nxt
  last = checks[-1]
  best.update(largest_batch_per_device=fitting, largest_verified=True, checks=checks,
              check_batch_per_device=last['batch_per_device'],
              check_predicted_peak_bytes=last['predicted_peak_bytes'],
              check_peak_bytes=last['peak_bytes'],
              check_fits=bool(last['peak_bytes'] is not None and
                              last['peak_bytes'] <= usable_bytes))


def markdown(rows: list[dict]) -> str:
  g = lambda b: f'{b / GIB:.2f}'
  lines = ['| target | fsdp | params+EMA GiB | optimizer GiB | activations GiB (recipe batch) '
           '| temporaries GiB | peak GiB at recipe batch | fits | largest batch/device |',
           '|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    target = r['target'] + (f" (remat {r['remat']})" if r.get('remat', 'none') != 'none' else '')
    if 'error' in r:
      lines.append(f"| {target} | {r['fsdp']} | {g(r['params_bytes'])} | "
                   f"{g(r['optimizer_bytes'])} | - | - | does not compile | no | - |")
      continue
    how = 'extrapolated'
    if r.get('largest_verified'):
      how = (f"compiled: {g(r['check_peak_bytes'])} GiB" if r['check_fits'] else
             'compiled' if r['largest_batch_per_device'] else 'none fits')
    lines.append(
        f"| {target} | {r['fsdp']} | {g(r['params_bytes'])} | {g(r['optimizer_bytes'])} | "
        f"{g(r['activation_bytes'])} ({r['recipe_batch_per_device']}/device) | "
        f"{g(r['temporary_bytes'])} | {g(r['peak_bytes'])} | "
        f"{'yes' if r['fits_recipe'] else 'no'} | {r['largest_batch_per_device']} ({how}) |")
  return '\n'.join(lines)


def main(argv: Optional[list[str]] = None, out: Any = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--targets', default='h100-80gb-x8,a100-40gb-x8,v4-32,v5e-64')
  parser.add_argument('--size', choices=('real', 'tiny'), default='real')
  parser.add_argument('--role', choices=('uncond', 'cond'), default='uncond')
  parser.add_argument('--remat', choices=('none', 'dots', 'full'), default='none',
                      help="config.model.remat: what each UNet block keeps for the backward")
  parser.add_argument('--fsdp', default='', help='fsdp sizes, e.g. 1,8 (default per target)')
  parser.add_argument('--usable', type=float, default=0.9,
                      help='fraction of device memory the step may use')
  parser.add_argument('--max_checks', type=int, default=3,
                      help='compilations checking the largest batch per target (0 = none)')
  parser.add_argument('--two_points', action='store_true',
                      help='two batches for every fsdp size (default: the first only)')
  parser.add_argument('--records', default='',
                      help='JSON-lines file of compilation results, reused by a rerun')
  parser.add_argument('--markdown', action='store_true')
  args = parser.parse_args(argv)
  out = out or sys.stdout
  rows, records = [], Records(args.records)
  for name in args.targets.split(','):
    fsdps = tuple(int(f) for f in args.fsdp.split(',')) if args.fsdp else DEFAULT_FSDP[name]
    rows += plan_target(name, args.size, args.role, fsdps, args.usable, out,
                        max_checks=args.max_checks, records=records, two_points=args.two_points,
                        remat=args.remat)
  if args.markdown:
    print(markdown(rows), file=out)
  return rows


if __name__ == '__main__':
  main()
