"""Nothing lost, nothing silently wrong: bad inputs are refused with the reason, user errors are
one line `error: ...` with exit code 2, untrusted files never run code, names stay in the
workdir (the input, error-message and security findings of the issue)."""
import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
from PIL import Image
import pytest

from ivd_jax import checkpoint
from ivd_jax import errors
from ivd_jax.configs import eval as eval_config
from ivd_jax.configs import prepare as prepare_config
from ivd_jax.configs import sample as sample_config
from ivd_jax.data import plan as plan_lib
from ivd_jax.evaluation import images as images_lib
from ivd_jax.io import ingest
from ivd_jax.models import depth_estimator
from ivd_jax.models import unet as unet_lib
from ivd_jax.pipelines import eval as eval_pipeline
from ivd_jax.pipelines import prepare
from ivd_jax.pipelines import sample as sample_pipeline
from ivd_jax.sampling import photo
from ivd_jax.tools import convert_depth
from ivd_jax.tools import convert_inception
from ivd_jax.tools import convert_reference

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _photo_config(image, depth, kind='midas', **fields):
  s = sample_config.get_config('photo').sample
  s.update(dict(source_image=str(image), source_depth=str(depth), source_depth_kind=kind,
                **fields))
  return s


def _ramp(height, width, lo=3000.0, hi=12000.0):
  """MiDaS-like raw disparity, varying down the rows."""
  return (lo + (hi - lo) * np.linspace(0, 1, height)[:, None] * np.ones((1, width))).astype(
      np.float32)


def _folder_config(folder, **data):
  config = prepare_config.get_config('folder')
  config.data.folder = str(folder)
  config.data.resolution = 16
  config.data.labels = 'none'
  config.data.prepare_workers = 1
  config.log.progress = False
  config.data.update(data)
  return config


def _main(*args, cwd):
  """`python -m ivd_jax.main ARGS` -> (exit code, stderr)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in [env.get('PYTHONPATH')] if p])
  done = subprocess.run([sys.executable, '-m', 'ivd_jax.main', *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  return done.returncode, done.stderr


def _assert_one_line_error(result, *needles):
  code, stderr = result
  assert 'Traceback' not in stderr, stderr
  lines = [line for line in stderr.splitlines() if line.startswith('error: ')]
  assert code == 2 and len(lines) == 1, stderr
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  return lines[0]


# ------------------------------------------------------------------------------------------------
# 5. A 16-bit photo as view 0 is converted, not clipped to white.
# ------------------------------------------------------------------------------------------------


def test_photo_16bit_is_not_clipped_to_white(tmp_path):
  gray16 = (np.linspace(0, 65535, 60)[None, :] * np.ones((40, 1))).astype(np.uint16)
  Image.fromarray(gray16).save(tmp_path / 'g16.png')
  assert Image.open(tmp_path / 'g16.png').mode.startswith('I;16')
  np.save(tmp_path / 'g16.npy', _ramp(40, 60))
  rgbd = photo.load_source_view(_photo_config(tmp_path / 'g16.png', tmp_path / 'g16.npy'), 32,
                                near=0.5, far=100.0)
  gray8 = np.round(gray16 / 65535.0 * 255).astype(np.uint8)
  want = ingest.resize_crop_rgb(Image.fromarray(np.repeat(gray8[..., None], 3, -1)), 32) / 255.0
  np.testing.assert_allclose(rgbd[..., :3], want, atol=1e-6)
  assert rgbd[..., :3].min() < 0.2 and rgbd[..., :3].max() > 0.8  # a ramp, not white


# ------------------------------------------------------------------------------------------------
# 6. Photo depth that holds no depth is refused, naming sample.source_depth (prepare's rule).
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('depth,kind,needle', [
    (np.full((8, 8), np.nan), 'midas', 'no valid value'),
    (np.full((8, 8), np.inf), 'midas', 'no valid value'),
    (np.zeros((8, 8)), 'midas', 'zero or negative everywhere'),
    (-_ramp(8, 8), 'midas', 'zero or negative everywhere'),
    (np.zeros((8, 8)), 'depth', 'no valid value'),
    (-_ramp(8, 8), 'depth', 'no valid value'),
    (np.full((8, 8), -np.inf), 'depth', 'no valid value'),
    (np.full((8, 8), 3000.0), 'midas', 'constant'),
    (np.full((8, 8), 2.0), 'depth', 'constant'),
    (np.where(np.arange(64).reshape(8, 8) < 40, np.nan, _ramp(8, 8)), 'midas',
     'invalid values'),
])
def test_photo_depth_without_depth_is_refused(tmp_path, depth, kind, needle):
  Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / 'photo.png')
  np.save(tmp_path / 'depth.npy', np.asarray(depth, np.float32))
  s = _photo_config(tmp_path / 'photo.png', tmp_path / 'depth.npy', kind)
  with pytest.raises(errors.ConfigError, match=needle) as e:
    photo.load_source_view(s, 8, near=0.5, far=100.0)
  assert e.value.field == 'sample.source_depth'


def test_photo_depth_with_a_few_gaps_is_filled(tmp_path):
  Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / 'photo.png')
  depth = _ramp(8, 8)
  depth[0, :3] = np.nan
  depth[1, 0] = -1.0  # MiDaS disparity <= 0: at infinity (the far plane), as the reference
  np.save(tmp_path / 'depth.npy', depth)
  rgbd = photo.load_source_view(_photo_config(tmp_path / 'photo.png', tmp_path / 'depth.npy'),
                                8, near=0.5, far=100.0)
  assert np.isfinite(rgbd).all() and rgbd[1, 0, 3] == 1.0


# ------------------------------------------------------------------------------------------------
# 7. prepare skips MiDaS disparity that is zero / negative / constant everywhere, with the reason.
# ------------------------------------------------------------------------------------------------


def test_prepare_skips_midas_disparity_without_depth(tmp_path):
  folder = tmp_path / 'images'
  folder.mkdir()
  for name, disparity in (('good', _ramp(24, 24)), ('zero', np.zeros((24, 24))),
                          ('negative', -_ramp(24, 24)), ('constant', np.full((24, 24), 4e3))):
    Image.fromarray(np.full((24, 24, 3), 100, np.uint8)).save(folder / f'{name}.png')
    np.savez(folder / f'{name}.npz', np.asarray(disparity, np.float16))
  summary = prepare.run(_folder_config(folder, max_skipped_fraction=1.0), str(tmp_path / 'wd'))
  reasons = {s['file']: s['reason'] for s in summary['skipped']}
  assert summary['num_written'] == 1 and set(reasons) == {'zero.png', 'negative.png',
                                                           'constant.png'}
  assert 'zero or negative everywhere' in reasons['zero.png']
  assert 'zero or negative everywhere' in reasons['negative.png']
  assert 'constant' in reasons['constant.png']


# ------------------------------------------------------------------------------------------------
# 8. prepare fails when it writes nothing or skips more than data.max_skipped_fraction.
# ------------------------------------------------------------------------------------------------


def test_prepare_without_depth_files_fails(tmp_path):
  folder = tmp_path / 'images'
  folder.mkdir()
  for i in range(3):
    Image.fromarray(np.full((24, 24, 3), 50 * i, np.uint8)).save(folder / f'{i}.png')
  line = _assert_one_line_error(
      _main('--config=prepare:folder', f'--workdir={tmp_path / "wd"}',
            f'--config.data.folder={folder}', '--config.data.resolution=16',
            '--config.data.prepare_workers=1', '--config.log.progress=False', cwd=tmp_path),
      'wrote 0 examples', '3 of 3 images were skipped', 'no depth file', 'Fix:')
  assert 'prepare_summary.json' in line
  summary = json.loads((tmp_path / 'wd' / 'prepare_summary.json').read_text())
  assert summary['num_written'] == 0 and summary['num_images_skipped'] == 3


def test_prepare_fails_when_most_images_are_skipped(tmp_path):
  folder = tmp_path / 'images'
  folder.mkdir()
  for i in range(4):
    Image.fromarray(np.full((24, 24, 3), 50 * i, np.uint8)).save(folder / f'{i}.png')
  np.savez(folder / '0.npz', _ramp(24, 24))  # 3 of 4 images have no depth
  with pytest.raises(errors.ConfigError, match='3 of 4 images were skipped') as e:
    prepare.run(_folder_config(folder), str(tmp_path / 'wd'))
  assert e.value.field == 'data.max_skipped_fraction'
  summary = prepare.run(_folder_config(folder, max_skipped_fraction=0.75), str(tmp_path / 'wd'))
  assert summary['num_written'] == 1 and summary['max_skipped_fraction'] == 0.75
  with pytest.raises(errors.ConfigError, match='data.max_skipped_fraction'):
    prepare.run(_folder_config(folder, max_skipped_fraction=1.5), str(tmp_path / 'wd'))


# ------------------------------------------------------------------------------------------------
# 9. eval refuses generated images at another size or in another range unless told to resize.
# ------------------------------------------------------------------------------------------------


def _eval_files_config(tmp_path, weights, generated, **fields):
  config = eval_config.get_config('files')
  config.data.dir = str(tmp_path / 'data')
  config.eval.update(dict(inception_weights=weights, generated=str(generated), num_images=4,
                          batch_size=8, kid_subsets=2, kid_subset_size=4, **fields))
  return config


def test_eval_refuses_other_size_and_float_255(tmp_path, inception_weights):
  (tmp_path / 'data').mkdir()
  (tmp_path / 'data' / 'metadata.json').write_text(json.dumps({'resolution': 16}))
  rng = np.random.default_rng(0)
  np.savez(tmp_path / 'big.npz', images=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
  config = _eval_files_config(tmp_path, inception_weights, tmp_path / 'big.npz')
  with pytest.raises(errors.ConfigError, match=r'32x32 px but the real images are 16x16') as e:
    eval_pipeline.evaluate(config, str(tmp_path))
  assert e.value.field == 'eval.generated' and 'resize_generated' in str(e.value)
  np.savez(tmp_path / 'f255.npz', images=rng.uniform(0, 255, (4, 16, 16, 3)).astype(np.float32))
  config = _eval_files_config(tmp_path, inception_weights, tmp_path / 'f255.npz')
  with pytest.raises(errors.ConfigError, match=r'float images span \[.*\], not \[0, 1\]') as e:
    eval_pipeline.evaluate(config, str(tmp_path))
  assert e.value.field == 'eval.generated'
  # A reference folder sets the real size too.
  for i in range(2):
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / f'r{i}.png')
  assert images_lib.image_size(str(tmp_path), 'reference') == (8, 8)
  assert images_lib.image_size(str(tmp_path / 'big.npz'), 'generated') == (32, 32)


def test_resize_generated_and_read_16bit_folders(tmp_path):
  images_lib.check_size((32, 32), (16, 16), resize=True, field='eval.generated')
  rng = np.random.default_rng(1)
  big = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
  small = images_lib.resize_images(big, (16, 16))
  assert small.shape == (2, 16, 16, 3) and small.dtype == np.uint8
  np.testing.assert_array_equal(small[0], ingest.resize_crop_rgb(Image.fromarray(big[0]), 16))
  # A 16-bit PNG among generated images is read as prepare reads it, not clipped to white.
  Image.fromarray((np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)).save(
      tmp_path / 'g16.png')
  got = images_lib.read_images(str(tmp_path), field='generated').images
  assert got.shape == (1, 8, 8, 3) and got.min() == 0 and 0 < got.mean() < 255
  # Integers in 0..255 are fine; an .npy, or a pickle, is named as such.
  np.savez(tmp_path / 'ints.npz', images=big.astype(np.int64))
  np.testing.assert_array_equal(
      images_lib.read_images(str(tmp_path / 'ints.npz'), field='generated').images, big)
  (tmp_path / 'garbage.npz').write_bytes(b'garbage' * 20)
  with pytest.raises(errors.ConfigError, match='eval.generated') as e:
    images_lib.read_images(str(tmp_path / 'garbage.npz'), field='generated')
  assert 'allow_pickle' not in str(e.value) and 'unsafely' not in str(e.value)


# ------------------------------------------------------------------------------------------------
# 10. A symlink loop in the image folder: each real file listed once.
# ------------------------------------------------------------------------------------------------


def test_symlink_loop_lists_each_file_once(tmp_path):
  folder = tmp_path / 'images'
  (folder / 'sub').mkdir(parents=True)
  for rel in ('a.png', 'sub/b.png'):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / rel)
  os.symlink('..', folder / 'sub' / 'loop')  # sub/loop/sub/loop/... back to the top
  os.symlink('sub', folder / 'twin')  # the same folder under another name
  os.symlink('a.png', folder / 'link.png')  # the same file under another name
  items, classes, ignored = plan_lib.list_folder(folder, 'none', [])
  assert sorted(rel for rel, _ in items) == ['a.png', 'sub/b.png'] and not classes
  duplicates = {i['file'] for i in ignored if 'the same file' in i['reason']}
  assert duplicates == {'link.png', 'twin/b.png'}


# ------------------------------------------------------------------------------------------------
# 11. User errors are one line `error: ...`, exit code 2, no traceback.
# ------------------------------------------------------------------------------------------------


def _read_only_dir(tmp_path):
  ro = tmp_path / 'readonly'
  ro.mkdir()
  ro.chmod(0o555)
  if os.access(ro, os.W_OK):  # root ignores the mode bits; sysfs refuses new folders
    return '/sys/ivd_jax_test_workdir'
  return str(ro / 'wd')


@pytest.mark.parametrize('case', ['no_config', 'unknown_field', 'unknown_section', 'mesh',
                                  'workdir_file', 'workdir_read_only'])
def test_cli_errors_are_one_line(tmp_path, case):
  (tmp_path / 'file').write_text('not a folder')
  wd = f'--workdir={tmp_path / "wd"}'
  args, needles = {
      'no_config': ((wd,), ('--config is required', 'Fix:')),
      'unknown_field': (('--config=prepare', wd, '--config.data.resolutio=8'),
                        ('--config.data.resolutio', 'no field', 'resolution', 'Fix:')),
      'unknown_section': (('--config=prepare', wd, '--config.train.no_such=1'),
                          ('--config.train.no_such', 'no field', 'Fix:')),
      'mesh': (('--config=uncond', wd, '--config.mesh.shape=(a,b)'),
               ('config.mesh.shape', 'Fix:')),
      'workdir_file': (('--config=prepare', f'--workdir={tmp_path / "file"}'),
                       ('--workdir', 'is a file', 'Fix:')),
      'workdir_read_only': (('--config=prepare', f'--workdir={_read_only_dir(tmp_path)}'),
                            ('--workdir', 'cannot be written', 'Fix:')),
  }[case]
  _assert_one_line_error(_main(*args, cwd=tmp_path), *needles)


def test_bad_depth_files_and_tiny_photos_are_one_line_errors(tmp_path):
  folder = tmp_path / 'images'
  folder.mkdir()
  for name in ('empty', 'garbage', 'pickled', 'tiny'):
    size = 1 if name == 'tiny' else 24
    Image.fromarray(np.full((size, size, 3), 90, np.uint8)).save(folder / f'{name}.png')
  (folder / 'empty.npz').write_bytes(b'')
  (folder / 'garbage.npy').write_bytes(b'garbage' * 50)
  np.save(folder / 'pickled.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True)
  np.savez(folder / 'tiny.npz', np.full((1, 1), 3000.0, np.float32))
  result = _main('--config=prepare:folder', f'--workdir={tmp_path / "wd"}',
                 f'--config.data.folder={folder}', '--config.data.resolution=16',
                 '--config.data.prepare_workers=1', '--config.log.progress=False',
                 cwd=tmp_path)
  _assert_one_line_error(result, 'wrote 0 examples', 'Fix:')
  reasons = {s['file']: s['reason'] for s in json.loads(
      (tmp_path / 'wd' / 'prepare_summary.json').read_text())['skipped']}
  assert 'empty or cut off' in reasons['empty.png']
  assert 'pickled Python objects' in reasons['garbage.png']
  assert 'pickled Python objects' in reasons['pickled.png']
  assert 'short side must be at least' in reasons['tiny.png']
  for reason in reasons.values():  # numpy's advice to load untrusted files unsafely
    assert 'allow_pickle=' not in reason and 'unsafely' not in reason
  # The photo start: the same reasons as ConfigErrors naming the field.
  for depth in ('empty.npz', 'garbage.npy', 'pickled.npy'):
    with pytest.raises(errors.ConfigError) as e:
      photo.load_source_view(_photo_config(folder / 'garbage.png', folder / depth), 16,
                             near=0.5, far=100.0)
    assert e.value.field == 'sample.source_depth' and 'unsafely' not in str(e.value)
  with pytest.raises(errors.ConfigError, match='at least') as e:
    photo.load_source_view(_photo_config(folder / 'tiny.png', folder / 'tiny.npz'), 16,
                           near=0.5, far=100.0)
  assert e.value.field == 'sample.source_image'


def test_sample_photo_errors_are_one_line(tmp_path, fixtures_dir):
  with np.load(fixtures_dir / 'adm_small_uncond.npz') as f:
    state = {k[len('param/'):]: f[k] for k in f.files if k.startswith('param/')}
  kwargs = json.loads((fixtures_dir / 'adm_small_uncond.json').read_text())['constructor_kwargs']
  model, params = convert_reference.from_state_dict(state, kwargs)
  config = convert_reference.model_config(model.clone(in_channels=10)).to_dict()
  checkpoint.save_params(str(tmp_path / 'gc'), unet_lib.widen_input(params, 10),
                         {'model': config})
  Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / 'tiny.png')
  np.save(tmp_path / 'depth.npy', _ramp(8, 8))
  _assert_one_line_error(
      _main('--config=sample:photo', f'--workdir={tmp_path / "wd"}',
            f'--config.sample.cond={tmp_path / "gc"}',
            f'--config.sample.source_image={tmp_path / "tiny.png"}',
            f'--config.sample.source_depth={tmp_path / "depth.npy"}', cwd=tmp_path),
      'config.sample.source_image', 'at least', 'Fix:')


# ------------------------------------------------------------------------------------------------
# 12. Converters never unpickle code from a user's file unless told to.
# ------------------------------------------------------------------------------------------------


class _Marker:
  """Unpickling this creates the marker file: what a malicious checkpoint would do."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, 'w'))


def test_converters_never_run_pickled_code(tmp_path):
  torch = pytest.importorskip('torch')
  marker = tmp_path / 'MARKER'
  evil = tmp_path / 'evil.pt'
  torch.save({'input_blocks.0.0.weight': torch.zeros(2), 'payload': _Marker(marker)}, evil)
  (tmp_path / 'config.json').write_text('{}')
  with pytest.raises(errors.UserError, match='--allow_pickle'):
    convert_reference.main(['--checkpoint', str(evil), '--config', str(tmp_path / 'config.json'),
                            '--out', str(tmp_path / 'out')])
  with pytest.raises(errors.UserError, match='neither TorchScript nor a state dict'):
    convert_inception.read_state_dict(str(evil))
  assert not marker.exists()
  assert not convert_inception.is_torchscript(str(evil))
  assert convert_inception.is_torchscript(convert_inception.wheel_weights_path())
  # The explicit flag takes the unsafe path (trusted files only).
  convert_reference._load_state_dict(str(evil), allow_pickle=True)  # pylint: disable=protected-access
  assert marker.exists()


# ------------------------------------------------------------------------------------------------
# 13. Run and report names are one path component.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['../../x', 'a/b', '..', '/abs'])
def test_names_stay_in_the_workdir(tmp_path, inception_weights, name):
  config = sample_config.get_config('tiny')
  config.sample.run_name = name
  with pytest.raises(errors.ConfigError) as e:
    sample_pipeline.sample_and_export(config, str(tmp_path / 'wd'))
  assert e.value.field == 'sample.run_name'
  config = eval_config.get_config('files')
  config.eval.update(dict(inception_weights=inception_weights, name=name,
                          generated=str(tmp_path)))
  with pytest.raises(errors.ConfigError) as e:
    eval_pipeline.evaluate(config, str(tmp_path / 'wd'))
  assert e.value.field == 'eval.name'
  assert not (tmp_path / 'x').exists() and os.listdir(tmp_path) in ([], ['wd'])


# ------------------------------------------------------------------------------------------------
# 14. convert_depth --verify never downloads from the hub.
# ------------------------------------------------------------------------------------------------


def test_convert_depth_verify_is_local_only(tmp_path, monkeypatch):
  transformers = pytest.importorskip('transformers')
  calls = []

  def from_pretrained(path, **kwargs):
    calls.append((path, kwargs))
    raise OSError(f'{path} is not a local folder')

  monkeypatch.setattr(depth_estimator, 'load_depth_model',
                      lambda weights: (ml_collections.ConfigDict(), {}, None))
  monkeypatch.setattr(transformers.AutoModelForDepthEstimation, 'from_pretrained',
                      from_pretrained)
  with pytest.raises(OSError):
    convert_depth.verify_against_transformers(str(tmp_path / 'mistyped'), 'weights.npz')
  assert calls == [(str(tmp_path / 'mistyped'), {'local_files_only': True})]
