"""The package's layering (docs/architecture.md), checked on the source text without importing it.

Every module under ivd_jax/ is parsed with ast. An import may point down the rank table, never up,
and never sideways to another package of the same rank (except checkpoint -> parallel); inside
one package anything goes. Imports sit at the top of a module, except the optional heavy
dependencies, which may be imported inside the function that needs them. No module is longer
than MAX_LINES lines.
"""
import ast
import dataclasses
import pathlib
from typing import Optional

import pytest

PACKAGE = 'ivd_jax'
ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE_DIR = ROOT / PACKAGE

# The first component under ivd_jax/ (a package or a top-level module) -> its rank.
# '__init__' is ivd_jax/__init__.py itself (what `import ivd_jax` runs).
LAYERS = {
    '__init__': 0, 'errors': 0, 'configs': 0, 'runtime': 0,
    'geometry': 1, 'diffusion': 1,
    'models': 2,
    'roles': 3,
    'parallel': 4, 'checkpoint': 4, 'io': 4,
    'data': 5, 'training': 5, 'sampling': 5, 'evaluation': 5,
    'pipelines': 6,
    'tools': 7,
    'main': 8,
}
# configs/ is data (ConfigDicts, the one home of every default number): only the entry points
# may read it; library code takes its settings from the config it is given.
CONFIG_READERS = frozenset({'configs', 'main', 'tools'})
# (importer, imported) pairs of the same rank that may import each other.
SIDEWAYS_ALLOWED = frozenset({('checkpoint', 'parallel')})
# Top-level modules that may be imported inside a function (optional, heavy dependencies).
LAZY_ALLOWED = frozenset({'torch', 'transformers', 'safetensors', 'tensorflow_datasets',
                          'tensorflow'})
MAX_LINES = 400


@dataclasses.dataclass(frozen=True)
class Import:
  """One module named by an import statement."""
  line: int
  text: str  # the statement as written, on one line
  target: str  # absolute dotted name: 'ivd_jax.data.pipeline', 'numpy', 'torch.nn'
  in_function: bool


def module_name(path: str) -> tuple[str, bool]:
  """'ivd_jax/data/x.py' -> ('ivd_jax.data.x', False); '.../__init__.py' -> (package, True)."""
  parts = pathlib.PurePosixPath(path).with_suffix('').parts
  if parts[-1] == '__init__':
    return '.'.join(parts[:-1]), True
  return '.'.join(parts), False


def component(name: str) -> str:
  """The first component under the package: 'ivd_jax.data.x' -> 'data'; 'ivd_jax' -> '__init__'."""
  parts = name.split('.')
  return parts[1] if len(parts) > 1 else '__init__'


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
  """The absolute module a `from ... import` names (relative imports resolved)."""
  if not node.level:
    return node.module or ''
  base = module.split('.') if is_package else module.split('.')[:-1]
  base = base[:len(base) - (node.level - 1)]
  return '.'.join(base + ([node.module] if node.module else []))


def _dynamic_target(node: ast.Call) -> Optional[str]:
  """The constant module of `importlib.import_module('...')` / `__import__('...')`, if any."""
  func = node.func
  name = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', None)
  if name not in ('import_module', '__import__') or not node.args:
    return None
  arg = node.args[0]
  return arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None


def find_imports(source: str, path: str) -> list[Import]:
  """Every module the source imports, with its line and whether it is inside a function."""
  module, is_package = module_name(path)
  tree = ast.parse(source, filename=path)
  found = []

  def text(node):
    return ' '.join((ast.get_source_segment(source, node) or ast.unparse(node)).split())

  def visit(node, in_function):
    if isinstance(node, ast.Import):
      found.extend(Import(node.lineno, text(node), alias.name, in_function)
                   for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = _resolve(node, module, is_package)
      for alias in node.names:
        # `from pkg import name`: name may be a submodule, so it counts as one.
        target = base if alias.name == '*' else f'{base}.{alias.name}'
        found.append(Import(node.lineno, text(node), target, in_function))
    elif isinstance(node, ast.Call):
      target = _dynamic_target(node)
      if target is not None and target.split('.')[0] == PACKAGE:
        found.append(Import(node.lineno, text(node), target, False))
    in_function = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    for child in ast.iter_child_nodes(node):
      visit(child, in_function)

  visit(tree, False)
  return found


def check_source(source: str, path: str) -> list[str]:
  """Layering violations of one module, as 'path:line: message' strings."""
  src = component(module_name(path)[0])
  problems = []
  if src not in LAYERS:
    problems.append(f'{path}:1: {PACKAGE}/{src} has no layer: add it to LAYERS in '
                    'tests/test_layers.py and to docs/architecture.md')
  for imp in find_imports(source, path):
    messages = []
    if imp.in_function and imp.target.split('.')[0] not in LAZY_ALLOWED:
      messages.append(f'`{imp.text}` is inside a function; only '
                      f'{", ".join(sorted(LAZY_ALLOWED))} may be imported lazily: move it to '
                      'the top of the module')
    dst = component(imp.target)
    if imp.target.split('.')[0] != PACKAGE or src not in LAYERS or dst == src:
      pass
    elif dst not in LAYERS:
      messages.append(f'`{imp.text}` imports {PACKAGE}.{dst}, which has no layer')
    elif dst == 'configs' and src not in CONFIG_READERS:
      messages.append(f'`{imp.text}`: {src} reads configs/ directly; take the settings from the '
                      'config passed in (only main and tools load config files)')
    elif LAYERS[dst] > LAYERS[src]:
      messages.append(f'`{imp.text}` points up: {src} (rank {LAYERS[src]}) imports {dst} '
                      f'(rank {LAYERS[dst]})')
    elif LAYERS[dst] == LAYERS[src] and (src, dst) not in SIDEWAYS_ALLOWED:
      messages.append(f'`{imp.text}` points sideways: {src} and {dst} are both rank '
                      f'{LAYERS[src]}')
    for message in messages:
      line = f'{path}:{imp.line}: {message}'
      if line not in problems:  # `from x import a, b` names x.a and x.b: report once
        problems.append(line)
  return problems


def _modules() -> list[pathlib.Path]:
  return sorted(p for p in SOURCE_DIR.rglob('*.py') if '__pycache__' not in p.parts)


def _rel(p: pathlib.Path) -> str:
  return p.relative_to(ROOT).as_posix()


def _report(problems: list[str], what: str) -> str:
  return f'{len(problems)} {what} (docs/architecture.md):\n' + '\n'.join(problems)


# ------------------------------------------------------------------------------------------------
# The package itself.
# ------------------------------------------------------------------------------------------------


def test_every_package_has_a_layer():
  present = {component(module_name(_rel(p))[0]) for p in _modules()}
  assert present, f'no modules found under {SOURCE_DIR}'
  missing = sorted(present - set(LAYERS))
  if missing:
    pytest.fail(f'{PACKAGE}/ holds {missing} with no layer: place each in LAYERS in '
                'tests/test_layers.py and in docs/architecture.md', pytrace=False)


def test_imports_point_down():
  problems = [msg for p in _modules() for msg in check_source(p.read_text(), _rel(p))]
  if problems:
    pytest.fail(_report(problems, 'import(s) break the layering'), pytrace=False)


def test_modules_are_short():
  long = [f'{_rel(p)}: {n} lines' for p in _modules()
          if (n := len(p.read_text().splitlines())) > MAX_LINES]
  if long:
    pytest.fail(_report(long, f'module(s) longer than {MAX_LINES} lines'), pytrace=False)


# ------------------------------------------------------------------------------------------------
# The checker, on synthetic modules.
# ------------------------------------------------------------------------------------------------


def test_checker_accepts_downward_and_same_package_imports():
  source = ('"""Doc."""\n'
            'import numpy as np\n'
            'import ivd_jax\n'
            'import ivd_jax.geometry.warp\n'
            'from ivd_jax import errors\n'
            'from ivd_jax.models import unet\n'
            'from ivd_jax.sampling import views\n'
            'from . import export\n'
            'from .views import sample\n'
            'from .. import checkpoint\n')
  assert not check_source(source, 'ivd_jax/sampling/photo.py')
  assert not check_source('from ivd_jax import parallel\n', 'ivd_jax/checkpoint.py')
  assert not check_source('from ivd_jax.pipelines import train\n', 'ivd_jax/main.py')


def test_checker_reports_an_upward_import():
  source = 'import os\n\nfrom ivd_jax.pipelines import train\n'
  assert check_source(source, 'ivd_jax/data/pipeline.py') == [
      'ivd_jax/data/pipeline.py:3: `from ivd_jax.pipelines import train` points up: data '
      '(rank 5) imports pipelines (rank 6)']
  assert check_source('import ivd_jax.models.unet\n', 'ivd_jax/__init__.py') == [
      'ivd_jax/__init__.py:1: `import ivd_jax.models.unet` points up: __init__ (rank 0) '
      'imports models (rank 2)']
  # A relative import is resolved before it is judged.
  assert check_source('from ..roles import pairs\n', 'ivd_jax/models/unet.py') == [
      'ivd_jax/models/unet.py:1: `from ..roles import pairs` points up: models (rank 2) '
      'imports roles (rank 3)']
  # So is a constant importlib.import_module.
  problems = check_source('import importlib\nm = importlib.import_module("ivd_jax.tools.x")\n',
                          'ivd_jax/geometry/warp.py')
  assert len(problems) == 1 and problems[0].startswith('ivd_jax/geometry/warp.py:2: ')


def test_checker_reports_a_sideways_import():
  assert check_source('from ivd_jax import training\n', 'ivd_jax/data/builders.py') == [
      'ivd_jax/data/builders.py:1: `from ivd_jax import training` points sideways: data and '
      'training are both rank 5']
  # checkpoint -> parallel is the one allowed pair, and only that way round.
  assert check_source('from ivd_jax import checkpoint\n', 'ivd_jax/parallel.py') == [
      'ivd_jax/parallel.py:1: `from ivd_jax import checkpoint` points sideways: parallel and '
      'checkpoint are both rank 4']
  problems = check_source('from ivd_jax.geometry import cameras\n', 'ivd_jax/diffusion/x.py')
  assert problems == ['ivd_jax/diffusion/x.py:1: `from ivd_jax.geometry import cameras` points '
                      'sideways: diffusion and geometry are both rank 1']


def test_checker_reports_library_code_reading_configs():
  assert check_source('from ivd_jax.configs import common\n', 'ivd_jax/training/step.py') == [
      'ivd_jax/training/step.py:1: `from ivd_jax.configs import common`: training reads configs/ '
      'directly; take the settings from the config passed in (only main and tools load config '
      'files)']
  for reader in ('ivd_jax/main.py', 'ivd_jax/tools/warp_demo.py', 'ivd_jax/configs/cond.py'):
    assert check_source('from ivd_jax.configs import common\n', reader) == []


def test_checker_reports_a_function_level_import():
  source = ('def f():\n'
            '  import numpy as np\n'
            '  return np\n'
            '\n'
            'class A:\n'
            '  def g(self):\n'
            '    from ivd_jax.geometry import warp\n'
            '    return warp\n')
  assert check_source(source, 'ivd_jax/models/unet.py') == [
      'ivd_jax/models/unet.py:2: `import numpy as np` is inside a function; only safetensors, '
      'tensorflow, tensorflow_datasets, torch, transformers may be imported lazily: move it to '
      'the top of the module',
      'ivd_jax/models/unet.py:7: `from ivd_jax.geometry import warp` is inside a function; only '
      'safetensors, tensorflow, tensorflow_datasets, torch, transformers may be imported '
      'lazily: move it to the top of the module']
  # A class body or an `if` at module level is not a function.
  assert not check_source('if True:\n  import numpy\nclass B:\n  import os\n',
                          'ivd_jax/models/unet.py')


def test_checker_allows_lazy_optional_dependencies():
  source = ('def load(path):\n'
            '  import torch  # optional dependency\n'
            '  from safetensors import numpy as st\n'
            '  import tensorflow_datasets as tfds\n'
            '  async def inner():\n'
            '    from transformers.models import dpt\n'
            '  return torch.load(path), st, tfds, inner\n')
  assert not check_source(source, 'ivd_jax/tools/convert_depth.py')
  # A function-level import that also points up is reported for both.
  problems = check_source('def f():\n  import torch\n  from ivd_jax import io\n',
                          'ivd_jax/models/x.py')
  assert [p.split(': ', 1)[0] for p in problems] == ['ivd_jax/models/x.py:3'] * 2
  assert 'inside a function' in problems[0] and 'points up' in problems[1]


def test_checker_needs_a_layer_for_every_package():
  assert check_source('import os\n', 'ivd_jax/newpkg/x.py') == [
      'ivd_jax/newpkg/x.py:1: ivd_jax/newpkg has no layer: add it to LAYERS in '
      'tests/test_layers.py and to docs/architecture.md']
  assert check_source('from ivd_jax import newpkg\n', 'ivd_jax/tools/x.py') == [
      'ivd_jax/tools/x.py:1: `from ivd_jax import newpkg` imports ivd_jax.newpkg, which has no '
      'layer']


@pytest.mark.parametrize('path, name', [
    ('ivd_jax/__init__.py', '__init__'), ('ivd_jax/errors.py', 'errors'),
    ('ivd_jax/data/__init__.py', 'data'), ('ivd_jax/sampling/views.py', 'sampling'),
    ('ivd_jax/main.py', 'main')])
def test_component(path, name):
  assert component(module_name(path)[0]) == name
