"""ivd_jax/runtime.py: the XLA:CPU settings reach a fresh process, and only when safe."""
import os
import subprocess
import sys

import jax.numpy as jnp
import jaxlib.version
import pytest

from ivd_jax import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fresh_process(env_overrides: dict) -> str:
  """XLA_FLAGS after runtime.configure() and a first computation in a new interpreter."""
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', runtime.OPT_OUT)}
  env.update(env_overrides, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  code = ('import os, jax.numpy as jnp; from ivd_jax import runtime; runtime.configure(); '
          'assert float(jnp.arange(4.0).sum()) == 6.0; print(os.environ.get("XLA_FLAGS", ""))')
  out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                       timeout=120, check=True)
  return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ''


def test_configure_adds_the_cpu_flags_in_a_fresh_process():
  assert runtime.cpu_flags_supported()  # the jaxlib releases this project installs
  flags = _fresh_process({'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}).split()
  assert flags == ['--xla_force_host_platform_device_count=2'] + list(runtime.CPU_FLAGS)


@pytest.mark.parametrize('env', [{runtime.OPT_OUT: '0'},
                                 {'XLA_FLAGS': '--xla_cpu_experimental_ynn_fusion_type=dot'}])
def test_the_users_choice_is_kept(env):
  assert _fresh_process(env) == env.get('XLA_FLAGS', '')


def test_unknown_jaxlib_or_started_backend_changes_nothing(monkeypatch):
  # Once a backend has computed, flags set now would be silently ignored by XLA (and this
  # process's backend must start before XLA_FLAGS holds the made-up '--a').
  jnp.zeros(1).block_until_ready()
  monkeypatch.setenv('XLA_FLAGS', '--a')
  monkeypatch.delenv(runtime.OPT_OUT, raising=False)
  monkeypatch.setattr(jaxlib.version, '__version__', '0.99.0')
  assert runtime.configure() == '--a' and os.environ['XLA_FLAGS'] == '--a'
  monkeypatch.setattr(jaxlib.version, '__version__', '0.10.2')
  assert runtime._backend_started()  # pylint: disable=protected-access
  assert runtime.configure() == '--a' and os.environ['XLA_FLAGS'] == '--a'
