r"""How close the imagenet128 networks come to the chip: train step, sampling, FID features.

  python benchmarks/accelerator.py --size=tiny       # any machine, seconds: every case, tiny UNet
  python benchmarks/accelerator.py --size=real       # one GPU / TPU host: G_u and G_c, 421 M
  python benchmarks/accelerator.py --size=real --cases=train_gu,sample --budget_s=300

One JSON line per case; never asserts a time. `real` is the imagenet128 preset as configured
(configs/common.py: bfloat16 compute, float32 master weights, 1000 classes, 421 M parameters per
network); `tiny` is an 8 px one-level UNet of the same parts that runs every case on a CPU.
Every case runs the project's own code: the train step is training/step.py's (make_train_step
through jit_train_step: eps loss, AdamW, EMA, the G_c training pair built inside, the state
donated), sampling is sampling/sampler.py's ViewSampler, the FID features evaluation/fid.py's
FeatureExtractor (random Inception weights: the speed does not depend on them).

Cases (in the default order, most important first; `--budget_s` skips the rest once the time
spent plus the slowest case so far would pass it (the first case always runs), so `real`
finishes within 8 minutes on one H200 including compilation):
  train_gu, train_gc        the train step at the base batch per device (real 32, tiny 2);
  sample                    G_u step (one classifier-free-guided network evaluation, the cost of
                            a DDPM step), G_c DDIM step with guidance and the condition edits,
                            aggregation of a 27-slot view buffer, and the projected time of a
                            27-view set per instance (1000 DDPM + 26 x (aggregation + 50 DDIM));
  fid                       FID Inception features/s at 128 px (precision 'highest', as eval);
  train_gu_dots, train_gu_dots_2x, train_gu_full_4x   remat 'dots' at 1x / 2x and 'full' at 4x
                            the base batch;
  train_gu_f32              float32 compute (what bfloat16 buys);
  train_gu_xla_attention    attention 'xla' where 'auto' picks 'cudnn' (NVIDIA GPUs only).
Attention 'auto' is 'cudnn' on NVIDIA GPUs and 'xla' elsewhere.

Train rows: s_per_step (batch already on the device), s_per_step_host_input (a new host batch
put on the device every step, as the training loop does: equal times mean the transfer hides
behind the running step), images_per_s, flops_per_step (XLA's cost analysis of the compiled
executable: what the chip runs, remat recomputation included, per device), model_flops_per_step
(the same step without remat, from the lowered program: the model FLOPs MFU counts, per device),
mfu / hfu against PEAK_TFLOPS for the device kind (None where unknown, e.g. CPUs), and the
compiled memory analysis (arguments, outputs, donated aliases, temporaries; peak = arguments +
outputs - aliases + temporaries).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# Runnable as a script from anywhere: the repository root goes on the path first.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import sample as sample_bench
from ivd_jax import parallel
from ivd_jax import roles
from ivd_jax.configs import common
from ivd_jax.diffusion import schedule as schedule_lib
from ivd_jax.evaluation import fid
from ivd_jax.models import inception
from ivd_jax.models import unet as unet_lib
from ivd_jax.sampling import networks
from ivd_jax.sampling import sampler as sampler_lib
from ivd_jax.sampling import settings as settings_lib
from ivd_jax.sampling import viewsets
from ivd_jax.training import state as state_lib
from ivd_jax.training import step as step_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

# Dense (no sparsity) peak TFLOP/s per chip by compute dtype, matched against device_kind in
# order. GPU 'float32' is the TF32 tensor-core rate (XLA's default precision for float32 dots
# and convolutions on Ampere and later); TPUs run float32 matmuls as bfloat16 passes by default.
PEAK_TFLOPS = (
    # NVIDIA H200 datasheet: H200 SXM BF16 1,979 TFLOPS with sparsity (989.5 dense), TF32 989
    # (494.5 dense); H200 NVL 1,671 / 835.
    ('H200 NVL', {'bfloat16': 835.5, 'float32': 417.5}),
    ('H200', {'bfloat16': 989.5, 'float32': 494.5}),
    # NVIDIA H100 datasheet: SXM BF16 1,979 sparse (989.5 dense), TF32 989 (494.5); PCIe 1,513
    # (756.5) / 756 (378); NVL 1,671 (835.5) / 835 (417.5).
    ('H100 PCIe', {'bfloat16': 756.5, 'float32': 378.0}),
    ('H100 NVL', {'bfloat16': 835.5, 'float32': 417.5}),
    ('H100', {'bfloat16': 989.5, 'float32': 494.5}),
    # NVIDIA A100 datasheet: BF16 tensor 312 dense (624 sparse), TF32 156 dense.
    ('A100', {'bfloat16': 312.0, 'float32': 156.0}),
    # NVIDIA V100 datasheet (SXM2): FP16 tensor 125, FP32 15.7; no bfloat16 units, so XLA's
    # bfloat16 runs at the FP32 rate. The reference trained in fp16 there.
    ('V100', {'bfloat16': 15.7, 'float32': 15.7, 'float16': 125.0}),
    # Google Cloud TPU system architecture pages, peak bf16 compute per chip: v4 275, v5e 197,
    # v5p 459 TFLOPS. jax names v5e 'TPU v5 lite' and v5p 'TPU v5' / 'TPU v5p'.
    ('TPU v4', {'bfloat16': 275.0, 'float32': 275.0}),
    ('TPU v5 lite', {'bfloat16': 197.0, 'float32': 197.0}),
    ('TPU v5e', {'bfloat16': 197.0, 'float32': 197.0}),
    ('TPU v5', {'bfloat16': 459.0, 'float32': 459.0}),
)

# The paper's sampling time (as reported for a V100): view 0 in about 20 s (1000 DDPM steps),
# about 1 s per further view (50 DDIM steps).
PAPER_V100_VIEW_SET_S = 20.0 + 26 * 1.0
NUM_VIEWS, DDPM_STEPS, DDIM_STEPS = 27, 1000, 50

# The tiny UNet: the imagenet128 network's parts (classes and guidance, residual and attention
# blocks) at 8 px with one level, so that every case compiles in seconds on a CPU.
TINY_MODEL = dict(image_size=8, model_channels=32, channel_mult=(1,), num_res_blocks=1,
                  attention_resolutions=(8,), num_head_channels=32, num_classes=10)


@dataclasses.dataclass(frozen=True)
class Size:
  batch_per_device: int  # base train batch per device
  sample_batch: int  # instances per device in the sampling case
  sample_steps: int  # network evaluations timed per sampler call
  fid_batch: int  # images per device per Inception call
  fid_batches: int  # timed calls
  train_steps: int  # timed steps
  repeats: int  # timed sampler calls
  budget_s: float  # 0 = no budget


SIZES = {
    'tiny': Size(batch_per_device=2, sample_batch=2, sample_steps=2, fid_batch=4, fid_batches=2,
                 train_steps=2, repeats=1, budget_s=0.0),
    'real': Size(batch_per_device=32, sample_batch=32, sample_steps=4, fid_batch=256,
                 fid_batches=4, train_steps=10, repeats=3, budget_s=420.0),
}

TRAIN_CASES = {
    'train_gu': dict(role='uncond'),
    'train_gc': dict(role='cond'),
    'train_gu_dots': dict(role='uncond', remat='dots'),
    'train_gu_dots_2x': dict(role='uncond', remat='dots', batch=2),
    'train_gu_full_4x': dict(role='uncond', remat='full', batch=4),
    'train_gu_f32': dict(role='uncond', dtype='float32'),
    'train_gu_xla_attention': dict(role='uncond', attention='xla'),
}
CASES = ('train_gu', 'train_gc', 'sample', 'fid', 'train_gu_dots', 'train_gu_dots_2x',
         'train_gu_full_4x', 'train_gu_f32', 'train_gu_xla_attention')


# ------------------------------------------------------------------------------------------------
# Measuring a compiled program.
# ------------------------------------------------------------------------------------------------
def peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
  """The chip's dense peak TFLOP/s for `dtype` compute, or None for an unknown chip (CPUs)."""
  for name, peaks in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return peaks.get(dtype)
  return None


def _cost(analysis: Any) -> dict:
  # A dict, or (older jax) a list with one dict per program.
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return dict(analysis or {})


def compile_and_measure(lowered: Any) -> tuple[Any, dict]:
  """Compiles a lowered program: (executable, compile seconds, FLOPs and memory of the program).

  flops: XLA's cost analysis of the compiled (optimised, per-device) executable, falling back to
  the lowered program's where a backend reports none. Memory: the compiled memory analysis.
  """
  t0 = time.perf_counter()
  compiled = lowered.compile()
  out = {'compile_s': round(time.perf_counter() - t0, 2)}
  flops = _cost(compiled.cost_analysis()).get('flops', 0.0)
  if not flops:
    flops = _cost(lowered.cost_analysis()).get('flops', 0.0)
  out['flops_per_step'] = float(flops)
  mem = compiled.memory_analysis()
  if mem is not None:
    args, outs = mem.argument_size_in_bytes, mem.output_size_in_bytes
    alias, temp = mem.alias_size_in_bytes, mem.temp_size_in_bytes
    out.update(argument_bytes=int(args), output_bytes=int(outs), alias_bytes=int(alias),
               temp_bytes=int(temp), peak_bytes=int(args + outs - alias + temp))
  return compiled, out


def lowered_flops(lowered: Any, num_devices: int) -> float:
  """FLOPs per device of a lowered (unpartitioned, unoptimised) program."""
  return float(_cost(lowered.cost_analysis()).get('flops', 0.0)) / num_devices


def _timed(fn: Callable[[], Any], repeats: int) -> float:
  """Median seconds of `repeats` calls of fn (which blocks), after one warm call."""
  fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _device_peak_bytes() -> Optional[int]:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def auto_attention() -> str:
  return 'cudnn' if jax.default_backend() == 'gpu' else 'xla'


# ------------------------------------------------------------------------------------------------
# Cases.
# ------------------------------------------------------------------------------------------------
_PARAMS: dict = {}


def random_params(init: Callable[..., Any], *init_args: Any) -> Any:
  """Random parameters of the shapes `init(key, *init_args)` makes, without compiling `init`.

  Kernels ~ N(0, 1/fan_in), norm scales ~ 1, biases small and nonzero: realistic magnitudes (no
  zero layers, which can run faster than trained weights) from one random draw, so a 421 M
  network costs one small compilation instead of its whole initialiser. Cached per shape set.
  """
  abstract = jax.eval_shape(init, jax.random.PRNGKey(0), *init_args)
  flat, tree = jax.tree_util.tree_flatten_with_path(abstract)
  key = tuple((jax.tree_util.keystr(p), x.shape, str(x.dtype)) for p, x in flat)
  if key not in _PARAMS:
    sizes = [int(np.prod(x.shape)) for _, x in flat]

    def fill(k):
      noise = jnp.split(jax.random.normal(k, (sum(sizes),), jnp.float32),
                        np.cumsum(sizes)[:-1])
      leaves = []
      for (path, x), z in zip(flat, noise):
        name = jax.tree_util.keystr(path)
        z = z.reshape(x.shape)
        if name.endswith("['scale']"):
          z = 1.0 + 0.02 * z
        elif name.endswith("['bias']"):
          z = 0.02 * z
        else:
          z = z / np.sqrt(max(1, int(np.prod(x.shape[:-1]))))
        leaves.append(z.astype(x.dtype))
      return jax.tree.unflatten(tree, leaves)

    _PARAMS.clear()  # one network at a time stays cached (accelerator memory)
    _PARAMS[key] = jax.jit(fill)(jax.random.PRNGKey(1))
  return _PARAMS[key]


def network_params(model: unet_lib.UNet) -> Any:
  """random_params of a UNet."""
  res = model.image_size
  labels = jnp.zeros((1,), jnp.int32) if model.num_classes else None
  return random_params(model.init, jnp.zeros((1, res, res, model.in_channels)),
                       jnp.zeros((1,), jnp.int32), labels)['params']


def train_config(size: str, role: str, *, dtype: Optional[str] = None, remat: str = 'none',
                 attention: str = 'auto') -> ml_collections.ConfigDict:
  """The imagenet128 training config of `role` (tiny: TINY_MODEL in place of its network)."""
  config = common.train_config('imagenet128', role=role)
  if size == 'tiny':
    config.model.update(TINY_MODEL)
    config.data.resolution = config.model.image_size
    config.data.num_classes = config.model.num_classes
  if dtype:
    config.model.dtype = dtype
  config.model.remat = remat
  config.model.attention = auto_attention() if attention == 'auto' else attention
  config.mesh.shape = (-1, 1)
  return config


def _batch(rng: np.random.Generator, config, n: int) -> dict[str, np.ndarray]:
  res = config.model.image_size
  return {'rgbd': rng.uniform(-1, 1, (n, res, res, 4)).astype(np.float32),
          'label': rng.integers(0, max(1, config.model.num_classes), n).astype(np.int32)}


def run_train(size: str, name: str, mesh: jax.sharding.Mesh) -> dict:
  """One train case: compile, FLOPs, memory, step time with device and host batches, MFU."""
  spec = dict(TRAIN_CASES[name])
  s = SIZES[size]
  n_dev = mesh.devices.size
  bpd = s.batch_per_device * spec.pop('batch', 1)
  config = train_config(size, spec.pop('role'), **spec)
  config.train.batch_size = bpd * n_dev
  role = roles.role_of(config)
  model = role.network(config.model)
  tx = state_lib.make_optimizer(config.optim)
  rng = np.random.default_rng(0)
  bs = parallel.batch_sharding(mesh)
  with jax.set_mesh(mesh):
    state, shardings = step_lib.init_state(model, tx, config, mesh,
                                           params=network_params(model))
    step = step_lib.jit_train_step(model, tx, config, mesh, shardings)
    host = _batch(rng, config, config.train.batch_size)
    batch = jax.device_put(host, bs)
    lowered = step.lower(state, batch)
    compiled, row = compile_and_measure(lowered)
    if config.model.remat == 'none':
      model_flops = lowered_flops(lowered, n_dev)
    else:  # the model FLOPs of the same step without rematerialisation
      plain = ml_collections.ConfigDict(config.to_dict())
      plain.model.remat = 'none'
      plain_model = role.network(plain.model)
      model_flops = lowered_flops(step_lib.jit_train_step(
          plain_model, tx, plain, mesh, shardings).lower(state, batch), n_dev)
    holder = {'state': state}
    del state

    def steps(k, host_input):
      for i in range(k):
        b = jax.device_put(_batch(rng, config, config.train.batch_size), bs) if host_input \
            else batch
        holder['state'], metrics = compiled(holder['state'], b)
      jax.block_until_ready(metrics)

    steps(2, False)  # warm-up: allocation, autotuning leftovers
    t0 = time.perf_counter()
    steps(s.train_steps, False)
    s_step = (time.perf_counter() - t0) / s.train_steps
    t0 = time.perf_counter()
    steps(s.train_steps, True)
    s_host = (time.perf_counter() - t0) / s.train_steps
    num_params = state_lib.param_count(holder['state'].params)
  del holder, compiled, step
  gc.collect()
  kind = jax.devices()[0].device_kind
  peak = peak_tflops(kind, config.model.dtype)
  row.update(role=role.name, batch_per_device=bpd, global_batch=config.train.batch_size,
             dtype=config.model.dtype, remat=config.model.remat,
             attention=config.model.attention, params=num_params,
             s_per_step=round(s_step, 4), s_per_step_host_input=round(s_host, 4),
             images_per_s=round(config.train.batch_size / s_step, 2),
             model_flops_per_step=model_flops, achieved_tflops=round(
                 model_flops / s_step / 1e12, 2), peak_tflops=peak,
             mfu=round(model_flops / s_step / (peak * 1e12), 4) if peak else None,
             hfu=round(row['flops_per_step'] / s_step / (peak * 1e12), 4) if peak else None,
             device_peak_bytes_so_far=_device_peak_bytes())
  return row


def run_sample(size: str, mesh: jax.sharding.Mesh) -> dict:
  """G_u and G_c sampler steps, 27-slot aggregation and the projected 27-view set."""
  s = SIZES[size]
  config = train_config(size, roles.UNCOND.name)
  model_u = roles.UNCOND.network(config.model)
  model_c = roles.COND.network(config.model)
  res = model_u.image_size
  t0 = time.perf_counter()
  params_u = network_params(model_u)
  params_c = unet_lib.widen_input(params_u, roles.COND.in_channels)  # G_c's initialisation
  jax.block_until_ready(params_c)
  init_s = time.perf_counter() - t0
  sample = common.sample_section()
  sample.sampler_uncond, sample.steps_uncond = 'ddim', s.sample_steps
  sample.steps_cond = s.sample_steps
  settings = settings_lib.SampleSettings.from_config(sample)
  sampler = sampler_lib.ViewSampler(
      networks.Network(roles.UNCOND, model_u, params_u),
      networks.Network(roles.COND, model_c, params_c), settings, mesh=mesh,
      schedule=schedule_lib.schedule_from_config(config.diffusion))
  b = s.sample_batch * mesh.devices.size
  put = lambda x: jax.device_put(x, sampler.batch_sharding)
  keys, labels = put(viewsets.instance_keys(0, np.arange(b))), put(jnp.zeros((b,), jnp.int32))

  # G_u: sample_steps guided network evaluations (a DDIM step costs what a DDPM step costs: one
  # evaluation of the network on [cond; null] plus elementwise work).
  first, row_u = compile_and_measure(sampler._first_view.lower(  # pylint: disable=protected-access
      sampler.uncond_params, keys, labels))
  gu_call = _timed(lambda: jax.block_until_ready(first(sampler.uncond_params, keys, labels)),
                   s.repeats)
  # G_c: aggregation + sample_steps guided DDIM steps with the condition edits; aggregation alone.
  args = sample_bench._call_args(sampler, b, res)  # pylint: disable=protected-access
  args = (args[0], put(args[1]), put(args[2]), args[3], put(args[4]), args[5], put(args[6]),
          put(args[7]))
  next_view = sampler._next_view  # pylint: disable=protected-access
  nxt, row_c = compile_and_measure(next_view.lower(*args))
  buffer, views, valid, target = args[1], args[2], args[3], args[4]
  agg, row_a = compile_and_measure(jax.jit(sampler.aggregate).lower(buffer, views, valid, target))
  agg_s = _timed(lambda: jax.block_until_ready(agg(buffer, views, valid, target)), s.repeats)
  # The step donates its buffer: a fresh copy each call.
  nxt_call = _timed(lambda: jax.block_until_ready(
      nxt(args[0], put(jnp.array(buffer)), *args[2:])), s.repeats)
  gu_step = gu_call / s.sample_steps
  gc_step = max(nxt_call - agg_s, 0.0) / s.sample_steps
  view_s = agg_s + DDIM_STEPS * gc_step
  set_s = DDPM_STEPS * gu_step + (NUM_VIEWS - 1) * view_s
  flops_eval = row_u['flops_per_step'] / s.sample_steps
  kind = jax.devices()[0].device_kind
  peak = peak_tflops(kind, config.model.dtype)
  return dict(
      instances=b, dtype=config.model.dtype, attention=config.model.attention,
      guidance=settings.guidance, params_init_s=round(init_s, 2),
      gu_compile_s=row_u['compile_s'], gc_compile_s=row_c['compile_s'],
      aggregate_compile_s=row_a['compile_s'], gu_peak_bytes=row_u.get('peak_bytes'),
      gc_peak_bytes=row_c.get('peak_bytes'),
      gu_ddpm_steps_per_s=round(1.0 / gu_step, 3), gu_step_s=round(gu_step, 4),
      gu_flops_per_step=flops_eval, gu_achieved_tflops=round(flops_eval / gu_step / 1e12, 2),
      gu_mfu=round(flops_eval / gu_step / (peak * 1e12), 4) if peak else None,
      gc_ddim_step_s=round(gc_step, 4), aggregate_27_slots_s=round(agg_s, 4),
      further_view_s=round(view_s, 3), view_set_s=round(set_s, 2),
      view_set_s_per_instance=round(set_s / b, 3),
      paper_v100_view_set_s_per_instance=PAPER_V100_VIEW_SET_S,
      note='27-view set projected from the measured steps: 1000 DDPM steps of G_u + 26 x '
           '(aggregation + 50 DDIM steps of G_c)')


def run_fid(size: str, mesh: jax.sharding.Mesh, precision: str) -> dict:
  """FID Inception-v3 features/s on 128 px uint8 images through evaluation.fid."""
  s = SIZES[size]
  model = inception.InceptionV3(with_logits=False, precision=precision)
  params = random_params(model.init, jnp.zeros((1, 128, 128, 3)))
  b = s.fid_batch * mesh.devices.size
  extractor = fid.FeatureExtractor(params, with_logits=False, batch_size=b, mesh=mesh,
                                   precision=precision)
  images = np.random.default_rng(0).integers(0, 256, (b * s.fid_batches, 128, 128, 3), np.uint8)
  t0 = time.perf_counter()
  extractor(images[:b])
  first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  feats = extractor(images)
  dt = time.perf_counter() - t0
  flops = lowered_flops(jax.jit(model.apply).lower(params, jnp.zeros((b, 128, 128, 3),
                                                                      jnp.uint8)), 1) / b
  return dict(batch=b, precision=precision, images=len(feats), feature_dim=feats.pool.shape[1],
              first_call_s=round(first_s, 2), images_per_s=round(len(feats) / dt, 2),
              flops_per_image=flops, achieved_tflops=round(flops * len(feats) / dt / 1e12, 3))


# ------------------------------------------------------------------------------------------------
# Driver.
# ------------------------------------------------------------------------------------------------
def run_case(size: str, name: str, mesh: jax.sharding.Mesh, fid_precision: str) -> dict:
  if name in TRAIN_CASES:
    return run_train(size, name, mesh)
  if name == 'sample':
    return run_sample(size, mesh)
  if name == 'fid':
    return run_fid(size, mesh, fid_precision)
  raise ValueError(f'unknown case {name!r}; use some of {", ".join(CASES)}')


def main(argv: Optional[list[str]] = None, out: Any = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--size', choices=sorted(SIZES), default='tiny')
  parser.add_argument('--cases', default=','.join(CASES))
  parser.add_argument('--devices', type=int, default=0, help='devices to use; 0 = all local')
  parser.add_argument('--budget_s', type=float, default=-1,
                      help='skip cases that would end past this; -1 = the size default')
  parser.add_argument('--fid_precision', default='highest', choices=('highest', 'default'))
  args = parser.parse_args(argv)
  out = out or sys.stdout
  devices = jax.local_devices()[:args.devices or None]
  mesh = parallel.make_mesh(ml_collections.ConfigDict({'shape': (-1, 1)}), devices=devices)
  budget = SIZES[args.size].budget_s if args.budget_s < 0 else args.budget_s
  env = dict(size=args.size, backend=jax.default_backend(), device_kind=devices[0].device_kind,
             num_devices=len(devices), jax=jax.__version__, python=platform.python_version(),
             host_cpus=os.cpu_count())
  rows, start, slowest = [], time.perf_counter(), 0.0
  for name in [c for c in args.cases.split(',') if c]:
    if name == 'train_gu_xla_attention' and auto_attention() == 'xla':
      row = dict(case=name, skipped="attention 'auto' is already 'xla' on this backend")
    elif budget and slowest and time.perf_counter() - start + slowest > budget:
      row = dict(case=name, skipped=f'time budget of {budget:.0f} s')
    else:
      t0 = time.perf_counter()
      try:
        row = dict(case=name, **run_case(args.size, name, mesh, args.fid_precision))
      except Exception as e:  # pylint: disable=broad-except
        # One failing case (e.g. a kernel this chip lacks) must not lose the others' figures.
        row = dict(case=name, error=f'{type(e).__name__}: {str(e)[:500]}')
      row['case_s'] = round(time.perf_counter() - t0, 1)
      slowest = max(slowest, row['case_s'])
    row.update(env, elapsed_s=round(time.perf_counter() - start, 1))
    print(json.dumps(row), file=out, flush=True)
    rows.append(row)
  return rows


if __name__ == '__main__':
  main()
