"""The quickstart end to end, shrunk (configs/quickstart.py:smoke): every stage runs for real."""
import json
import pathlib
import tomllib

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import plyfile
import pytest

from ivd_jax import checkpoint
from ivd_jax import main as main_lib
from ivd_jax.configs import quickstart as quickstart_config
from ivd_jax.data import procedural
from ivd_jax.data import records
from ivd_jax.evaluation import consistency
from ivd_jax.geometry import cameras
from ivd_jax.io import video as video_io
from ivd_jax.sampling import networks
from ivd_jax.tools import export_demo

RES = 16  # the smoke preset's resolution
BIG = 128  # views in grids, overview and video: enlarged 8x (sample.grid_view_px)


def _config(preset):
  return quickstart_config.get_config(preset)


def test_default_preset_is_the_readme_run():
  config = _config('default')
  assert config.mode == 'quickstart'
  assert config.sample.viewset == '3x9' and config.sample.video
  # Exact procedural depth: views are lifted with the data's own encoding.
  assert (config.sample.near, config.sample.far) == (config.data.near, config.data.far)
  # Minutes of training: the condition edits pin the visible content to the warped condition
  # (both runs), view 0 is the reference's 1000 DDPM steps with predicted x_0 clipped.
  assert (config.sample.replace_rgb, config.sample.replace_depth) == (1.0, 1.0)
  assert (config.sample.sampler_uncond, config.sample.steps_uncond) == ('ddpm', 1000)
  assert config.sample.clip_denoised
  assert config.novel.run_name != config.sample.run_name


def _check_run(run, config, num_instances, num_views=3):
  """Every output file of one sampling run is valid; returns its manifest."""
  samples = pathlib.Path(run['samples'])
  manifest = json.loads((samples / 'manifest.json').read_text())
  # The recorded consistency is the metric of the written views (recomputed here from them).
  s = config.sample
  with np.load(samples / 'views.npz') as f:
    recomputed = consistency.pairwise_consistency(
        f['rgbd'], f['views'][0], near=s.near, far=s.far, fov_deg=s.fov_deg, ssaa=s.ssaa,
        atol=s.atol, rtol=s.rtol)
  for key in ('psnr', 'depth_agreement', 'covisible', 'num_pairs'):
    assert manifest['consistency'][key] == pytest.approx(recomputed[key], rel=1e-5)
  assert manifest['num_instances'] == num_instances == len(run['instances'])
  np.testing.assert_allclose(manifest['instances'][-1]['poses'], config.sample.custom_poses,
                             atol=1e-6)
  for inst in run['instances']:
    inst = pathlib.Path(inst)
    for v in range(num_views):
      assert iio.imread(inst / f'view_{v:02d}_rgb.png').shape == (RES, RES, 3)
      assert iio.imread(inst / f'view_{v:02d}_depth.png').shape == (RES, RES, 3)
    assert iio.imread(inst / 'view_02_cond.png').shape == (RES, 2 * RES, 3)  # colour | depth
    for grid in ('grid_rgb', 'grid_depth', 'grid_cond', 'grid_mask'):
      assert iio.imread(inst / f'{grid}.png').shape == (BIG, num_views * BIG + 4, 3)
    # Nearest-neighbour enlargement: each view pixel is an 8x8 block of the grid.
    grid = iio.imread(inst / 'grid_rgb.png')
    np.testing.assert_array_equal(grid[:BIG:8, :BIG:8], iio.imread(inst / 'view_00_rgb.png'))
    # The condition mask: view 0 has none, later views see part of what came before.
    mask = iio.imread(inst / 'grid_mask.png')[..., 0] > 127
    assert not mask[:, :BIG].any() and mask[:, BIG + 2:].any()
    frames = config.sample.video_frames
    assert video_io.read_frames(str(inst / 'orbit.gif')).shape == (frames, BIG, 2 * BIG, 3)
    assert video_io.read_frames(str(inst / 'orbit.mp4')).shape[0] == frames
    # Every pixel of every view has a finite depth (the z-buffer is clipped).
    assert plyfile.PlyData.read(str(inst / 'points.ply'))['vertex'].count == num_views * RES**2
  with np.load(samples / 'views.npz') as f:
    rgbd = f['rgbd']
  assert rgbd.shape == (num_instances, num_views, RES, RES, 4)
  np.testing.assert_allclose(
      rgbd[-1, 1, ..., :3],
      iio.imread(pathlib.Path(run['instances'][-1]) / 'view_01_rgb.png') / 255.0,
      atol=0.5 / 255 + 1e-6)
  assert iio.imread(samples / 'overview.png').shape == (
      num_instances * BIG + 2 * (num_instances - 1), num_views * BIG + 4, 3)
  assert (samples / 'index.html').is_file()  # the run's results page (tests/test_page.py)
  return manifest, rgbd


def test_quickstart_smoke_runs_every_stage(smoke_quickstart):
  config, tmp_path, _, printed = smoke_quickstart  # tests/conftest.py: one run per session
  for stage in ('data', 'uncond', 'cond'):
    assert (tmp_path / stage).is_dir()
  saved = json.loads((tmp_path / 'quickstart_summary.json').read_text())
  full, novel = saved['full_generation'], saved['novel_views']
  # Both runs' pictures and videos are printed.
  assert 'full generation' in printed and 'novel views' in printed and 'ceiling' in printed
  assert f'Results page: {tmp_path / "index.html"}' in printed
  for run in (full, novel):
    assert run['overview'] in printed
    for video in run['videos']:
      assert video in printed

  full_manifest, _ = _check_run(full, config, 2)
  assert full_manifest['seed'] == 0 and not full_manifest['from_photo']
  novel_manifest, novel_rgbd = _check_run(novel, config, 2)
  assert novel_manifest['from_photo']
  assert novel_manifest['settings']['replace_rgb'] == 1.0
  assert novel_manifest['settings']['replace_depth'] == 1.0
  # The ceiling is the metric of the test split's true views (recomputed from the dataset).
  truth = records.read_test_views(str(tmp_path / 'data'), config.ceiling_scenes)
  s = config.sample
  ceiling = consistency.pairwise_consistency(
      truth['rgbd'], truth['views'][0], near=s.near, far=s.far, fov_deg=s.fov_deg, ssaa=s.ssaa,
      atol=s.atol, rtol=s.rtol)
  for manifest in (full_manifest, novel_manifest, saved):
    for key in ('psnr', 'depth_agreement', 'covisible', 'num_pairs'):
      assert manifest['consistency_ceiling'][key] == pytest.approx(ceiling[key], rel=1e-5)
  # View 0 of the novel-view run is the true render of the i-th scene of the test split (stored
  # at 8-bit colour / 16-bit depth).
  assert novel['scene_seeds'] == [procedural.scene_seed(config.data.seed, 1, i) for i in range(2)]
  for i, seed in enumerate(novel['scene_seeds']):
    truth = procedural.render_rgbd(procedural.sample_scene(seed), cameras.SOURCE_VIEW, RES,
                                   near=config.data.near, far=config.data.far)
    np.testing.assert_allclose(novel_rgbd[i, 0], truth, atol=0.5 / 255 + 1e-6)

  # True views of procedural scenes at 16 px, 3 cameras +-0.3 rad apart.
  ceiling = saved['consistency_ceiling']
  assert ceiling['psnr'] > 20.0 and ceiling['depth_agreement'] > 0.95
  assert 0.2 < ceiling['covisible'] < 0.8
  generated = full['consistency']
  assert generated['num_pairs'] == ceiling['num_pairs'] == novel['consistency']['num_pairs'] == 6
  # Two training steps make noise: full generation is far below the ceiling. The novel-view run
  # keeps the true view 0 and (replace_depth 1.0, applied on every step) its warped depth
  # wherever it is visible, so its depth agrees almost like the true views'.
  assert generated['covisible'] < ceiling['covisible']
  assert novel['consistency']['depth_agreement'] > generated['depth_agreement'] + 0.2
  assert novel['consistency']['covisible'] > generated['covisible']
  stages = ('prepare_s', 'train_uncond_s', 'train_cond_s', 'sample_full_s', 'sample_novel_s',
            'ceiling_s')
  assert set(saved['timings']) == set(stages) | {'total_s'}
  assert saved['timings']['total_s'] >= sum(saved['timings'][k] for k in stages) > 0


# ------------------------------------------------------------------------------------------------
# The demo networks shipped in ivd_jax/pretrained and `quickstart:pretrained`.
# ------------------------------------------------------------------------------------------------


def test_export_demo_round_trip(smoke_quickstart, tmp_path):
  """tools/export_demo: the EMA weights in bfloat16, loaded back as float32 with the config."""
  _, workdir, _, _ = smoke_quickstart
  record = export_demo.export_pair(str(workdir / 'uncond'), str(workdir / 'cond'),
                                   str(tmp_path / 'demo'))
  for role in ('uncond', 'cond'):
    trained, trained_config = checkpoint.load_params(str(workdir / role), ema=True)
    network, config = networks.load_network(str(tmp_path / 'demo' / role), field=role, ema=True)
    assert record[role]['step'] == 2 and record[role]['dtype'] == 'bfloat16'
    assert config.to_dict() == trained_config.to_dict() and network.role.name == config.role
    leaves, expected = jax.tree.leaves(network.params), jax.tree.leaves(trained)
    assert record[role]['num_params'] == sum(x.size for x in leaves)
    for got, want in zip(leaves, expected):
      assert got.dtype == np.float32
      np.testing.assert_array_equal(got, np.asarray(want).astype(jnp.bfloat16).astype(np.float32))
  assert json.loads((tmp_path / 'demo' / 'export.json').read_text()) == record


def test_shipped_demo_networks_are_packaged():
  root = pathlib.Path(quickstart_config.PRETRAINED_DIR)
  record = json.loads((root / 'export.json').read_text())
  shipped = [p for p in root.parent.rglob('*') if p.is_file()]
  assert sum(p.stat().st_size for p in shipped) < 25e6  # the budget for the repository
  # Trained longer than the default quickstart (G_u 1000 steps, G_c 400).
  config = _config('default')
  assert record['uncond']['step'] > config.uncond.train.num_steps
  assert record['cond']['step'] > config.cond.train.num_steps
  # Every file lies under the package-data glob of pyproject.toml, so wheels carry them.
  pyproject = tomllib.loads((pathlib.Path(__file__).parents[1] / 'pyproject.toml').read_text())
  globs = pyproject['tool']['setuptools']['package-data']['ivd_jax']
  package = root.parents[1]
  globbed = {p for g in globs for p in package.glob(g) if p.is_file()}
  assert set(shipped) <= globbed


def test_pretrained_preset_samples_the_shipped_networks(tmp_path):
  """quickstart:pretrained, shrunk to one instance of three views: no training, the shipped pair."""
  config = _config('pretrained')
  assert config.pretrained == quickstart_config.PRETRAINED_DIR
  s = config.sample
  s.viewset = config.data.novel_viewset = 'custom'
  s.custom_poses = config.data.novel_poses = ((0.0, 0.0, 1.0), (0.3, 0.0, 1.0), (-0.3, 0.1, 1.0))
  s.num_instances = config.novel.num_instances = config.ceiling_scenes = 1
  s.sampler_uncond, s.steps_uncond, s.steps_cond, s.video_frames = 'ddim', 20, 10, 4
  s.progress = False
  summary = main_lib.run(config, str(tmp_path))
  assert not (tmp_path / 'uncond').exists() and not (tmp_path / 'cond').exists()  # no training
  assert summary['pretrained'] == quickstart_config.PRETRAINED_DIR
  prepared = json.loads((tmp_path / 'prepare_summary.json').read_text())
  assert prepared['splits'] == {'train': 1, 'test': 1}  # only what sampling reads
  assert set(summary['timings']) == {'prepare_s', 'sample_full_s', 'sample_novel_s', 'ceiling_s',
                                     'total_s'}
  manifest = json.loads((pathlib.Path(summary['full_generation']['samples']) /
                         'manifest.json').read_text())
  assert manifest['resolution'] == 32 and manifest['cond_model'] == json.loads(
      (pathlib.Path(config.pretrained) / 'cond' / 'config.json').read_text())['model']
  assert (tmp_path / 'index.html').is_file()
