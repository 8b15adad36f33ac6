"""prepare mode: procedural and folder sources, bad inputs, depth sources, resume, workers."""
import io
import json
import os
import pathlib
import sys

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest
import skimage.data
import tensorflow_datasets as tfds

from ivd_jax.configs import prepare as prepare_config
from ivd_jax import errors
from ivd_jax import parallel
from ivd_jax.data import pipeline
from ivd_jax.data import procedural
from ivd_jax.data import records
from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.io import ingest
from ivd_jax.pipelines import prepare

RES = 32


def read_split(path, split='train'):
  """All examples of a split, keyed by file, with images decoded by PIL."""
  skip = tfds.decode.SkipDecoding
  source = tfds.builder_from_directory(str(path)).as_data_source(
      split=split, decoders={'rgb': skip(), 'depth': skip()})
  rows = {}
  for i in range(len(source)):
    ex = dict(source[i])
    ex['rgb'] = records.decode_png(ex['rgb'])
    ex['depth'] = records.decode_png(ex['depth'])
    rows[ex['file'].decode()] = ex
  return rows


def folder_config(folder, **overrides):
  config = prepare_config.get_config('folder')
  config.data.folder = str(folder)
  config.data.resolution = RES
  config.data.prepare_workers = 1
  config.log.progress = False
  for k, v in overrides.items():
    config.data[k] = v
  return config


def expected_crop(width, height, res=RES):
  scale = res / min(width, height)
  new_w, new_h = max(res, round(width * scale)), max(res, round(height * scale))
  return new_w, new_h, (new_w - res) // 2, (new_h - res) // 2


def midas_disparity(height, width):
  """MiDaS-like raw disparity: larger towards the bottom (nearer ground), thousands."""
  rows = np.linspace(0, 1, height)[:, None]
  cols = np.linspace(0, 1, width)[None, :]
  return (3000 + 11000 * rows + 1500 * np.sin(6 * cols) * rows).astype(np.float16)


def save_png(path, array):
  Image.fromarray(array).save(path)


# ------------------------------------------------------------------------------------------------
# A folder of real photographs (scikit-image) with every kind of bad input.
# ------------------------------------------------------------------------------------------------

EXPECTED_WRITTEN = {
    'loose.png': -1, 'animals/chelsea.png': 0, 'animals/cmyk.jpg': 0,
    'objects/camera16.png': 1, 'objects/coffee.jpg': 1, 'objects/coins.png': 1,
    'objects/infdepth.png': 1, 'objects/logo.png': 1, 'objects/rocket.jpg': 1,
    'space/hubble.jpg': 2}
EXPECTED_SKIPPED = {
    'animals/truncated.jpg': 'truncated', 'objects/garbage.jpg': 'corrupt',
    'objects/nodepth.png': 'no depth file', 'objects/mismatch.png': 'aspect ratio differs',
    'objects/allnan.png': 'invalid values', 'objects/noarr.png': 'no array arr_0',
    'notes.txt': 'not an image'}
EXPECTED_CONVERTED = {
    'animals/cmyk.jpg': 'CMYK -> RGB', 'objects/camera16.png': '16-bit grayscale',
    'objects/coins.png': 'L -> RGB', 'objects/logo.png': 'alpha (RGBA) composited on white',
    'objects/rocket.jpg': 'invalid depth values filled',
    'objects/infdepth.png': 'invalid depth values filled'}


@pytest.fixture(scope='module')
def photo_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp('photos')
  for d in ('animals', 'objects', 'space'):
    (root / d).mkdir()

  def with_depth(rel, image, *, fmt='npz', disparity=None):
    h, w = image.shape[:2]
    disp = midas_disparity(h, w) if disparity is None else disparity
    stem = root / pathlib.Path(rel).with_suffix('')
    if fmt == 'npz':
      np.savez_compressed(f'{stem}.npz', disp)
    else:
      np.save(f'{stem}.npy', disp)

  astronaut, chelsea = skimage.data.astronaut(), skimage.data.chelsea()
  save_png(root / 'loose.png', skimage.data.colorwheel())
  with_depth('loose.png', skimage.data.colorwheel())
  save_png(root / 'animals/chelsea.png', chelsea)
  with_depth('animals/chelsea.png', chelsea)
  Image.fromarray(astronaut).convert('CMYK').save(root / 'animals/cmyk.jpg', quality=95)
  with_depth('animals/cmyk.jpg', astronaut)
  buffer = io.BytesIO()
  Image.fromarray(astronaut).save(buffer, format='JPEG')
  (root / 'animals/truncated.jpg').write_bytes(buffer.getvalue()[:len(buffer.getvalue()) // 2])
  with_depth('animals/truncated.jpg', astronaut)

  camera = skimage.data.camera()
  Image.fromarray(camera.astype(np.uint16) * 257).save(root / 'objects/camera16.png')
  with_depth('objects/camera16.png', camera)
  coffee = skimage.data.coffee()
  Image.fromarray(coffee).save(root / 'objects/coffee.jpg', quality=95)
  with_depth('objects/coffee.jpg', coffee, fmt='npy')
  coins = skimage.data.coins()  # 303 x 384: depth at half size, same aspect ratio
  save_png(root / 'objects/coins.png', coins)
  half = np.asarray(Image.fromarray(midas_disparity(303, 384).astype(np.float32)).resize(
      (192, 152), Image.NEAREST)).astype(np.float16)
  with_depth('objects/coins.png', coins, disparity=half)
  logo = np.concatenate([chelsea, np.full(chelsea.shape[:2] + (1,), 255, np.uint8)], -1)
  logo[:, :225, 3] = 0  # left half transparent
  save_png(root / 'objects/logo.png', logo)
  with_depth('objects/logo.png', logo)
  rocket = skimage.data.rocket()
  Image.fromarray(rocket).save(root / 'objects/rocket.jpg', quality=95)
  disp = midas_disparity(*rocket.shape[:2])
  disp[100:110, 200:220] = np.nan  # 0.07 % of the pixels
  with_depth('objects/rocket.jpg', rocket, disparity=disp)
  (root / 'objects/garbage.jpg').write_bytes(np.random.default_rng(0).bytes(5000))
  with_depth('objects/garbage.jpg', chelsea)
  save_png(root / 'objects/nodepth.png', chelsea)
  save_png(root / 'objects/mismatch.png', chelsea)
  with_depth('objects/mismatch.png', chelsea, disparity=midas_disparity(100, 100))
  save_png(root / 'objects/allnan.png', chelsea)
  disp = midas_disparity(*chelsea.shape[:2])
  disp[::2] = np.nan
  with_depth('objects/allnan.png', chelsea, disparity=disp)
  save_png(root / 'objects/infdepth.png', chelsea)
  disp = midas_disparity(*chelsea.shape[:2])
  disp[5, 7] = np.inf
  disp[250, 400] = -np.inf
  with_depth('objects/infdepth.png', chelsea, disparity=disp)
  save_png(root / 'objects/noarr.png', chelsea)
  np.savez(root / 'objects/noarr.npz', depth=midas_disparity(*chelsea.shape[:2]))
  hubble = skimage.data.hubble_deep_field()
  Image.fromarray(hubble).save(root / 'space/hubble.jpg', quality=90)
  with_depth('space/hubble.jpg', hubble)
  (root / 'notes.txt').write_text('not an image')
  return root


@pytest.fixture(scope='module')
def folder_dataset(photo_folder, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('folder_work')
  summary = prepare.run(folder_config(photo_folder), str(workdir))
  return workdir, summary


def test_folder_summary_counts_skips_and_classes(folder_dataset):
  workdir, summary = folder_dataset
  on_disk = json.loads((workdir / 'prepare_summary.json').read_text())
  assert on_disk == json.loads(json.dumps(summary))
  assert summary['num_written'] == len(EXPECTED_WRITTEN) == 10
  assert summary['num_skipped'] == len(EXPECTED_SKIPPED) == 7
  reasons = {s['file']: s['reason'] for s in summary['skipped']}
  assert set(reasons) == set(EXPECTED_SKIPPED)
  for file, needle in EXPECTED_SKIPPED.items():
    assert needle in reasons[file], (file, reasons[file])
  notes = {}
  for c in summary['converted']:
    notes.setdefault(c['file'], []).append(c['note'])
  assert set(notes) == set(EXPECTED_CONVERTED) | {'objects/coins.png'}
  for file, needle in EXPECTED_CONVERTED.items():
    assert any(needle in n for n in notes[file]), (file, notes[file])
  assert any('resized to the image size 384x303' in n for n in notes['objects/coins.png'])
  assert summary['classes'] == ['animals', 'objects', 'space']
  assert summary['label_counts'] == {'-1': 1, '0': 2, '1': 6, '2': 1}
  meta = records.load_metadata(workdir / 'data')
  assert meta['classes'] == ['animals', 'objects', 'space'] and meta['resolution'] == RES


def test_folder_examples_exact(folder_dataset, photo_folder):
  """Labels by class folder; RGB = Lanczos short side + centre crop; depth = docs/method.md §3 of
  the nearest-resized crop of the MiDaS disparity, to 16-bit rounding."""
  workdir, _ = folder_dataset
  rows = read_split(workdir / 'data')
  assert {f: int(r['label']) for f, r in rows.items()} == EXPECTED_WRITTEN

  chelsea = skimage.data.chelsea()
  h, w = chelsea.shape[:2]
  new_w, new_h, left, top = expected_crop(w, h)
  assert (new_w, new_h, left, top) == (48, 32, 8, 0)
  want_rgb = np.asarray(Image.fromarray(chelsea).resize((new_w, new_h), Image.LANCZOS))
  want_rgb = want_rgb[top:top + RES, left:left + RES]
  np.testing.assert_array_equal(rows['animals/chelsea.png']['rgb'], want_rgb)

  disp = midas_disparity(h, w).astype(np.float32)
  rr = np.floor((np.arange(new_h) + 0.5) * h / new_h).astype(int)
  cc = np.floor((np.arange(new_w) + 0.5) * w / new_w).astype(int)
  crop = disp[rr][:, cc][top:top + RES, left:left + RES]
  want_zbuf = np.asarray(depth_lib.zbuf_from_midas(crop, 0.5, 100.0))
  got_zbuf = ingest.zbuf_from_uint16(rows['animals/chelsea.png']['depth'])
  np.testing.assert_allclose(got_zbuf, want_zbuf, atol=0.5 / 65535 + 1e-7)
  # The nearest point of the crop lands on the near plane (zbuf 0); depth grows upwards.
  assert got_zbuf.min() == 0.0 and got_zbuf[0].mean() > got_zbuf[-1].mean()

  # Conversions: 16-bit grayscale -> equal channels matching the 8-bit original; CMYK close to
  # the RGB original (JPEG loss only); the transparent half of an RGBA image -> white.
  cam = rows['objects/camera16.png']['rgb']
  assert (cam[..., 0] == cam[..., 1]).all() and (cam[..., 1] == cam[..., 2]).all()
  want_cam = np.asarray(Image.fromarray(skimage.data.camera()).resize((RES, RES), Image.LANCZOS))
  np.testing.assert_array_equal(cam[..., 0], want_cam)
  astro = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((RES, RES), Image.LANCZOS))
  assert np.abs(rows['animals/cmyk.jpg']['rgb'].astype(float) - astro).mean() < 4.0
  logo = rows['objects/logo.png']['rgb']
  assert (logo[:, :12] == 255).all() and (logo[:, 20:] != 255).any(-1).mean() > 0.9
  for row in rows.values():
    assert row['rgb'].shape == (RES, RES, 3) and row['depth'].shape == (RES, RES)
    np.testing.assert_array_equal(row['view'], cameras.SOURCE_VIEW)


def test_folder_read_back_through_pipeline(folder_dataset):
  """The folder dataset streamed on 8 simulated devices, in file order: labels as listed."""
  workdir, _ = folder_dataset
  config = folder_config('unused')
  config.data.dir = str(workdir / 'data')
  config.data.num_classes = 3
  mesh = parallel.make_mesh(ml_collections.ConfigDict({'shape': (8, 1)}))
  it = pipeline.create_input_iterator(config.data, global_batch_size=8, mesh=mesh, seed=0,
                                      shuffle=False, num_epochs=1)
  batch = next(it)
  assert batch['rgbd'].shape == (8, RES, RES, 4) and len(batch['rgbd'].sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(batch['label']), [-1, 0, 0, 1, 1, 1, 1, 1])
  rows = read_split(workdir / 'data')
  first = rows['loose.png']
  zbuf = ingest.zbuf_from_uint16(first['depth'])[..., None]
  want = np.concatenate([first['rgb'] / 255.0, zbuf], -1) * 2 - 1
  np.testing.assert_allclose(np.asarray(batch['rgbd'][0]), want, atol=1e-6)
  with pytest.raises(StopIteration):
    next(it)  # 10 examples, one full batch of 8 per epoch
  config.data.num_classes = 1000  # e.g. the imagenet128 preset on a 3-class folder
  with pytest.raises(errors.ConfigError, match='has 3 classes') as e:
    pipeline.create_input_iterator(config.data, global_batch_size=8, mesh=mesh, seed=0)
  assert e.value.field == 'data.num_classes'


@pytest.mark.parametrize('field,overrides,needle', [
    ('data.folder', dict(folder=''), 'no image folder'),
    ('data.folder', dict(folder='/nonexistent/images'), 'does not exist'),
    ('data.depth', dict(depth=''), 'needs a depth source'),
    ('data.depth', dict(depth='exact'), 'needs a depth source'),
    ('data.depth', dict(depth='lidar'), 'unknown depth source'),
    ('data.estimator', dict(depth='estimator', estimator=''), 'does not name'),
    ('data.depth_map_kind', dict(depth='depth_map', depth_map_kind='log'), 'unknown kind'),
    ('data.source', dict(source='web'), 'unknown source'),
    ('data.resolution', dict(resolution=4), 'too small'),
    ('data.num_classes', dict(num_classes=1000), 'has 3 class folders'),
])
def test_config_errors_name_the_field(tmp_path, photo_folder, field, overrides, needle):
  overrides = dict(overrides)
  if 'folder' not in overrides:
    overrides['folder'] = str(photo_folder)
  with pytest.raises(errors.ConfigError) as e:
    prepare.run(folder_config(**overrides), str(tmp_path))
  assert e.value.field == field and needle in str(e.value)
  assert not (tmp_path / 'prepare_summary.json').exists()


def test_missing_data_field_is_a_config_error(tmp_path, photo_folder):
  """prepare has no fallback numbers: a data section without a field is reported, not filled."""
  config = folder_config(photo_folder)
  del config.data['max_invalid_depth']
  with pytest.raises(errors.ConfigError, match='data_section') as e:
    prepare.run(config, str(tmp_path))
  assert e.value.field == 'data.max_invalid_depth'


def test_empty_folder_is_an_error(tmp_path):
  empty = tmp_path / 'empty'
  (empty / 'sub').mkdir(parents=True)
  (empty / 'sub' / 'readme.txt').write_text('x')
  with pytest.raises(errors.ConfigError, match='contains no image files') as e:
    prepare.run(folder_config(empty), str(tmp_path / 'work'))
  assert e.value.field == 'data.folder'


def test_depth_maps_metric_png_and_inverse_npy(tmp_path):
  """16-bit PNG depth in millimetres (metric) and float .npy disparity (inverse)."""
  images = tmp_path / 'images'
  images.mkdir()
  for kind in ('metric', 'inverse'):
    (tmp_path / f'depth_{kind}').mkdir()
  coffee = skimage.data.coffee()  # 400 x 600
  save_png(images / 'a.png', coffee)
  save_png(images / 'b.png', coffee)
  rows = np.linspace(0, 1, 400)[:, None] * np.ones((1, 600))
  metric_m = 0.8 + 4.0 * (1 - rows)  # 0.8 m at the bottom, 4.8 m at the top
  Image.fromarray(np.round(metric_m * 1000).astype(np.uint16)).save(
      tmp_path / 'depth_metric' / 'a.png')
  np.save(tmp_path / 'depth_inverse' / 'b.npy', (1.0 / metric_m).astype(np.float32))
  new_w, new_h, left, top = expected_crop(600, 400)
  rr = np.floor((np.arange(new_h) + 0.5) * 400 / new_h).astype(int)
  cc = np.floor((np.arange(new_w) + 0.5) * 600 / new_w).astype(int)

  for name, kind, scale, raw in (('a.png', 'metric', 1e-3, np.round(metric_m * 1000)),
                                 ('b.png', 'inverse', 1.0, 1.0 / metric_m)):
    config = folder_config(images, depth='depth_map',
                           depth_folder=str(tmp_path / f'depth_{kind}'), depth_map_kind=kind,
                           depth_map_scale=scale,
                           dir=str(tmp_path / f'data_{kind}'))
    config.data.labels = 'none'
    summary = prepare.run(config, str(tmp_path / f'work_{kind}'))
    assert summary['num_written'] == 1 and summary['num_skipped'] == 1  # the other has no depth
    got = ingest.zbuf_from_uint16(read_split(tmp_path / f'data_{kind}')[name]['depth'])
    crop = raw.astype(np.float32)[rr][:, cc][top:top + RES, left:left + RES].astype(np.float64)
    planar = crop * scale if kind == 'metric' else 1.0 / (crop * scale)
    want = np.asarray(depth_lib.zbuf_from_depth(planar, 0.5, 100.0))
    np.testing.assert_allclose(got, want, atol=1e-4)
    # Pixel centres of the crop sample 0.86 m .. 4.74 m -> zbuf 0.421 .. 0.899 (near 0.5, far 100).
    assert 0.41 < got.min() < 0.43 and 0.89 < got.max() < 0.91


ESTIMATOR_MODULE = '''
import numpy as np

def factory(offset=1000.0):
  def estimate(images):
    assert images.dtype == np.uint8 and images.ndim == 4
    # Brighter = nearer; raw MiDaS-like scale.
    return (offset + 40.0 * images.mean(-1)).astype(np.float32)
  return estimate
'''


def test_estimator_hook(tmp_path, monkeypatch):
  (tmp_path / 'my_estimator.py').write_text(ESTIMATOR_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  images = tmp_path / 'images'
  images.mkdir()
  for name, array in (('astronaut.png', skimage.data.astronaut()),
                      ('rocket.jpg', skimage.data.rocket())):
    Image.fromarray(array).save(images / name)
  (images / 'bad.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
  config = folder_config(images, depth='estimator', estimator='my_estimator:factory',
                         estimator_resolution=64, estimator_batch_size=2)
  config.data.estimator_kwargs = {'offset': 500.0}
  summary = prepare.run(config, str(tmp_path / 'work'))
  assert summary['num_written'] == 2 and summary['num_skipped'] == 1
  row = read_split(tmp_path / 'work' / 'data')['astronaut.png']
  crop64 = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((64, 64), Image.LANCZOS))
  disp = (500.0 + 40.0 * crop64.mean(-1)).astype(np.float32)[1::2, 1::2]  # nearest 64 -> 32
  want = np.asarray(depth_lib.zbuf_from_midas(disp, 0.5, 100.0))
  np.testing.assert_allclose(ingest.zbuf_from_uint16(row['depth']), want, atol=1e-4)
  with pytest.raises(errors.ConfigError, match='cannot import'):
    prepare.run(folder_config(images, depth='estimator', estimator='no_such_mod:f'),
                     str(tmp_path / 'work2'))


# ------------------------------------------------------------------------------------------------
# Procedural source, resume and workers.
# ------------------------------------------------------------------------------------------------


def procedural_config(out, **overrides):
  config = prepare_config.get_config('procedural')
  config.data.resolution = 16
  config.data.num_examples = 24
  config.data.num_eval_examples = 2
  config.data.examples_per_shard = 8
  config.data.prepare_workers = 1
  config.data.dir = str(out)
  config.log.progress = False
  for k, v in overrides.items():
    config.data[k] = v
  return config


def test_procedural_examples_are_exact_renders(tmp_path):
  summary = prepare.run(procedural_config(tmp_path / 'data'), str(tmp_path))
  assert summary['splits'] == {'train': 24, 'test': 2} and summary['num_skipped'] == 0
  assert summary['num_shards'] == {'train': 3, 'test': 1}
  train = read_split(tmp_path / 'data', 'train')
  assert len({int(r['scene_seed']) for r in train.values()}) == 24
  row = next(iter(train.values()))
  scene = procedural.sample_scene(int(row['scene_seed']))
  rgbd = procedural.render_rgbd(scene, cameras.SOURCE_VIEW, 16)
  np.testing.assert_array_equal(row['rgb'], np.round(rgbd[..., :3] * 255).astype(np.uint8))
  np.testing.assert_array_equal(row['depth'], ingest.zbuf_to_uint16(rgbd[..., 3]))
  assert row['label'] == -1 and row['novel_rgb'].shape == (0, 16, 16, 3)

  test = read_split(tmp_path / 'data', 'test')
  row = next(iter(test.values()))
  assert not {int(r['scene_seed']) for r in test.values()} & {
      int(r['scene_seed']) for r in train.values()}
  views = np.asarray(cameras.views_from_poses(cameras.viewset_poses('3x9')))[1:]
  assert row['novel_rgb'].shape == (26, 16, 16, 3) and row['novel_depth'].shape == (26, 16, 16)
  np.testing.assert_allclose(row['novel_view'], views, atol=1e-6)
  scene = procedural.sample_scene(int(row['scene_seed']))
  for k in (0, 13, 25):
    rgbd = procedural.render_rgbd(scene, row['novel_view'][k], 16)
    np.testing.assert_array_equal(row['novel_rgb'][k], np.round(rgbd[..., :3] * 255))
    np.testing.assert_array_equal(row['novel_depth'][k], ingest.zbuf_to_uint16(rgbd[..., 3]))


def test_read_test_views_are_exact_renders(tmp_path):
  """records.read_test_views: view 0 and the novel views of the test split, equal to rendering
  procedural.scene_seed(seed, 1, i) from the stored cameras, to 8 / 16-bit rounding."""
  out = tmp_path / 'data'
  prepare.run(procedural_config(out, num_examples=8, num_eval_examples=3, seed=5,
                                novel_viewset='swing'), str(tmp_path))
  truth = records.read_test_views(str(out), 2)
  v = truth['views'].shape[1]
  assert truth['rgbd'].shape == (2, v, 16, 16, 4) and truth['rgbd'].dtype == np.float32
  assert v == len(cameras.viewset_poses('swing'))
  np.testing.assert_array_equal(truth['scene_seed'],
                                [procedural.scene_seed(5, 1, i) for i in range(2)])
  np.testing.assert_array_equal(truth['views'][:, 0], np.stack([cameras.SOURCE_VIEW] * 2))
  np.testing.assert_allclose(truth['views'][0, 1:], np.asarray(cameras.views_from_poses(
      cameras.viewset_poses('swing')))[1:], atol=1e-6)
  for n, seed in enumerate(truth['scene_seed']):
    scene = procedural.sample_scene(int(seed))
    want = np.stack([procedural.render_rgbd(scene, view, 16) for view in truth['views'][n]])
    np.testing.assert_allclose(truth['rgbd'][n, ..., :3], want[..., :3], atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(truth['rgbd'][n, ..., 3], want[..., 3], atol=0.5 / 65535 + 1e-7)
  with pytest.raises(errors.UserError, match='split holds 3'):
    records.read_test_views(str(out), 4)


def test_resume_rewrites_only_missing_shards(tmp_path):
  out = tmp_path / 'data'
  config = procedural_config(out, num_eval_examples=0)
  prepare.run(config, str(tmp_path))
  shards = sorted(out.glob('ivd_rgbd-train.array_record-*'))
  assert len(shards) == 3
  original = [s.read_bytes() for s in shards]
  mtimes = [s.stat().st_mtime_ns for s in shards]
  # An interrupted run: shard 1 was never finished (only its temporary file exists).
  shards[1].rename(shards[1].with_name(shards[1].name + '.tmp'))
  (out / records.STATE_DIR / 'train-00001.json').unlink()
  summary = prepare.run(config, str(tmp_path))
  assert summary['resumed_examples'] == 16 and summary['num_written'] == 24
  assert [s.read_bytes() for s in shards] == original
  assert shards[0].stat().st_mtime_ns == mtimes[0] and shards[2].stat().st_mtime_ns == mtimes[2]
  assert not list(out.glob('*.tmp'))
  # A changed plan (more scenes) rewrites everything and removes the old shard files.
  summary = prepare.run(procedural_config(out, num_eval_examples=0, num_examples=30),
                             str(tmp_path))
  assert summary['resumed_examples'] == 0 and summary['splits'] == {'train': 30}
  assert len(list(out.glob('ivd_rgbd-train.array_record-*'))) == 4
  assert len(read_split(out)) == 30


def test_worker_processes_write_identical_shards(tmp_path):
  single, multi = tmp_path / 'single', tmp_path / 'multi'
  prepare.run(procedural_config(single, num_eval_examples=0, num_examples=16),
                   str(tmp_path / 'w1'))
  prepare.run(procedural_config(multi, num_eval_examples=0, num_examples=16,
                                     prepare_workers=2), str(tmp_path / 'w2'))
  names = sorted(p.name for p in single.glob('ivd_rgbd-*'))
  assert names == sorted(p.name for p in multi.glob('ivd_rgbd-*')) and len(names) == 2
  # Same examples in the same shards (not byte-identical files: protobuf map order of a
  # serialized tf.Example is not fixed across processes).
  a, b = read_split(single), read_split(multi)
  assert list(a) == list(b) and len(a) == 16
  for file in a:
    for key in ('rgb', 'depth', 'label', 'scene_seed', 'view'):
      np.testing.assert_array_equal(a[file][key], b[file][key])


def test_multihost_assignment_shards_by_process(tmp_path):
  """Two 'hosts' (process 1 first, then process 0) each write every other shard; process 0
  finds all shards and writes the metadata."""
  out = tmp_path / 'data'
  config = procedural_config(out, num_eval_examples=0)
  import threading  # pylint: disable=g-import-not-at-top
  results = {}
  t = threading.Thread(target=lambda: results.update(
      p1=prepare.run(config, str(tmp_path / 'p1'), process_index=1, process_count=2)))
  t.start()
  results['p0'] = prepare.run(config, str(tmp_path), process_index=0, process_count=2)
  t.join()
  markers = [json.loads((out / records.STATE_DIR / f'train-0000{k}.json').read_text())
             for k in range(3)]
  assert all(r['num_examples'] == 8 for r in markers)
  assert results['p0']['resumed_examples'] == 0 and results['p0']['num_written'] == 24
  assert len(read_split(out)) == 24
  assert (tmp_path / 'prepare_summary.json').exists()
  assert not (tmp_path / 'p1' / 'prepare_summary.json').exists()


def test_prepare_mode_through_main(tmp_path):
  """The documented command line, in-process: main.run dispatches mode 'prepare'."""
  from ivd_jax import main  # pylint: disable=g-import-not-at-top
  config = procedural_config('', num_examples=8, num_eval_examples=0)
  main.run(config, str(tmp_path))
  summary = json.loads((tmp_path / 'prepare_summary.json').read_text())
  assert summary['num_written'] == 8 and summary['data_dir'] == str(tmp_path / 'data')
  assert sys.modules['ivd_jax.pipelines.prepare'] is prepare
  assert os.path.exists(tmp_path / 'data' / 'dataset_info.json')


def test_validation_split_reuses_the_training_classes(folder_dataset, tmp_path):
  """ImageNet workflow: a second folder prepared into the same dataset as split 'validation'
  keeps the training label of each class name; unknown classes are reported, not relabelled."""
  workdir, _ = folder_dataset
  val = tmp_path / 'val'
  for cls in ('space', 'zebras'):  # 'space' is class 2 in training; 'zebras' is unknown
    (val / cls).mkdir(parents=True)
    save_png(val / cls / 'img.png', skimage.data.astronaut())
    np.save(val / cls / 'img.npy', midas_disparity(512, 512))
  data = tmp_path / 'data'
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.copytree(workdir / 'data', data)
  summary = prepare.run(folder_config(val, dir=str(data), split='validation'),
                             str(tmp_path / 'work'))
  assert summary['splits'] == {'validation': 1} and summary['classes'] == [
      'animals', 'objects', 'space']
  assert summary['skipped'] == [{'file': 'zebras/img.png', 'reason': "class folder 'zebras' is "
                                 'not in the class list of this dataset'}]
  rows = read_split(data, 'validation')
  assert {f: int(r['label']) for f, r in rows.items()} == {'space/img.png': 2}
  assert len(read_split(data, 'train')) == 10  # the training split is still there
  config = folder_config('unused', dir=str(data))
  it = pipeline.create_input_iterator(config.data, global_batch_size=1, mesh=None, seed=0,
                                      split='validation', shuffle=False, num_epochs=1)
  assert np.asarray(next(it)['label']).tolist() == [2]
