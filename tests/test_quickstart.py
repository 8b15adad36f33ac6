"""The quickstart end to end, shrunk (configs/quickstart.py:smoke): every stage runs for real."""
import json
import pathlib

import imageio.v3 as iio
import numpy as np
import plyfile
import pytest

from ivd_jax import main as main_lib
from ivd_jax.configs import quickstart as quickstart_config
from ivd_jax.data import procedural
from ivd_jax.data import records
from ivd_jax.evaluation import consistency
from ivd_jax.geometry import cameras
from ivd_jax.io import video as video_io

RES = 16  # the smoke preset's resolution


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
    assert iio.imread(inst / 'grid_rgb.png').shape == (RES, num_views * RES + 4, 3)
    frames = config.sample.video_frames
    assert video_io.read_frames(str(inst / 'orbit.gif')).shape == (frames, RES, 2 * RES, 3)
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
      num_instances * RES + 2 * (num_instances - 1), num_views * RES + 4, 3)
  return manifest, rgbd


def test_quickstart_smoke_runs_every_stage(tmp_path, capsys):
  config = _config('smoke')
  summary = main_lib.run(config, str(tmp_path))
  printed = capsys.readouterr().out
  for stage in ('data', 'uncond', 'cond'):
    assert (tmp_path / stage).is_dir()
  saved = json.loads((tmp_path / 'quickstart_summary.json').read_text())
  full, novel = saved['full_generation'], saved['novel_views']
  # Both runs' pictures and videos are printed.
  assert 'full generation' in printed and 'novel views' in printed and 'ceiling' in printed
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
