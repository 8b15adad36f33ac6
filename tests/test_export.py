"""Exports of generated view sets: pictures, videos, point clouds, manifest."""
import json
import math

import imageio.v3 as iio
import numpy as np
import plyfile

from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.sampling import export
from ivd_jax.io import images
from ivd_jax.io import jsonio
from ivd_jax.io import ply
from ivd_jax.io import video as video_io


def test_colourise_depth_is_turbo_with_black_holes():
  zbuf = np.array([[0.0, 0.5, 1.0, 1.0]], np.float32)
  mask = np.array([[1, 1, 1, 0]], np.float32)
  rgb = images.colourise_depth(zbuf, mask)
  assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
  # Near (zbuf 0) is Turbo's dark red end, the middle green-yellow, far (zbuf 1) dark blue-violet
  # (the polynomial fit is within ~0.09 of the Turbo table at its ends); masked pixels are black.
  np.testing.assert_allclose(rgb[0, 0], [144, 13, 0], atol=2)
  assert rgb[0, 1, 1] > 200 and rgb[0, 1, 2] < 100
  np.testing.assert_allclose(rgb[0, 2], [35, 23, 27], atol=2)
  np.testing.assert_array_equal(rgb[0, 3], [0, 0, 0])


def test_image_grid_places_tiles_row_major():
  tiles = np.stack([np.full((2, 3, 3), i, np.uint8) for i in range(5)])
  grid = images.image_grid(tiles, cols=3, pad=1, pad_value=255)
  assert grid.shape == (2 * 3 - 1, 3 * 4 - 1, 3)
  assert grid[0, 0, 0] == 0 and grid[0, 4, 0] == 1 and grid[3, 4, 0] == 4
  assert grid[3, 8, 0] == 255  # empty sixth slot keeps the pad colour


def test_png_and_video_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
  path = images.save_png(str(tmp_path / 'a.png'), image)
  np.testing.assert_array_equal(iio.imread(path), image)
  # Smooth frames (video codecs are lossy): a moving gradient, odd size to exercise padding.
  yy, xx = np.mgrid[0:15, 0:21]
  frames = np.stack([np.stack([(xx * 12 + 8 * t) % 256, yy * 16, np.full_like(xx, 128)], -1)
                     for t in range(7)]).astype(np.uint8)
  paths = video_io.save_video(str(tmp_path / 'orbit'), frames, fps=10)
  gif = video_io.read_frames(paths['gif'])
  mp4 = video_io.read_frames(paths['mp4'])
  assert gif.shape[0] == 7 and mp4.shape[0] == 7
  assert gif.shape[1:3] == (15, 21) and mp4.shape[1:3] == (16, 22)  # padded to even for yuv420p
  assert np.abs(gif.astype(int) - frames).mean() < 6.0  # GIF palette quantisation
  assert np.abs(mp4[:, :15, :21].astype(int) - frames).mean() < 12.0


def test_fused_point_cloud_lifts_a_plane_to_world_space(tmp_path):
  # A fronto-parallel plane at depth 2 seen from SOURCE_VIEW (eye (0, 0, 1) looking down -z)
  # lies at world z = 1 - 2 = -1; its extent is +-depth * tan(22.5 deg).
  res, near, far = 8, 0.6, 5.0
  zbuf = float(depth_lib.zbuf_from_depth(np.float32(2.0), near, far))
  rgbd = np.concatenate([np.full((1, res, res, 3), 0.5, np.float32),
                         np.full((1, res, res, 1), zbuf, np.float32)], -1)
  views = np.asarray(cameras.SOURCE_VIEW, np.float32)[None]
  points, colours = export.fused_point_cloud(rgbd, views, near=near, far=far, fov_deg=45.0)
  assert points.shape == (res * res, 3) and colours.shape == (res * res, 3)
  np.testing.assert_allclose(points[:, 2], -1.0, atol=1e-4)
  half = 2.0 * math.tan(math.radians(22.5)) * (1 - 1 / res)  # outermost pixel centre
  np.testing.assert_allclose(np.abs(points[:, :2]).max(), half, rtol=1e-4)
  assert (colours == 128).all()
  # A mask and a depth cut-off drop points.
  mask = np.zeros((1, res, res, 1), np.float32)
  mask[0, :2] = 1
  pts, _ = export.fused_point_cloud(rgbd, views, near=near, far=far, fov_deg=45.0,
                                    masks=mask)
  assert pts.shape[0] == 2 * res
  pts, _ = export.fused_point_cloud(rgbd, views, near=near, far=far, fov_deg=45.0,
                                    max_depth=1.5)
  assert pts.shape[0] == 0
  path = ply.save_ply(str(tmp_path / 'p.ply'), points, colours)
  vertex = plyfile.PlyData.read(path)['vertex']
  assert vertex.count == res * res
  np.testing.assert_allclose(vertex['z'], points[:, 2])
  np.testing.assert_array_equal(vertex['green'], colours[:, 1])


def test_export_instance_writes_every_file(tmp_path):
  rng = np.random.default_rng(1)
  num_views, res = 3, 8
  rgbd = rng.uniform(0.2, 0.8, (num_views, res, res, 4)).astype(np.float32)
  poses = np.array([[0, 0, 1], [0.3, 0, 1], [-0.3, 0.1, 1]], np.float32)
  views = np.asarray(cameras.views_from_poses(poses), np.float32)
  mask = (rng.uniform(size=(num_views, res, res, 1)) > 0.3).astype(np.float32)
  video = rng.uniform(size=(5, res, 2 * res, 3)).astype(np.float32)
  files = export.export_instance(str(tmp_path / 'inst'), rgbd=rgbd, views=views, cond_rgbd=rgbd,
                                 cond_mask=mask, cond_mask_rgb=mask, near=0.6, far=5.0,
                                 fov_deg=45.0, video=video, fps=5)
  inst = tmp_path / 'inst'
  assert iio.imread(inst / files['views'][1]['rgb']).shape == (res, res, 3)
  assert iio.imread(inst / files['views'][1]['depth']).shape == (res, res, 3)
  assert iio.imread(inst / files['views'][2]['cond']).shape == (res, 2 * res, 3)
  assert 'cond' not in files['views'][0]  # view 0 has no condition
  assert iio.imread(inst / 'grid_rgb.png').shape == (res, 3 * res + 4, 3)
  assert video_io.read_frames(str(inst / files['gif'])).shape[0] == 5
  assert plyfile.PlyData.read(str(inst / 'points.ply'))['vertex'].count == num_views * res * res
  assert files['num_points'] == num_views * res * res
  with np.load(inst / 'arrays.npz') as f:
    np.testing.assert_allclose(f['rgbd'], rgbd)
    np.testing.assert_allclose(f['views'], views)
  path = jsonio.write_manifest(str(tmp_path / 'manifest.json'),
                               {'a': np.float32(1.5), 'b': np.arange(3), 'c': float('nan')})
  assert json.loads(open(path).read()) == {'a': 1.5, 'b': [0, 1, 2], 'c': None}


def test_fusion_video_and_run_files(tmp_path):
  rng = np.random.default_rng(2)
  frames = rng.uniform(size=(4, 6, 5, 4)).astype(np.float32)
  video = export.fusion_video(frames)
  assert video.shape == (4, 6, 10, 3) and video.dtype == np.uint8
  np.testing.assert_array_equal(video[..., :5, :], images.to_uint8(frames[..., :3]))
  np.testing.assert_array_equal(video[..., 5:, :], images.colourise_depth(frames[..., 3]))
  # Two instances of three views: one overview row each; views.npz holds every array.
  rgbd = rng.uniform(size=(2, 3, 6, 5, 4)).astype(np.float32)
  views = np.broadcast_to(np.eye(4, dtype=np.float32), (2, 3, 4, 4))
  files = export.export_run(str(tmp_path / 'run'), rgbd=rgbd, views=views,
                            labels=np.array([-1, -1]), instance_ids=np.array([4, 9]))
  overview = iio.imread(tmp_path / 'run' / files['overview'])
  assert overview.shape == (2 * 6 + 2, 3 * 5 + 2 * 2, 3)  # 2-pixel padding between tiles
  with np.load(tmp_path / 'run' / files['npz']) as f:
    np.testing.assert_allclose(f['rgbd'], rgbd)
    np.testing.assert_array_equal(f['instance_ids'], [4, 9])
