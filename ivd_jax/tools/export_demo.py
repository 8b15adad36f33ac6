"""Exports trained networks as small demo networks: the G_u / G_c pair `quickstart:pretrained`
samples, or a G_sr.

  python -m ivd_jax.tools.export_demo --uncond=WORKDIR/uncond --cond=WORKDIR/cond \
      --out_dir=ivd_jax/pretrained/demo32
  python -m ivd_jax.tools.export_demo --sr=SR_WORKDIR --out_dir=tests/fixtures/sr16to32

OUT/uncond, OUT/cond and OUT/sr are exported params checkpoints (checkpoint.save_params: params/ and
config.json, the training config with the model, data and diffusion sections sampling reads),
holding the EMA weights of each workdir's latest step in bfloat16: half the bytes of float32, and
checkpoint.load_params hands them back as float32. OUT/export.json records where they came from
(source, step, parameter count, bytes).
"""
import json
import os
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from ivd_jax import checkpoint
from ivd_jax import errors
from ivd_jax.io import paths

ROLES = ('uncond', 'cond', 'sr')


def _bytes_under(folder: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder)
             for f in files)


def export_network(src: str, out: str) -> dict:
  """EMA weights of the training workdir `src` (latest step) -> bfloat16 export at `out`."""
  if not paths.is_dir(src):
    raise errors.UserError(f'{src} is not a training workdir. Fix: pass the uncond/ or cond/ '
                           'folder of a quickstart or train run')
  params, config = checkpoint.load_params(src, ema=True)
  reader = checkpoint.Checkpointer(checkpoint.workdir_checkpoint_dir(src), every_steps=0,
                                  read_only=True)
  step = reader.latest_step()
  reader.close()
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
  checkpoint.save_params(out, params, config)
  return {'source': paths.abspath(src), 'step': step, 'role': config.get('role'),
          'num_params': int(sum(np.size(x) for x in jax.tree.leaves(params))),
          'dtype': 'bfloat16', 'bytes': _bytes_under(out)}


def export_pair(uncond: str, cond: str, out: str) -> dict:
  """Both networks into OUT/uncond and OUT/cond, plus OUT/export.json; returns that record."""
  return export_networks({'uncond': uncond, 'cond': cond}, out)


def export_networks(sources: dict[str, str], out: str) -> dict:
  """{role: training workdir} into OUT/<role>, plus OUT/export.json; returns that record."""
  record = {role: export_network(src, os.path.join(out, role)) for role, src in sources.items()}
  record['total_bytes'] = sum(record[r]['bytes'] for r in sources)
  with open(os.path.join(out, 'export.json'), 'w') as f:
    json.dump(record, f, indent=1)
  return record


_UNCOND = flags.DEFINE_string('uncond', None, 'G_u training workdir (e.g. WORKDIR/uncond).')
_COND = flags.DEFINE_string('cond', None, 'G_c training workdir (e.g. WORKDIR/cond).')
_SR = flags.DEFINE_string('sr', None, 'G_sr training workdir.')
_OUT = flags.DEFINE_string('out_dir', None, 'Output folder, e.g. ivd_jax/pretrained/demo32.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  sources = {role: flag.value for role, flag in zip(ROLES, (_UNCOND, _COND, _SR)) if flag.value}
  if not (sources and _OUT.value):
    raise app.UsageError('--out_dir and at least one of --uncond, --cond, --sr are required')
  try:
    record = export_networks(sources, _OUT.value)
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  for role in sources:
    r = record[role]
    print(f'{role}: step {r["step"]}, {r["num_params"]:,} parameters, {r["bytes"] / 1e6:.1f} MB '
          f'-> {os.path.join(_OUT.value, role)}')
  print(f'total {record["total_bytes"] / 1e6:.1f} MB')


if __name__ == '__main__':
  app.run(main)
