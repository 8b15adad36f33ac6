"""Sequential multi-view sampling (docs/method.md §7-8): cameras, compilation, sharding,
reproducibility, checkpoints' roles and encodings, and the sample mode end to end.

The networks are the converted reference fixture (adm_small_uncond: 32 px, 1.42 M parameters,
random weights) as G_u and its 10-channel widening as G_c, run through a whole 27-view sequence.
"""
import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest

import method_cameras  # pylint: disable=g-bad-import-order

from ivd_jax.configs import common
from ivd_jax.configs import prepare as prepare_config
from ivd_jax.configs import sample as sample_config
from ivd_jax import checkpoint
from ivd_jax import errors
from ivd_jax import main as ivd_main
from ivd_jax import parallel
from ivd_jax import roles
from ivd_jax.data import procedural
from ivd_jax.data import records
from ivd_jax.diffusion import schedule as schedule_lib
from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.models import unet as unet_lib
from ivd_jax.pipelines import prepare
from ivd_jax.sampling import generate
from ivd_jax.sampling import networks
from ivd_jax.sampling import photo
from ivd_jax.sampling import sampler as sampler_lib
from ivd_jax.sampling import settings as settings_lib
from ivd_jax.sampling import viewsets
from ivd_jax.tools import convert_reference

# Exact-depth lifting (the procedural data's encoding) so a true render used as view 0 warps
# exactly; 2 DDIM steps keep the random-weight networks cheap. The sample mode's 'tiny' preset
# with these step counts gives the same settings (and so the same compilations).
FAST = dict(guidance=0.0, sampler_uncond='ddim', steps_uncond=2, steps_cond=2, near=0.5,
            far=100.0)
CUSTOM = ((0.0, 0.0, 1.0), (0.15, 0.0, 1.0), (-0.15, 0.1, 1.0))
# Every run here uses a 27-slot view buffer, so the 3-view sets share the 27-view compilation.
SLOTS = 27


def _settings(**overrides) -> settings_lib.SampleSettings:
  s = common.sample_section()
  s.update(dict(FAST, **overrides))
  return settings_lib.SampleSettings.from_config(s)


def _method_view(yaw, pitch, radius):
  """docs/method.md §2 written out: eye on the orbit, OpenGL look-at the origin, up (0, 1, 0)."""
  return method_cameras.orbit(yaw, pitch, radius)


def _check_views(poses, views):
  for p, v in zip(poses.reshape(-1, 3), views.reshape(-1, 4, 4)):
    np.testing.assert_allclose(v, _method_view(*p), atol=1e-5)


def test_viewset_cameras_match_method():
  ids = np.arange(3)
  poses, views = viewsets.viewset_views('3x9', seed=0, instance_ids=ids, num_frames=60)
  assert poses.shape == (3, 27, 3) and views.shape == (3, 27, 4, 4)
  yaws = [0, 0.15, -0.15, 0.30, -0.30, 0.45, -0.45, 0.60, -0.60]
  expected = np.array([[y, p, 1.0] for y in yaws for p in (0, 0.15, -0.15)], np.float32)
  np.testing.assert_allclose(poses[1], expected, atol=1e-7)
  _check_views(poses[1], views[1])
  np.testing.assert_allclose(views[0, 0], cameras.SOURCE_VIEW, atol=1e-6)

  poses, views = viewsets.viewset_views('swing', seed=0, instance_ids=ids, num_frames=60)
  t = 2 * np.pi * np.arange(60) / 60
  np.testing.assert_allclose(poses[0, :, 0], 0.6 * np.cos(t), atol=1e-6)
  np.testing.assert_allclose(poses[0, :, 1], 0.15 * np.sin(t), atol=1e-6)
  _check_views(poses[0], views[0])

  poses, views = viewsets.viewset_views('orbit360', seed=0, instance_ids=ids, num_frames=8)
  np.testing.assert_allclose(poses[0, :, 0], 2 * np.pi * np.arange(8) / 8, atol=1e-6)
  _check_views(poses[0], views[0])

  poses, views = viewsets.viewset_views('custom', seed=0, instance_ids=ids, num_frames=60,
                                        custom_poses=((0, 0, 1), (0.2, -0.1, 1.3)))
  _check_views(poses[2], views[2])
  np.testing.assert_allclose(poses[2, 1], [0.2, -0.1, 1.3], atol=1e-7)

  # 'random' (FID protocol): view 0 is the source view; the novel view is drawn per instance,
  # reproducibly, with yaw ~ 0.3 N(0, 1) and pitch ~ 0.15 N(0, 1).
  ids = np.arange(100)
  poses, views = viewsets.viewset_views('random', seed=5, instance_ids=ids, num_frames=60)
  np.testing.assert_allclose(poses[:, 0], np.tile([0, 0, 1], (100, 1)), atol=1e-7)
  # Sample std of 100 draws: +-7 % standard error; these bounds are 3.5 standard errors.
  assert 0.22 < poses[:, 1, 0].std() < 0.38 and 0.11 < poses[:, 1, 1].std() < 0.19
  again, _ = viewsets.viewset_views('random', seed=5, instance_ids=ids[[17, 3]], num_frames=60)
  np.testing.assert_array_equal(again, poses[[17, 3]])
  _check_views(poses[:5], views[:5])
  with pytest.raises(errors.ConfigError, match='sample.viewset'):
    viewsets.viewset_views('spiral', seed=0, instance_ids=ids, num_frames=60)


def test_labels_and_settings_validation():
  ids = np.arange(6)
  np.testing.assert_array_equal(viewsets.instance_labels('uniform', 4, 0, ids), [0, 1, 2, 3, 0, 1])
  np.testing.assert_array_equal(viewsets.instance_labels('fixed', 10, 0, ids, (7, 2)),
                                [7, 2, 7, 2, 7, 2])
  rand = viewsets.instance_labels('random', 1000, 3, ids)
  np.testing.assert_array_equal(viewsets.instance_labels('random', 1000, 3, ids[[4]]), rand[[4]])
  assert len(set(rand.tolist())) > 3
  np.testing.assert_array_equal(viewsets.instance_labels('random', 0, 3, ids), [-1] * 6)
  with pytest.raises(errors.ConfigError, match='sample.labels'):
    viewsets.instance_labels('fixed', 10, 0, ids, (12,))
  for bad, field in ((dict(steps_cond=30), 'sample.steps_cond'),
                     (dict(sampler_uncond='ddpm', steps_uncond=50), 'sample.steps_uncond'),
                     (dict(near=5.0, far=1.0), 'sample.near'),
                     (dict(replace_rgb=1.5), 'sample.replace_rgb')):
    with pytest.raises(errors.ConfigError, match=field):
      _settings(**bad).validate()
  # Every setting comes from the config: a section without one names the missing field.
  partial = common.sample_section()
  del partial['constrain_depth']
  with pytest.raises(errors.ConfigError, match='sample.constrain_depth'):
    settings_lib.SampleSettings.from_config(partial)


def test_checkpoint_config_gives_role_schedule_and_data_encoding(tmp_path):
  # A converted reference export has only its model section: the role comes from its input
  # channels, the schedule and data encoding are the reference's.
  model = unet_lib.UNet(image_size=8, in_channels=10, model_channels=8, channel_mult=(1,),
                        num_res_blocks=1, attention_resolutions=(), num_head_channels=8,
                        num_groups=4)
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 10), np.float32),
                      np.zeros((1,), np.int32))['params']
  checkpoint.save_params(str(tmp_path / 'gc'), params,
                         {'model': convert_reference.model_config(model).to_dict()})
  net, config = networks.load_network(str(tmp_path / 'gc'), field='sample.cond', ema=True)
  assert net.role is roles.COND and net.model.in_channels == 10
  assert networks.data_encoding(config) == networks.REFERENCE_DATA_ENCODING == (0.5, 100.0)
  np.testing.assert_array_equal(networks.diffusion_schedule(config).betas,
                                schedule_lib.linear_schedule().betas)
  # A training config names its own encoding and schedule.
  trained = common.train_config('tiny', role='cond')
  trained.data.near, trained.data.far = 0.25, 40.0
  trained.diffusion.num_steps = 500
  assert networks.data_encoding(trained) == (0.25, 40.0)
  assert networks.diffusion_schedule(trained).num_steps == 500
  with pytest.raises(errors.ConfigError, match='sample.uncond'):
    networks.load_network(str(tmp_path / 'missing'), field='sample.uncond', ema=True)


@pytest.fixture(scope='module')
def fixture_models(fixtures_dir):
  """(G_u model, its params, G_c model, its params) from the reference fixture."""
  with np.load(fixtures_dir / 'adm_small_uncond.npz') as f:
    state = {k[len('param/'):]: f[k] for k in f.files if k.startswith('param/')}
  kwargs = json.loads((fixtures_dir / 'adm_small_uncond.json').read_text())['constructor_kwargs']
  model_u, params_u = convert_reference.from_state_dict(state, kwargs)
  return model_u, params_u, model_u.clone(in_channels=10), unet_lib.widen_input(params_u, 10)


@pytest.fixture(scope='module')
def fixture_networks(fixture_models):
  model_u, params_u, model_c, params_c = fixture_models
  return (networks.Network(roles.UNCOND, model_u, params_u),
          networks.Network(roles.COND, model_c, params_c))


def _sampler(nets, mesh_shape, devices=None):
  mesh = parallel.make_mesh(ml_collections.ConfigDict({'shape': mesh_shape}), devices=devices)
  return sampler_lib.ViewSampler(*nets, _settings(), mesh=mesh,
                                 schedule=schedule_lib.linear_schedule())


@pytest.fixture(scope='module')
def sampler1(fixture_networks):
  return _sampler(fixture_networks, (1, 1), jax.devices()[:1])


@pytest.fixture(scope='module')
def sampler8(fixture_networks):
  return _sampler(fixture_networks, (-1, 1))


def test_sampler_checks_network_roles(fixture_networks):
  gu, gc = fixture_networks
  with pytest.raises(errors.ConfigError, match=r'sample\.cond.*G_u'):
    _sampler((gu, gu), (-1, 1))
  with pytest.raises(errors.ConfigError, match=r'sample\.uncond.*G_c'):
    _sampler((gc, gc), (-1, 1))


def _custom_views():
  return viewsets.viewset_views('custom', seed=0, instance_ids=[0], num_frames=60,
                                custom_poses=CUSTOM)[1][0]


def test_reference_network_runs_27_views_with_one_compilation(sampler1):
  _, views = viewsets.viewset_views('3x9', seed=0, instance_ids=[0], num_frames=60)
  before = sampler1.compile_counts()
  result, _ = generate.generate_views(sampler1, views[0], seed=11, instance_ids=[6, 3],
                                      batch_size=2)
  after = sampler1.compile_counts()
  # G_u at most once, aggregation + G_c at most once for all 26 further views (fixed-size buffer
  # + validity mask; other tests of this module may have compiled the same shapes already).
  assert after['first_view'] - before['first_view'] <= 1 and after['first_view'] == 1
  assert after['next_view'] - before['next_view'] <= 1 and after['next_view'] == 1
  assert result.rgbd.shape == (2, 27, 32, 32, 4) and result.views.shape == (2, 27, 4, 4)
  assert np.isfinite(result.rgbd).all()
  assert result.rgbd.min() >= 0.0 and result.rgbd.max() <= 1.0
  # Instances and views differ (independent keys per instance and per view).
  assert np.abs(result.rgbd[0] - result.rgbd[1]).mean() > 0.05
  assert np.abs(result.rgbd[0, 5] - result.rgbd[0, 6]).mean() > 0.05
  # View 0 has no condition; masks are binary and mask_rgb lies inside mask.
  assert result.cond_mask[:, 0].max() == 0.0
  assert set(np.unique(result.cond_mask)) <= {0.0, 1.0}
  assert (result.cond_mask_rgb <= result.cond_mask).all()


def test_sharded_sampling_equals_one_device_and_any_batch(sampler1, sampler8):
  views = _custom_views()
  assert jax.device_count() == 8 and sampler8.batch_multiple == 8
  result8, _ = generate.generate_views(sampler8, views, seed=11, instance_ids=np.arange(8),
                                       batch_size=8, buffer_size=SLOTS)
  # Instances 6 and 3 alone, in a batch of 2 on 1 device, equal the 8-device batch of 8.
  ids = np.array([6, 3])
  result1, _ = generate.generate_views(sampler1, views, seed=11, instance_ids=ids, batch_size=2,
                                       buffer_size=SLOTS)
  assert np.abs(result8.rgbd[6] - result8.rgbd[3]).mean() > 0.05
  np.testing.assert_allclose(result1.rgbd, result8.rgbd[ids], atol=2e-4)
  np.testing.assert_allclose(result1.cond_rgbd, result8.cond_rgbd[ids], atol=2e-4)
  np.testing.assert_array_equal(result1.cond_mask, result8.cond_mask[ids])
  # Batch padding: 3 instances on 8 devices are padded to 8 and give the same 3 instances.
  result3, _ = generate.generate_views(sampler8, views, seed=11, instance_ids=[3, 6, 0],
                                       batch_size=8, buffer_size=SLOTS)
  assert sampler8.compile_counts() == {'first_view': 1, 'next_view': 1, 'fuse': 0}
  np.testing.assert_allclose(result3.rgbd, result8.rgbd[[3, 6, 0]], atol=2e-4)


def test_real_photo_as_view_0_conditions_the_next_views(sampler1):
  views = _custom_views()
  scene = procedural.sample_scene(7)
  truth = np.stack([procedural.render_rgbd(scene, v, 32, near=0.5, far=100.0) for v in views])
  result, _ = generate.generate_views(sampler1, views, seed=11, instance_ids=[0, 1],
                                      batch_size=2, first_rgbd=truth[0], buffer_size=SLOTS)
  # View 0 is the photo, untouched; no G_u call.
  np.testing.assert_array_equal(result.rgbd[:, 0], np.stack([truth[0], truth[0]]))
  # View 1's condition is the photo warped into camera 1 and its colour matches the true render
  # of view 1. Measured at 32 px: mask 0.47, mask_rgb 0.14 (the 5x5 texture erosion of
  # docs/method.md §8 is large at 32 px), colour PSNR 27.6 dB inside mask_rgb.
  mask_rgb = result.cond_mask_rgb[0, 1, ..., 0] > 0
  err = (result.cond_rgbd[0, 1, ..., :3] - truth[1, ..., :3])[mask_rgb]
  assert result.cond_mask[0, 1].mean() > 0.4 and mask_rgb.mean() > 0.1
  assert 10 * np.log10(1.0 / np.mean(err**2)) > 24.0


def test_sample_mode_writes_manifest_and_instances(tmp_path, fixture_models, sampler8):
  """configs/sample.py through ivd_jax.main with exported G_u / G_c of the fixture."""
  model_u, params_u, model_c, params_c = fixture_models
  for name, model, params in (('gu', model_u, params_u), ('gc', model_c, params_c)):
    checkpoint.save_params(str(tmp_path / name), params,
                           {'model': convert_reference.model_config(model).to_dict()})
  config = sample_config.get_config('tiny')
  s = config.sample
  s.uncond, s.cond = str(tmp_path / 'gu'), str(tmp_path / 'gc')
  s.update(dict(FAST, viewset='custom', custom_poses=CUSTOM, num_instances=2, buffer_size=SLOTS,
                video_frames=2, progress=False, run_name='smoke'))
  manifest = ivd_main.run(config, str(tmp_path / 'wd'))

  out_dir = tmp_path / 'wd' / 'samples' / 'smoke'
  assert manifest['dir'] == str(out_dir)
  with open(out_dir / 'manifest.json') as f:
    saved = json.load(f)
  assert saved['run'] == 'smoke' and saved['num_instances'] == 2 and not saved['from_photo']
  assert saved['settings'] == dataclasses.asdict(sampler8.settings)
  # The exports carry no data section: the reference's encoding, recorded in the manifest.
  assert (saved['data_near'], saved['data_far']) == networks.REFERENCE_DATA_ENCODING
  assert 'data_near' not in saved['sample_config']
  assert 0.0 < saved['consistency']['covisible'] <= 1.0
  # The mode's sampler is sampler8's (same settings, mesh and batch): instance 1 is identical.
  result8, _ = generate.generate_views(sampler8, _custom_views(), seed=0, instance_ids=[0, 1],
                                       batch_size=8, buffer_size=SLOTS)
  with np.load(out_dir / 'views.npz') as f:
    np.testing.assert_allclose(f['rgbd'], result8.rgbd, atol=2e-4)
  for entry in saved['instances']:
    inst = out_dir / entry['dir']
    for key in ('grid_rgb', 'grid_depth', 'ply', 'npz', 'gif'):
      assert os.path.isfile(inst / entry['files'][key])
    assert len(entry['files']['views']) == 3
  assert os.path.isfile(out_dir / 'overview.png')

  # A photo as view 0 (no G_u): its metric depth is encoded with the near/far of the data G_c was
  # trained on, read from G_c's own config.
  trained = common.train_config('tiny', role='cond')
  trained.data.near, trained.data.far = 0.25, 40.0
  trained.model = convert_reference.model_config(model_c)
  checkpoint.save_params(str(tmp_path / 'gc_trained'), params_c, trained)
  Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / 'photo.png')
  # Constant depth is refused (it holds no depth): a tilted plane from 1.5 to 2.5.
  depth = np.tile(np.linspace(1.5, 2.5, 32, dtype=np.float32), (32, 1))
  np.save(tmp_path / 'photo.npy', depth)
  s.update(dict(cond=str(tmp_path / 'gc_trained'), uncond='',
                source_image=str(tmp_path / 'photo.png'), source_depth=str(tmp_path / 'photo.npy'),
                source_depth_kind='depth', num_instances=1, video=False, run_name='photo'))
  manifest = ivd_main.run(config, str(tmp_path / 'wd'))
  assert manifest['from_photo'] and (manifest['data_near'], manifest['data_far']) == (0.25, 40.0)
  with np.load(tmp_path / 'wd' / 'samples' / 'photo' / 'instance_0000' / 'arrays.npz') as f:
    np.testing.assert_allclose(f['rgbd'][0, ..., 3],
                               depth_lib.zbuf_from_depth(depth, 0.25, 40.0), atol=1e-6)


def _photo_sample_config(image, depth, kind='midas'):
  return ml_collections.ConfigDict(dict(source_image=str(image), source_depth=str(depth),
                                        source_depth_kind=kind, estimator='',
                                        estimator_kwargs={}, max_invalid_depth=0.5))


def test_load_source_view_converts_midas_disparity(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
  Image.fromarray(rgb).save(tmp_path / 'photo.png')
  disparity = np.full((40, 60), 3000.0, np.float32)
  disparity[:, 30:] = 1500.0
  np.save(tmp_path / 'photo.npy', disparity.astype(np.float16))
  s = _photo_sample_config(tmp_path / 'photo.png', tmp_path / 'photo.npy')
  rgbd = photo.load_source_view(s, 32, near=0.5, far=100.0)
  assert rgbd.shape == (32, 32, 4) and rgbd.dtype == np.float32
  # Short side 40 -> 32, width 60 -> 48, centre crop keeps columns 8..39 of the resized image.
  expected = np.asarray(depth_lib.zbuf_from_midas(disparity[:, 10:50], 0.5, 100.0))
  np.testing.assert_allclose(rgbd[:, 0, 3], expected[0, 0], atol=1e-6)
  np.testing.assert_allclose(rgbd[:, -1, 3], expected[0, -1], atol=1e-6)
  assert 0.0 <= rgbd[..., 3].min() and rgbd[..., 3].max() <= 1.0
  s.source_depth = str(tmp_path / 'missing.npy')
  with pytest.raises(errors.ConfigError, match='sample.source_depth'):
    photo.load_source_view(s, 32, near=0.5, far=100.0)


def test_load_source_view_agrees_with_prepare(tmp_path):
  """A 16-bit photo and an RGB photo with NaN-holed MiDaS .npz depth: view 0 equals the example
  prepare writes of the same files (to the dataset's 8 / 16-bit rounding)."""
  folder = tmp_path / 'photos'
  folder.mkdir()
  rng = np.random.default_rng(1)
  ramp = (3000 + 9000 * np.linspace(0, 1, 48)[:, None] * np.ones((1, 72))).astype(np.float32)
  ramp[5:8, 10:14] = np.nan  # 0.3 %: filled from the nearest valid pixel by both paths
  Image.fromarray((rng.integers(0, 65536, (48, 72))).astype(np.uint16)).save(folder / 'g16.png')
  Image.fromarray(rng.integers(0, 256, (48, 72, 3), dtype=np.uint8)).save(folder / 'rgb.png')
  for name in ('g16', 'rgb'):
    np.savez(folder / f'{name}.npz', ramp)
  config = prepare_config.get_config('folder')
  config.data.folder = str(folder)
  config.data.resolution = 32
  config.data.labels = 'none'
  config.data.prepare_workers = 1
  config.log.progress = False
  summary = prepare.run(config, str(tmp_path / 'work'))
  assert summary['num_written'] == 2
  source = records.open_split(str(tmp_path / 'work' / 'data'), 'train', this_process_only=False)
  for ex in (source[i] for i in range(len(source))):
    name = bytes(ex['file']).decode()
    want = records.rgbd_from_stored(records.decode_png(ex['rgb']), records.decode_png(ex['depth']))
    got = photo.load_source_view(_photo_sample_config(folder / name, folder / (name[:-4] + '.npz')),
                                 32, near=0.5, far=100.0)
    np.testing.assert_array_equal(got[..., :3], want[..., :3])
    np.testing.assert_allclose(got[..., 3], want[..., 3], atol=0.5 / 65535 + 1e-7)
    assert got[..., 3].std() > 0.05


@pytest.mark.parametrize('depth,kind,field,needle', [
    (np.full((8, 8), np.nan), 'midas', 'sample.source_depth', 'no valid value'),
    (-np.ones((8, 8)), 'depth', 'sample.source_depth', 'no valid value'),
    (np.ones((4, 9)), 'midas', 'sample.source_depth', 'aspect ratio differs'),
    (np.full((8, 8), 3.0), 'zbuf', 'sample.source_depth', r'not \[0, 1\]'),
    ('depth_key', 'midas', 'sample.source_depth', 'no array arr_0'),
    (np.ones((8, 8)), 'lidar', 'sample.source_depth_kind', 'unknown kind'),
    (np.ones((8, 8)), 'estimator', 'sample.estimator', 'does not name'),
])
def test_load_source_view_bad_input_names_the_field(tmp_path, depth, kind, field, needle):
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'photo.png')
  if isinstance(depth, str):
    np.savez(tmp_path / 'photo.npz', depth=np.ones((8, 8)))
  else:
    np.savez(tmp_path / 'photo.npz', depth)
  s = _photo_sample_config(tmp_path / 'photo.png', tmp_path / 'photo.npz', kind)
  with pytest.raises(errors.ConfigError, match=needle) as e:
    photo.load_source_view(s, 8, near=0.5, far=100.0)
  assert e.value.field == field
  s.source_image = str(tmp_path / 'photo.npz')  # not an image
  s.source_depth_kind = 'midas'
  with pytest.raises(errors.ConfigError, match='unreadable image') as e:
    photo.load_source_view(s, 8, near=0.5, far=100.0)
  assert e.value.field == 'sample.source_image'
