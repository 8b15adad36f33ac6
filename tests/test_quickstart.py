"""The quickstart end to end, shrunk (configs/quickstart.py:smoke): every stage runs for real."""
import importlib.util
import json
import pathlib

import imageio.v3 as iio
import numpy as np
import plyfile

from ivd_jax import main as main_lib
from ivd_jax.inference import export

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(preset):
  spec = importlib.util.spec_from_file_location('quickstart_config',
                                                ROOT / 'configs' / 'quickstart.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def test_default_preset_is_the_readme_run():
  config = _config('default')
  assert config.mode == 'quickstart'
  assert config.sample.viewset == '3x9' and config.sample.video
  # Exact procedural depth: views are lifted with the data's own encoding.
  assert (config.sample.near, config.sample.far) == (config.data.near, config.data.far)


def test_quickstart_smoke_runs_every_stage(tmp_path, capsys):
  config = _config('smoke')
  summary = main_lib.run(config, str(tmp_path))
  printed = capsys.readouterr().out
  samples = pathlib.Path(summary['samples'])
  assert str(samples / 'overview.png') in printed and 'ceiling' in printed
  for stage in ('data', 'uncond', 'cond'):
    assert (tmp_path / stage).is_dir()
  saved = json.loads((tmp_path / 'quickstart_summary.json').read_text())
  manifest = json.loads((samples / 'manifest.json').read_text())
  assert manifest['consistency'] == saved['consistency']
  assert manifest['consistency_ceiling'] == saved['consistency_ceiling']
  # True views of procedural scenes at 32 px, 3 cameras +-0.3 rad apart: measured 27.8 dB PSNR,
  # depth agreement 0.999, co-visible 0.37.
  ceiling = saved['consistency_ceiling']
  assert ceiling['psnr'] > 24.0 and ceiling['depth_agreement'] > 0.98
  assert 0.2 < ceiling['covisible'] < 0.8
  # Two training steps make noise, not scenes: the generated figure is finite and far below.
  generated = saved['consistency']
  assert generated['num_pairs'] == ceiling['num_pairs'] == 6
  assert 0.0 <= generated['covisible'] < ceiling['covisible']
  # The sample stage's outputs (sample mode, DIR/samples/<run>/) are valid files.
  assert manifest['seed'] == 0 and manifest['num_instances'] == 2
  np.testing.assert_allclose(manifest['instances'][1]['poses'], config.sample.custom_poses,
                             atol=1e-6)
  for inst in saved['instances']:
    inst = pathlib.Path(inst)
    for v in range(3):
      assert iio.imread(inst / f'view_{v:02d}_rgb.png').shape == (32, 32, 3)
      assert iio.imread(inst / f'view_{v:02d}_depth.png').shape == (32, 32, 3)
    assert iio.imread(inst / 'view_02_cond.png').shape == (32, 64, 3)  # colour | depth
    assert iio.imread(inst / 'grid_rgb.png').shape == (32, 3 * 32 + 4, 3)
    assert export.read_frames(str(inst / 'orbit.gif')).shape == (4, 32, 64, 3)  # RGB | depth
    assert export.read_frames(str(inst / 'orbit.mp4')).shape[0] == 4
    # Every pixel of every view has a finite depth (the z-buffer is clipped): 3 * 32 * 32 points.
    assert plyfile.PlyData.read(str(inst / 'points.ply'))['vertex'].count == 3 * 32 * 32
  with np.load(samples / 'views.npz') as f:
    assert f['rgbd'].shape == (2, 3, 32, 32, 4)
    np.testing.assert_allclose(
        f['rgbd'][1, 1, ..., :3],
        iio.imread(samples / 'instance_0001' / 'view_01_rgb.png') / 255.0, atol=0.5 / 255 + 1e-6)
  assert iio.imread(samples / 'overview.png').shape == (2 * 32 + 2, 3 * 32 + 4, 3)
  assert np.isfinite(saved['timings']['total_s'])
