"""The eval mode end to end: procedural data through the input pipeline, cached reference
statistics, images from files, the truth from the test split, the report; and its errors."""
import json
import os

import numpy as np
from PIL import Image
import pytest

from ivd_jax.configs import eval as eval_config
from ivd_jax.configs import prepare
from ivd_jax import checkpoint
from ivd_jax import errors
from ivd_jax import main as ivd_main
from ivd_jax.data import procedural
from ivd_jax.evaluation import fid
from ivd_jax.evaluation import images as images_lib
from ivd_jax.evaluation import reference
from ivd_jax.evaluation import truth as truth_lib
from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.models import inception
from ivd_jax.models import unet as unet_lib
from ivd_jax.tools import convert_reference

RES = 128
NUM_REAL = 8


@pytest.fixture(scope='module')
def weights_path(inception_weights):
  return inception_weights


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A prepared procedural dataset of NUM_REAL scenes at RES px (mode 'prepare')."""
  config = prepare.get_config('procedural')
  config.data.resolution = RES
  config.data.num_examples = NUM_REAL
  config.data.num_eval_examples = 0
  config.data.prepare_workers = 1
  config.log.progress = False
  wd = str(tmp_path_factory.mktemp('eval_wd'))
  ivd_main.run(config, wd)
  return wd


def _real_images() -> np.ndarray:
  """The prepared set's images, re-rendered exactly (the same uint8 as its PNGs)."""
  out = []
  for i in range(NUM_REAL):
    scene = procedural.sample_scene(procedural.scene_seed(0, 0, i))
    rgb = procedural.render(scene, cameras.SOURCE_VIEW, RES).rgb
    out.append(np.round(np.asarray(rgb) * 255).astype(np.uint8))
  return np.stack(out)


def _config(workdir, weights_path, **eval_fields):
  config = eval_config.get_config('files')
  config.eval.inception_weights = weights_path
  config.eval.batch_size = 8
  config.eval.num_images = NUM_REAL
  config.eval.kid_subsets = 10
  config.eval.kid_subset_size = NUM_REAL
  for k, v in eval_fields.items():
    config.eval[k] = v
  return config


def test_eval_files_against_pipeline_reference(workdir, weights_path, tmp_path):
  real = _real_images()
  # "Generated" images: a known, strong corruption of the real ones (colour negatives).
  generated = 255 - real
  npz = str(tmp_path / 'gen.npz')
  np.savez(npz, images=generated)
  config = _config(workdir, weights_path, generated=npz, name='corrupted')
  ivd_main.run(config, workdir)

  with open(os.path.join(workdir, 'eval', 'corrupted.json')) as f:
    saved = json.load(f)
  assert os.path.getsize(os.path.join(workdir, 'eval', 'corrupted.png')) > 1000
  assert saved['num_images'] == NUM_REAL and saved['num_reference'] == NUM_REAL
  assert saved['inception_score'] is None and 'softmax' in saved['inception_score_note']
  assert saved['settings']['is_splits'] == 10
  assert saved['settings']['kid_subset_size'] == NUM_REAL
  assert not saved['settings']['reference_cached']
  # The same figures from the cached real features and features computed here directly.
  caches = [f for f in os.listdir(os.path.join(workdir, 'eval')) if f.startswith('reference_')]
  assert len(caches) == 1
  ref = reference.ReferenceStats.load(os.path.join(workdir, 'eval', caches[0]))
  assert ref.features.shape == (NUM_REAL, 2048) and ref.meta['split'] == 'train'
  params, _ = inception.load_params(weights_path)
  f_gen = fid.FeatureExtractor(params, with_logits=False, batch_size=8)(generated).pool
  want = fid.fid_from_features(ref.features, f_gen)
  assert want > 50.0
  assert abs(saved['fid'] - want) / want < 1e-6, (saved['fid'], want)
  kid, _ = fid.kernel_inception_distance(ref.features, f_gen, num_subsets=10,
                                         subset_size=NUM_REAL)
  # (With 8 images per set the unbiased KID estimate is noise around a small value.)
  assert abs(saved['kid'] - kid) < 1e-6 * abs(kid)

  # Second run on the real images themselves: the reference comes from the cache, and the FID
  # is ~0, i.e. the pipeline's real images gave exactly the features of the images on disk.
  np.savez(npz, images=real)
  again = ivd_main.run(config, workdir)
  assert again['settings']['reference_cached']
  assert abs(again['fid']) < 1e-6 * saved['fid'], again['fid']
  assert len(os.listdir(os.path.join(workdir, 'eval'))) == 4  # json, png, page, one cache
  assert os.path.isfile(again['page']) and again['page'].endswith('.html')


def test_truth_needs_the_test_split(workdir, weights_path, tmp_path):
  # The module's dataset has no 'test' split: refused before any network loads or compiles.
  npz = str(tmp_path / 'gen.npz')
  np.savez(npz, images=_real_images())
  config = _config(workdir, weights_path, generated=npz, truth_scenes=2)
  config.sample.cond = str(tmp_path / 'no_network_needed_yet')
  with pytest.raises(errors.ConfigError, match='eval.truth_scenes'):
    ivd_main.run(config, workdir)


def test_read_images_folder_and_view_sets(tmp_path):
  rng = np.random.default_rng(0)
  ims = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  for i, im in enumerate(ims):
    Image.fromarray(im).save(tmp_path / f'{i:02d}.png')
  got = images_lib.read_images(str(tmp_path), field='generated')
  np.testing.assert_array_equal(got.images, ims)
  rgbd = rng.uniform(0, 1, (2, 3, 8, 8, 4)).astype(np.float32)
  np.savez(tmp_path / 'views.npz', rgbd=rgbd, views=np.zeros((2, 3, 4, 4), np.float32))
  novel = images_lib.read_images(str(tmp_path / 'views.npz'), field='generated', views='novel')
  assert novel.images.shape == (4, 8, 8, 3) and novel.rgbd.shape == rgbd.shape
  np.testing.assert_array_equal(novel.images[1], fid.images_to_uint8(rgbd[0, 2, ..., :3],
                                                                     (0.0, 1.0)))
  first = images_lib.read_images(str(tmp_path / 'views.npz'), field='generated', views='first')
  assert first.images.shape == (2, 8, 8, 3)
  Image.fromarray(ims[0][:4]).save(tmp_path / '99.png')
  with pytest.raises(errors.ConfigError, match='one size'):
    images_lib.read_images(str(tmp_path), field='generated')


def test_novel_view_error_separates_covisible_and_revealed_pixels():
  rng = np.random.default_rng(1)
  near, far = 0.5, 100.0
  rgb = rng.uniform(0, 1, (2, 1, 4, 4, 3)).astype(np.float32)
  depth = rng.uniform(1, 3, (2, 1, 4, 4)).astype(np.float32)
  covisible = np.zeros((2, 1, 4, 4), bool)
  covisible[:, :, :2] = True
  truth = truth_lib.TrueViews(first=np.zeros((2, 4, 4, 4), np.float32),
                              views=np.zeros((2, 2, 4, 4), np.float32), rgb=rgb, depth=depth,
                              covisible=covisible)
  zbuf = np.asarray(depth_lib.zbuf_from_depth(depth, near, far))
  generated = np.concatenate([rgb, zbuf[..., None]], -1)
  # View 0 is not scored; the revealed half is off by 0.1 in every channel (20 dB).
  generated = np.concatenate([np.full_like(generated, 0.5), generated], axis=1)
  generated[:, 1, 2:, :, :3] += 0.1
  got = truth_lib.novel_view_error(truth, generated, near=near, far=far)
  assert got['num_scenes'] == 2 and got['covisible_fraction'] == 0.5
  assert got['psnr_covisible'] == float('inf')
  np.testing.assert_allclose(got['psnr_revealed'], 20.0, atol=1e-4)
  np.testing.assert_allclose(got['psnr_all'], 10 * np.log10(1 / 0.005), atol=1e-4)
  assert got['depth_abs_rel_covisible'] < 1e-5


def test_eval_errors_before_compiling(tmp_path, weights_path):
  config = eval_config.get_config('files')
  missing = str(tmp_path / 'none.npz')
  config.eval.inception_weights = missing
  with pytest.raises(errors.UserError, match='convert_inception --out ' + missing):
    ivd_main.run(config, str(tmp_path))
  config.eval.inception_weights = weights_path
  with pytest.raises(errors.ConfigError, match='sample.uncond'):
    ivd_main.run(config, str(tmp_path))  # neither networks nor images
  config.eval.generated = str(tmp_path / 'nope')
  with pytest.raises(errors.ConfigError, match='eval.generated'):
    ivd_main.run(config, str(tmp_path))
  config.eval.generated = ''
  config.eval.views = 'bogus'
  with pytest.raises(errors.ConfigError, match='eval.views'):
    ivd_main.run(config, str(tmp_path))


def test_eval_generates_protocol_views(tmp_path, weights_path, fixtures_dir):
  """The whole mode with networks: 'random' view sets sampled through sampling.generate, the
  reference from the pipeline, consistency, and the procedural truth error."""
  # The reference fixture UNet (32 px, random weights) as G_u and its widening as G_c.
  with np.load(fixtures_dir / 'adm_small_uncond.npz') as f:
    state = {k[len('param/'):]: f[k] for k in f.files if k.startswith('param/')}
  kwargs = json.loads((fixtures_dir / 'adm_small_uncond.json').read_text())['constructor_kwargs']
  model_u, params_u = convert_reference.from_state_dict(state, kwargs)
  fields = ('image_size', 'in_channels', 'out_channels', 'model_channels', 'channel_mult',
            'num_res_blocks', 'attention_resolutions', 'num_classes', 'num_head_channels',
            'num_heads', 'num_groups', 'dropout', 'dtype', 'remat')
  model = {k: getattr(model_u, k) for k in fields}
  checkpoint.save_params(str(tmp_path / 'gu'), params_u, {'model': model})
  checkpoint.save_params(str(tmp_path / 'gc'), unet_lib.widen_input(params_u, 10),
                         {'model': dict(model, in_channels=10)})

  prep = prepare.get_config('procedural')
  prep.data.resolution = model_u.image_size
  prep.data.num_examples = 8
  # The truth: 2 test scenes, each with one novel view drawn like the protocol's.
  prep.data.num_eval_examples = 2
  prep.data.novel_viewset = 'random'
  prep.data.prepare_workers = 1
  prep.log.progress = False
  wd = str(tmp_path / 'wd')
  ivd_main.run(prep, wd)

  config = eval_config.get_config('tiny')
  config.sample.uncond, config.sample.cond = str(tmp_path / 'gu'), str(tmp_path / 'gc')
  config.sample.steps_uncond = config.sample.steps_cond = 2
  config.sample.progress = False
  e = config.eval
  e.inception_weights = weights_path
  e.num_images, e.batch_size, e.kid_subset_size, e.kid_subsets = 8, 8, 8, 5
  e.truth_scenes, e.consistency_sets = 2, 2
  report = ivd_main.run(config, wd)

  with open(report['json']) as f:
    saved = json.load(f)
  sampling = saved['settings']['sampling']
  assert sampling['viewset'] == 'random' and sampling['num_view_sets'] == 8
  assert sampling['steps_cond'] == 2 and sampling['label_mode'] == 'uniform'
  assert saved['num_images'] == 8 and saved['num_reference'] == 8
  # Random-weight networks produce noise, far from the procedural scenes.
  assert saved['fid'] > 100.0
  assert saved['consistency']['num_sets'] == 2 and saved['consistency']['num_pairs'] == 2
  truth = saved['truth']
  assert truth['num_scenes'] == 2 and truth['views_per_scene'] == 2
  assert 0.0 < truth['covisible_fraction'] < 1.0
  assert truth['psnr_covisible'] < 20.0  # noise, not the scene
  assert os.path.isfile(report['png'])
