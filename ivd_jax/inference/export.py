"""Writers for generated view sets: PNGs, colourised depth, grids, GIF/MP4, PLY, npz, manifest.

Everything here runs on the host with numpy arrays in the warp encoding (RGB and the z-buffer
depth channel both in [0, 1], METHOD 3). Nothing here compiles; the device side (sampling,
fusion rendering) lives in views.py.
"""
import json
import os
from typing import Any, Mapping, Optional

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np
import plyfile

from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib

# Coefficients of the polynomial fit to the Turbo colour map (Mikhailov 2019, Apache 2.0), so the
# depth pictures need no matplotlib: channel = sum_k c_k x^k for x in [0, 1].
_TURBO = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
], np.float64)


def to_uint8(x01: np.ndarray) -> np.ndarray:
  """[0, 1] floats -> uint8 with rounding; values outside are clipped."""
  return np.round(np.clip(np.asarray(x01, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def colourise_depth(zbuf: np.ndarray, mask: Optional[np.ndarray] = None) -> np.ndarray:
  """Turbo-coloured picture of a z-buffer depth map (near = red, far = blue).

  Args:
    zbuf: [..., H, W] or [..., H, W, 1] z-buffer depth in [0, 1] (0 = near plane).
    mask: optional [..., H, W(, 1)] validity; invalid pixels are drawn black.

  Returns:
    uint8 [..., H, W, 3].
  """
  z = np.asarray(zbuf, np.float64)
  if z.ndim >= 3 and z.shape[-1] == 1:
    z = z[..., 0]
  # The z-buffer encoding is already disparity-like; stretching it per image with its own range
  # keeps both near and far content readable whatever near/far the depth was encoded with.
  x = 1.0 - np.clip(z, 0.0, 1.0)
  powers = np.stack([x**k for k in range(_TURBO.shape[1])], axis=-1)  # [..., H, W, 6]
  rgb = np.clip(powers @ _TURBO.T, 0.0, 1.0)
  if mask is not None:
    m = np.asarray(mask)
    if m.ndim == rgb.ndim:
      m = m[..., 0]
    rgb = rgb * (m[..., None] > 0.5)
  return to_uint8(rgb)


def image_grid(images: np.ndarray, cols: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
  """Tiles [N, H, W, C] uint8 images row-major into one [R*(H+pad)-pad, ...] picture."""
  images = np.asarray(images)
  n, h, w, c = images.shape
  cols = max(1, min(cols, n))
  rows = -(-n // cols)
  grid = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), pad_value, images.dtype)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = images[i]
  return grid


def save_png(path: str, image: np.ndarray) -> str:
  """Writes a uint8 [H, W, 3] (or [H, W]) image; floats are taken as [0, 1]."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = to_uint8(image)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  iio.imwrite(path, image, extension='.png')
  return path


def save_video(path_stem: str, frames: np.ndarray, fps: float = 15.0) -> dict[str, str]:
  """Writes frames [T, H, W, 3] (uint8, or floats in [0, 1]) as `<stem>.gif` and `<stem>.mp4`.

  The MP4 is H.264 / yuv420p (plays everywhere), so frames are padded to even sizes.
  """
  frames = np.asarray(frames)
  if frames.dtype != np.uint8:
    frames = to_uint8(frames)
  os.makedirs(os.path.dirname(path_stem) or '.', exist_ok=True)
  gif = path_stem + '.gif'
  # Pillow's GIF writer takes the frame duration in milliseconds; loop=0 repeats forever.
  iio.imwrite(gif, frames, extension='.gif', duration=1000.0 / fps, loop=0)
  _, h, w, _ = frames.shape
  even = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='edge')
  mp4 = path_stem + '.mp4'
  with imageio_v2.get_writer(mp4, format='FFMPEG', mode='I', fps=fps, codec='libx264',
                             pixelformat='yuv420p', macro_block_size=1, quality=8) as writer:
    for frame in even:
      writer.append_data(frame)
  return {'gif': gif, 'mp4': mp4}


def fused_point_cloud(rgbds: np.ndarray, views: np.ndarray, *, near: float, far: float,
                      fov_deg: float = 45.0, masks: Optional[np.ndarray] = None,
                      max_depth: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
  """Lifts every pixel of every view to world space (METHOD 2-3 cameras and depth encoding).

  Args:
    rgbds: [V, H, W, 4] in [0, 1]; channel 3 is the z-buffer depth with `near`/`far`.
    views: [V, 4, 4] world->camera matrices.
    near, far: the z-buffer encoding used to lift the views (sampling default 0.6 / 5).
    fov_deg: field of view.
    masks: optional [V, H, W(, 1)] selecting which pixels to keep.
    max_depth: optional cut-off on linear depth (drops the far background, e.g. the sky plane).

  Returns:
    points [P, 3] float32 in world space and colours [P, 3] uint8.
  """
  rgbds = np.asarray(rgbds, np.float32)
  views = np.asarray(views, np.float32)
  points, colours = [], []
  for v in range(rgbds.shape[0]):
    d = np.asarray(depth_lib.depth_from_zbuf(rgbds[v, ..., 3], near, far), np.float32)
    world = np.asarray(cameras.unproject(d, views[v], fov_deg=fov_deg), np.float32)  # [H, W, 3]
    keep = np.isfinite(world).all(-1) & (d > 0)
    if masks is not None:
      m = np.asarray(masks[v])
      keep &= (m[..., 0] if m.ndim == 3 else m) > 0.5
    if max_depth is not None:
      keep &= d <= max_depth
    points.append(world[keep])
    colours.append(to_uint8(rgbds[v, ..., :3][keep]))
  return np.concatenate(points, 0), np.concatenate(colours, 0)


def save_ply(path: str, points: np.ndarray, colours: np.ndarray) -> str:
  """Writes a binary little-endian PLY with float x, y, z and uchar red, green, blue."""
  points = np.asarray(points, np.float32).reshape(-1, 3)
  colours = np.asarray(colours, np.uint8).reshape(-1, 3)
  if points.shape[0] != colours.shape[0]:
    raise ValueError(f'{points.shape[0]} points but {colours.shape[0]} colours')
  vertex = np.empty(points.shape[0], dtype=[('x', 'f4'), ('y', 'f4'), ('z', 'f4'),
                                            ('red', 'u1'), ('green', 'u1'), ('blue', 'u1')])
  for i, name in enumerate('xyz'):
    vertex[name] = points[:, i]
  for i, name in enumerate(('red', 'green', 'blue')):
    vertex[name] = colours[:, i]
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  plyfile.PlyData([plyfile.PlyElement.describe(vertex, 'vertex')]).write(path)
  return path


def _jsonable(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray) or hasattr(x, '__array__') and not isinstance(x, (str, bytes)):
    arr = np.asarray(x)
    return arr.item() if arr.ndim == 0 else arr.tolist()
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    return x.item()
  if isinstance(x, float) and not np.isfinite(x):
    return None  # JSON has no NaN/inf; null says "not measured".
  return x


def write_manifest(path: str, manifest: Mapping[str, Any]) -> str:
  """Writes manifest.json (numpy values become lists/numbers, NaN becomes null)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'w') as f:
    json.dump(_jsonable(manifest), f, indent=1, allow_nan=False)
  return path


def export_instance(out_dir: str, *, rgbd: np.ndarray, views: np.ndarray,
                    cond_rgbd: Optional[np.ndarray] = None, cond_mask: Optional[np.ndarray] = None,
                    cond_mask_rgb: Optional[np.ndarray] = None, near: float, far: float,
                    fov_deg: float = 45.0, grid_cols: Optional[int] = None,
                    video: Optional[np.ndarray] = None, fps: float = 15.0,
                    ply_max_depth: Optional[float] = None) -> dict[str, Any]:
  """Writes everything for one generated instance into `out_dir`.

  Files: view_XX_rgb.png, view_XX_depth.png, view_XX_cond.png (condition colour beside its
  colourised condition depth, holes black), grid_rgb.png and grid_depth.png (all views),
  orbit.gif / orbit.mp4 (when `video` is given), points.ply (all views fused in world space),
  arrays.npz (rgbd, views and the conditions).

  Args:
    out_dir: the instance folder.
    rgbd: [V, H, W, 4] generated views in [0, 1] (z-buffer depth with the data near/far).
    views: [V, 4, 4].
    cond_rgbd, cond_mask, cond_mask_rgb: [V, H, W, 4] / [V, H, W, 1] conditions G_c was given
      (view 0's condition is empty).
    near, far: z-buffer encoding used to lift views to 3D for the PLY.
    fov_deg: field of view.
    grid_cols: views per grid row (default: all views of a 3x9 set in 9 columns).
    video: optional [T, H, W, 3] fusion-rendered orbit frames.
    fps: video frame rate.
    ply_max_depth: optional linear-depth cut-off for the point cloud.

  Returns:
    dict of the written paths (relative to out_dir) and the point count.
  """
  os.makedirs(out_dir, exist_ok=True)
  rgbd = np.asarray(rgbd, np.float32)
  num_views = rgbd.shape[0]
  files: dict[str, Any] = {'views': []}
  for v in range(num_views):
    entry = {
        'rgb': f'view_{v:02d}_rgb.png',
        'depth': f'view_{v:02d}_depth.png',
    }
    save_png(os.path.join(out_dir, entry['rgb']), rgbd[v, ..., :3])
    save_png(os.path.join(out_dir, entry['depth']), colourise_depth(rgbd[v, ..., 3]))
    if cond_rgbd is not None and v > 0:
      m_rgb = cond_mask_rgb[v] if cond_mask_rgb is not None else cond_mask[v]
      cond_picture = np.concatenate([
          to_uint8(cond_rgbd[v, ..., :3] * m_rgb),
          colourise_depth(cond_rgbd[v, ..., 3], cond_mask[v]),
      ], axis=1)
      entry['cond'] = f'view_{v:02d}_cond.png'
      save_png(os.path.join(out_dir, entry['cond']), cond_picture)
    files['views'].append(entry)
  cols = grid_cols or (9 if num_views == 27 else min(num_views, 8))
  save_png(os.path.join(out_dir, 'grid_rgb.png'), image_grid(to_uint8(rgbd[..., :3]), cols))
  save_png(os.path.join(out_dir, 'grid_depth.png'), image_grid(colourise_depth(rgbd[..., 3]), cols))
  files['grid_rgb'], files['grid_depth'] = 'grid_rgb.png', 'grid_depth.png'
  if video is not None:
    written = save_video(os.path.join(out_dir, 'orbit'), video, fps=fps)
    files.update({k: os.path.basename(p) for k, p in written.items()})
  points, colours = fused_point_cloud(rgbd, views, near=near, far=far, fov_deg=fov_deg,
                                      max_depth=ply_max_depth)
  save_ply(os.path.join(out_dir, 'points.ply'), points, colours)
  files['ply'], files['num_points'] = 'points.ply', int(points.shape[0])
  arrays = {'rgbd': rgbd, 'views': np.asarray(views, np.float32)}
  if cond_rgbd is not None:
    arrays['cond_rgbd'] = np.asarray(cond_rgbd, np.float32)
  if cond_mask is not None:
    arrays['cond_mask'] = np.asarray(cond_mask, np.float32)
  if cond_mask_rgb is not None:
    arrays['cond_mask_rgb'] = np.asarray(cond_mask_rgb, np.float32)
  np.savez_compressed(os.path.join(out_dir, 'arrays.npz'), **arrays)
  files['npz'] = 'arrays.npz'
  return files


def read_frames(path: str) -> np.ndarray:
  """Reads every frame of a GIF/MP4 back as uint8 [T, H, W, 3] (used by tests and notebooks)."""
  if path.endswith('.mp4'):
    with imageio_v2.get_reader(path, format='FFMPEG') as reader:
      return np.stack([np.asarray(f)[..., :3] for f in reader])
  frames = iio.imread(path, index=None, extension='.gif')
  return np.asarray(frames)[..., :3]

