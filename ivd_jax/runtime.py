"""Process settings for XLA:CPU, applied before the first computation (benchmarks/README.md).

XLA:CPU hands convolutions, dots and reductions to YNNPACK by default. Measured on this
project's programs (2-core x86_64, jaxlib 0.10 and 0.12), its reduction fusions are slow on the
warp's many small reductions, and XNNPACK convolutions beat YNNPACK's:

| program (CPU time) | XLA default | CPU_FLAGS |
|---|---|---|
| forward_backward_warp, 64 px, batch 1 | 12.0 ms | 5.2 ms |
| UNet train step fixture32 / single64 (wall) | 0.296 / 8.98 s | 0.226 / 7.86 s |

The flags are experimental: an unknown one aborts XLA at start-up, so they are added only for
the jaxlib releases they were measured on, only on top of an XLA_FLAGS that does not already
choose these fusions, and never with IVD_XLA_CPU_FLAGS=0. They touch XLA:CPU only (GPU and TPU
compilation ignore them). XLA reads XLA_FLAGS when the first backend starts, so configure() must
run before any computation; after that it changes nothing and says so.
"""
import os

import jaxlib.version
from absl import logging
from jax._src import xla_bridge

CPU_FLAGS = ('--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION',
             '--xla_cpu_experimental_ynn_fusion_type=')
# jaxlib (major, minor) releases that know both flags (checked on 0.10 and 0.12).
KNOWN_JAXLIB = ((0, 10), (0, 11), (0, 12))
OPT_OUT = 'IVD_XLA_CPU_FLAGS'


def cpu_flags_supported() -> bool:
  """Whether the installed jaxlib is a release CPU_FLAGS were measured on."""
  release = tuple(int(p) for p in jaxlib.version.__version__.split('.')[:2])
  return release in KNOWN_JAXLIB


def _backend_started() -> bool:
  return bool(getattr(xla_bridge, '_backends', None))


def configure() -> str:
  """Adds CPU_FLAGS to XLA_FLAGS when it is safe and useful; returns the XLA_FLAGS in force."""
  current = os.environ.get('XLA_FLAGS', '')
  if os.environ.get(OPT_OUT, '1') == '0' or 'fusion_type' in current:
    return current  # the user's choice
  if not cpu_flags_supported():
    logging.info('runtime: jaxlib is not one of %s; XLA:CPU keeps its default fusions',
                 KNOWN_JAXLIB)
    return current
  if _backend_started():
    logging.warning('runtime: a JAX backend already started; %s takes effect only in a new '
                    'process', ' '.join(CPU_FLAGS))
    return current
  os.environ['XLA_FLAGS'] = ' '.join([current] + list(CPU_FLAGS)).strip()
  return os.environ['XLA_FLAGS']
