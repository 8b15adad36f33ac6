r"""UNet train-step and sampler-step timings; one JSON line per case. Never asserts a time.

  .venv/bin/python benchmarks/unet.py                      # JAX, both networks
  .venv/bin/python benchmarks/unet.py --torch              # + the same step in PyTorch
  .venv/bin/python benchmarks/unet.py --cases fixture32 --repeats 10
  .venv/bin/python benchmarks/unet.py --variants default,xnn,xnn_tcmalloc --rounds 3 --torch

Cases (batch 8, float32):
  fixture32:  the reference fixture network (32x32, model_channels 32, mult 1,2,2, 1 res block,
              attention at 16/8, 32 channels per head), 1.42 M parameters;
  single64:   the single-category network (model_channels 128, mult 1,1,2,3,4, 2 res blocks,
              attention at 32/16/8, 64 channels per head) on 64x64 input, 100.3 M parameters.
A train step is forward, epsilon loss, backward and AdamW (lr 1e-4, no weight decay); a sampler
step is one DDIM step (one network evaluation) of a 4-step jitted ddim_sample, per step.
`--torch` times an equivalent PyTorch network (written here, same parameter count, same layer
sequence) under the same conditions, for a same-load comparison; torch is optional.
`--variants` compares process settings (allocator, XLA flags) in one run: each variant of
VARIANTS runs as a child process of this script with its environment, the variants (and torch)
alternating round after round so that all see the same load; every row gets `variant` and
`round`, and a `summary` row per variant and case gives the median over rounds. Rows also
count the minor page faults per call (XLA:CPU returns and re-maps its buffers every step).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Runnable as a script from anywhere: the repository root goes on the path first.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from ivd_jax.diffusion import losses, samplers, schedule as schedule_lib
from ivd_jax import runtime
from ivd_jax.models.unet import UNet
# pylint: enable=g-import-not-at-top,wrong-import-position

CASES = {
    'fixture32': dict(image_size=32, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attention_resolutions=(16, 8), num_head_channels=32),
    'single64': dict(image_size=64, model_channels=128, channel_mult=(1, 1, 2, 3, 4),
                     num_res_blocks=2, attention_resolutions=(32, 16, 8), num_head_channels=64),
}
BATCH = 8

# Process settings compared by --variants (environment of the child process). default: XLA's
# own (this script never applies ivd_jax.runtime by itself); XNN: the project's runtime.CPU_FLAGS
# (XNNPACK convolutions, no YNNPACK fusions), which ivd_jax.main applies; tcmalloc: Debian's
# libtcmalloc-minimal4 in place of glibc malloc (launch/local.sh).
TCMALLOC = '/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4'
XNN = ' '.join(runtime.CPU_FLAGS)
VARIANTS = {
    'default': {},
    'tcmalloc': {'LD_PRELOAD': TCMALLOC},
    'xnn': {'XLA_FLAGS': XNN},
    'xnn_tcmalloc': {'XLA_FLAGS': XNN, 'LD_PRELOAD': TCMALLOC},
    'xnn_concurrency': {'XLA_FLAGS': XNN + ' --xla_cpu_enable_concurrency_optimized_scheduler'
                                           '=true'},
    'xnn_fast_min_max': {'XLA_FLAGS': XNN + ' --xla_cpu_enable_fast_min_max=true'},
    'xnn_no_eigen_threads': {'XLA_FLAGS': XNN + ' --xla_cpu_multi_thread_eigen=false'},
    'xnn_vector512': {'XLA_FLAGS': XNN + ' --xla_cpu_prefer_vector_width=512'},
}


def _timed(fn, repeats: int) -> dict:
  """Runs fn() (which blocks) once to compile/warm, then `repeats` times; seconds per call.

  Besides wall time it reports the process CPU time per call (all threads), which is less
  sensitive to other processes on a shared machine than wall time.
  """
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times, cpu = [], []
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(repeats):
    start, start_cpu = time.perf_counter(), time.process_time()
    fn()
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / repeats
  return {'first_call_s': round(first, 3), 'median_s': round(statistics.median(times), 4),
          'min_s': round(min(times), 4), 'cpu_median_s': round(statistics.median(cpu), 4),
          'minor_faults_per_call': int(faults), 'repeats': repeats}


def _load() -> float:
  return round(os.getloadavg()[0], 2)


def bench_jax(name: str, repeats: int, sampler: bool) -> list:
  model = UNet(**CASES[name])
  size = model.image_size
  key = jax.random.PRNGKey(0)
  x0 = jax.random.uniform(key, (BATCH, size, size, 4), minval=-1, maxval=1)
  t0 = jnp.zeros((BATCH,), jnp.int32)
  params = jax.jit(model.init)(key, x0, t0)['params']
  count = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))
  sched = schedule_lib.linear_schedule()
  tx = optax.adamw(1e-4, weight_decay=0.0)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, x0, key):
    def loss_fn(p):  # the epsilon loss, as training/step.py and the torch step compute it
      t_key, n_key = jax.random.split(key)
      t = jax.random.randint(t_key, (BATCH,), 0, sched.num_steps)
      noise = jax.random.normal(n_key, x0.shape)
      eps = model.apply({'params': p}, losses.q_sample(sched, x0, t, noise), t)
      return jnp.mean(jnp.square(eps - noise))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  state = {'params': params, 'opt': opt_state, 'i': 0}

  def run_train():
    state['i'] += 1
    p, o, loss = train_step(state['params'], state['opt'], x0, jax.random.fold_in(key, state['i']))
    jax.block_until_ready(loss)
    state['params'], state['opt'] = p, o

  rows = [dict(case=f'train_step/{name}', impl='jax', batch=BATCH, params=count, load=_load(),
               **_timed(run_train, repeats))]
  if sampler:
    steps = 4
    sample = jax.jit(lambda p, x: samplers.ddim_sample(
        lambda v, t: model.apply({'params': p}, v, t), x, schedule=sched, steps=steps))
    timing = _timed(lambda: jax.block_until_ready(sample(state['params'], x0)), repeats)
    per_step = {k: (round(v / steps, 4) if k.endswith('_s') else v) for k, v in timing.items()}
    rows.append(dict(case=f'ddim_step/{name}', impl='jax', batch=BATCH, params=count,
                     load=_load(), **per_step))
  return rows


def _torch_unet(cfg: dict):
  """The same ADM network in PyTorch (NCHW), for a same-conditions timing comparison."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  class Res(nn.Module):

    def __init__(self, cin, cout, emb, updown=None):
      super().__init__()
      self.updown = updown
      self.norm1, self.conv1 = nn.GroupNorm(32, cin), nn.Conv2d(cin, cout, 3, padding=1)
      self.emb = nn.Linear(emb, 2 * cout)
      self.norm2, self.conv2 = nn.GroupNorm(32, cout), nn.Conv2d(cout, cout, 3, padding=1)
      self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
      h = F.silu(self.norm1(x))
      if self.updown == 'down':
        h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
      elif self.updown == 'up':
        h, x = F.interpolate(h, scale_factor=2), F.interpolate(x, scale_factor=2)
      h = self.conv1(h)
      scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
      h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
      return self.skip(x) + h

  class Attn(nn.Module):

    def __init__(self, c, head_ch):
      super().__init__()
      self.heads = c // head_ch
      self.norm, self.qkv, self.proj = nn.GroupNorm(32, c), nn.Conv1d(c, 3 * c, 1), nn.Conv1d(
          c, c, 1)

    def forward(self, x, emb):
      b, c, h, w = x.shape
      qkv = self.qkv(self.norm(x).reshape(b, c, h * w)).reshape(b * self.heads, -1, h * w)
      q, k, v = qkv.chunk(3, dim=1)
      s = (c // self.heads) ** -0.25
      a = torch.softmax(torch.einsum('bct,bcs->bts', q * s, k * s), dim=-1)
      a = torch.einsum('bts,bcs->bct', a, v).reshape(b, c, h * w)
      return x + self.proj(a).reshape(b, c, h, w)

  class Net(nn.Module):

    def __init__(self):
      super().__init__()
      mc, emb = cfg['model_channels'], 4 * cfg['model_channels']
      self.mc = mc
      self.time = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
      self.inp = nn.ModuleList([nn.Conv2d(4, mc, 3, padding=1)])
      chans, ch, size = [mc], mc, cfg['image_size']
      levels = cfg['channel_mult']
      for lvl, m in enumerate(levels):
        for _ in range(cfg['num_res_blocks']):
          layers = [Res(ch, m * mc, emb)]
          ch = m * mc
          if size in cfg['attention_resolutions']:
            layers.append(Attn(ch, cfg['num_head_channels']))
          self.inp.append(nn.ModuleList(layers))
          chans.append(ch)
        if lvl != len(levels) - 1:
          self.inp.append(nn.ModuleList([Res(ch, ch, emb, 'down')]))
          chans.append(ch)
          size //= 2
      self.mid = nn.ModuleList([Res(ch, ch, emb), Attn(ch, cfg['num_head_channels']),
                                Res(ch, ch, emb)])
      self.out_blocks = nn.ModuleList()
      for lvl, m in reversed(list(enumerate(levels))):
        for i in range(cfg['num_res_blocks'] + 1):
          layers = [Res(ch + chans.pop(), m * mc, emb)]
          ch = m * mc
          if size in cfg['attention_resolutions']:
            layers.append(Attn(ch, cfg['num_head_channels']))
          if lvl and i == cfg['num_res_blocks']:
            layers.append(Res(ch, ch, emb, 'up'))
            size *= 2
          self.out_blocks.append(nn.ModuleList(layers))
      self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), nn.Conv2d(ch, 4, 3, padding=1))

    def forward(self, x, t):
      half = self.mc // 2
      freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
      args = t.float()[:, None] * freqs[None]
      emb = self.time(torch.cat([torch.cos(args), torch.sin(args)], dim=1))
      h = self.inp[0](x)
      hs = [h]
      for block in self.inp[1:]:
        for layer in block:
          h = layer(h, emb)
        hs.append(h)
      for layer in self.mid:
        h = layer(h, emb)
      for block in self.out_blocks:
        h = torch.cat([h, hs.pop()], dim=1)
        for layer in block:
          h = layer(h, emb)
      return self.out(h)

  return Net()


def bench_torch(name: str, repeats: int, sampler: bool) -> list:
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  cfg = CASES[name]
  net = _torch_unet(cfg)
  count = sum(p.numel() for p in net.parameters())
  opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0)
  size = cfg['image_size']
  x0 = torch.rand(BATCH, 4, size, size) * 2 - 1
  abar = torch.from_numpy(schedule_lib.linear_schedule().alphas_cumprod)

  def run_train():
    t = torch.randint(0, 1000, (BATCH,))
    noise = torch.randn_like(x0)
    a = abar[t].float()[:, None, None, None]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    loss = torch.mean((net(xt, t) - noise) ** 2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  rows = [dict(case=f'train_step/{name}', impl='torch', batch=BATCH, params=count, load=_load(),
               threads=torch.get_num_threads(), **_timed(run_train, repeats))]
  if sampler:
    def run_eval():
      with torch.no_grad():
        net(x0, torch.full((BATCH,), 999))
    rows.append(dict(case=f'ddim_step/{name}', impl='torch', batch=BATCH, params=count,
                     load=_load(), threads=torch.get_num_threads(), **_timed(run_eval, repeats)))
  return rows


def run_variants(args) -> None:
  """Each variant (and torch) as a child process, alternating, `rounds` times; then medians."""
  runs = [(v, 'jax') for v in args.variants.split(',')] + ([('torch', 'torch')] if args.torch
                                                           else [])
  rows = []
  for rnd in range(args.rounds):
    for variant, impl in runs:
      env = dict(os.environ)
      for key, value in VARIANTS.get(variant, {}).items():
        env[key] = f'{env.get(key, "")} {value}'.strip()
      cmd = [sys.executable, os.path.abspath(__file__), '--cases', args.cases, '--repeats',
             str(args.repeats), '--impls', impl] + (['--no_sampler'] if args.no_sampler else [])
      out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
      for line in out.splitlines():
        row = dict(json.loads(line), variant=variant, round=rnd)
        rows.append(row)
        print(json.dumps(row), flush=True)
  for variant, _ in runs:
    for case in sorted({r['case'] for r in rows}):
      mine = [r for r in rows if r['variant'] == variant and r['case'] == case]
      print(json.dumps(dict(
          summary=True, variant=variant, case=case, rounds=len(mine),
          median_s=round(statistics.median(r['median_s'] for r in mine), 4),
          cpu_median_s=round(statistics.median(r['cpu_median_s'] for r in mine), 4),
          minor_faults_per_call=int(statistics.median(r['minor_faults_per_call'] for r in mine)),
          load=[r['load'] for r in mine])), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--cases', default='fixture32,single64')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--torch', action='store_true', help='also time the PyTorch equivalent')
  parser.add_argument('--impls', default='', help='jax,torch (default: jax, + torch with --torch)')
  parser.add_argument('--no_sampler', action='store_true')
  parser.add_argument('--variants', default='',
                      help=f'compare process settings in one run: some of {", ".join(VARIANTS)}')
  parser.add_argument('--rounds', type=int, default=2)
  args = parser.parse_args()
  if args.variants:
    run_variants(args)
    return
  env = dict(machine=platform.machine(), cpus=os.cpu_count(), python=platform.python_version(),
             jax=jax.__version__, backend=jax.default_backend(),
             xla_flags=os.environ.get('XLA_FLAGS', ''), ld_preload=os.environ.get('LD_PRELOAD', ''))
  impls = args.impls.split(',') if args.impls else ['jax'] + (['torch'] if args.torch else [])
  for name in args.cases.split(','):
    for impl in impls:
      bench = {'jax': bench_jax, 'torch': bench_torch}[impl]
      for row in bench(name, args.repeats, not args.no_sampler):
        print(json.dumps(dict(row, **env)), flush=True)


if __name__ == '__main__':
  main()
