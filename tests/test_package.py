"""`pip install .` gives a working `ivd-jax` command whose configs resolve by bare name anywhere.

The package is built and installed (not editable) into a fresh venv; its dependencies come from
the running interpreter's site-packages through a .pth line, so the test installs nothing else.
Then, from a directory outside the clone, the installed command prepares data and runs the
quickstart's smoke preset.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  env_dir = tmp_path_factory.mktemp('venv')
  venv.EnvBuilder(with_pip=True).create(env_dir)
  python = env_dir / 'bin' / 'python'
  site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                        check=True, capture_output=True, text=True).stdout.strip()
  # Dependencies from this interpreter (a plain path line: its .pth files, e.g. an editable
  # install of the clone, are not processed, so only the freshly built package is importable).
  (pathlib.Path(site) / 'test_deps.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
  # Built from a copy of the sources, so the build leaves nothing (build/, *.egg-info) in the clone.
  source = tmp_path_factory.mktemp('source')
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(ROOT / name, source / name)
  shutil.copytree(ROOT / 'ivd_jax', source / 'ivd_jax',
                  ignore=shutil.ignore_patterns('__pycache__'))
  subprocess.run([python, '-m', 'pip', 'install', '-q', '--no-deps', str(source)], check=True,
                 cwd=env_dir)
  return env_dir


def _run(env_dir, args, cwd):
  env = dict(os.environ, PATH=f'{env_dir / "bin"}:{os.environ["PATH"]}', PYTHONPATH='')
  return subprocess.run(['ivd-jax', *args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=900)


def test_installed_package_is_not_the_clone(installed, tmp_path):
  where = subprocess.run([installed / 'bin' / 'python', '-c',
                          'import ivd_jax.main as m; print(m.__file__, m.CONFIG_DIR)'],
                         cwd=tmp_path, check=True, capture_output=True, text=True).stdout.split()
  assert str(installed) in where[0] and not where[0].startswith(str(ROOT))
  assert (pathlib.Path(where[1]) / 'quickstart.py').is_file()


def test_bare_config_names_from_any_directory(installed, tmp_path):
  work = tmp_path / 'run'
  result = _run(installed, ['--config=prepare:procedural', f'--workdir={work}',
                            '--config.data.num_examples=8', '--config.data.num_eval_examples=2',
                            '--config.data.resolution=16'], cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((work / 'prepare_summary.json').read_text())
  assert summary['num_written'] == 10 and summary['num_skipped'] == 0
  # An unknown name is a clear error, not a traceback.
  bad = _run(installed, ['--config=no_such_config', f'--workdir={work}'], cwd=tmp_path)
  assert bad.returncode != 0 and 'no_such_config' in bad.stderr


def test_quickstart_smoke_through_the_installed_command(installed, tmp_path):
  work = tmp_path / 'quickstart'
  result = _run(installed, ['--config=quickstart:smoke', f'--workdir={work}'], cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads((work / 'quickstart_summary.json').read_text())
  assert summary['full_generation']['consistency']['num_pairs'] == 6
  assert not (tmp_path / 'gs:').exists()
