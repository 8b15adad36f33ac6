"""Writing one generated view set: per-view PNGs, grids, conditions, video, PLY, npz.

Host-side numpy in the warp encoding (RGB and z-buffer depth in [0, 1]); the file formats
themselves live in ivd_jax.io, and so do the paths (local folders or gs://, io.paths).
"""
from typing import Any, Optional

import numpy as np

from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.io import glb
from ivd_jax.io import images
from ivd_jax.io import npz
from ivd_jax.io import paths
from ivd_jax.io import ply
from ivd_jax.io import video as video_io
from ivd_jax.sampling import mesh as mesh_lib


def fused_point_cloud(rgbds: np.ndarray, views: np.ndarray, *, near: float, far: float,
                      fov_deg: float, masks: Optional[np.ndarray] = None,
                      max_depth: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
  """Lifts every pixel of every view to world space (docs/method.md §2-3).

  Args:
    rgbds: [V, H, W, 4] in [0, 1]; channel 3 is the z-buffer depth with `near`/`far`.
    views: [V, 4, 4] world->camera matrices.
    near, far: the z-buffer encoding used to lift the views (config.sample.near / far).
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
    colours.append(images.to_uint8(rgbds[v, ..., :3][keep]))
  return np.concatenate(points, 0), np.concatenate(colours, 0)


def export_instance(out_dir: str, *, rgbd: np.ndarray, views: np.ndarray,
                    cond_rgbd: Optional[np.ndarray] = None, cond_mask: Optional[np.ndarray] = None,
                    cond_mask_rgb: Optional[np.ndarray] = None, near: float, far: float,
                    fov_deg: float, grid_cols: Optional[int] = None,
                    video: Optional[np.ndarray] = None, fps: float,
                    ply_max_depth: Optional[float] = None, grid_view_px: int = 0,
                    mesh: Optional[mesh_lib.MeshSettings] = None) -> dict[str, Any]:
  """Writes everything for one generated instance into `out_dir`.

  Files: view_XX_rgb.png, view_XX_depth.png, view_XX_cond.png (condition colour beside its
  colourised condition depth, holes black) at the generated size; grid_rgb.png and
  grid_depth.png (all views), grid_cond.png and grid_mask.png (the condition colour G_c was
  given, holes black, and its mask, white where warped content exists; view 0's is empty),
  enlarged to `grid_view_px`; orbit.gif / orbit.mp4 (when `video` is given, enlarged alike),
  points.ply (all views fused in world space), with `mesh` mesh.ply (+ mesh.glb with trimesh)
  and cameras.ply (export_mesh), arrays.npz (rgbd, views and the conditions).

  Args:
    out_dir: the instance folder.
    rgbd: [V, H, W, 4] generated views in [0, 1] (z-buffer depth with the data near/far).
    views: [V, 4, 4].
    cond_rgbd, cond_mask, cond_mask_rgb: [V, H, W, 4] / [V, H, W, 1] conditions G_c was given
      (view 0's condition is empty).
    near, far: z-buffer encoding used to lift views to 3D for the PLY.
    fov_deg: field of view.
    grid_cols: views per grid row (default: all views of a 3x9 set in 9 columns).
    video: optional [T, H, W, 3] fusion-rendered orbit frames (fusion_video).
    fps: video frame rate.
    ply_max_depth: optional linear-depth cut-off for the point cloud.
    grid_view_px: views in the grids and video frames are enlarged (nearest neighbour, an
      integer factor) to at least this many pixels; 0 keeps the generated size.
    mesh: optional settings of the fused mesh (None: no mesh).

  Returns:
    dict of the written paths (relative to out_dir) and the point count.
  """
  paths.makedirs(out_dir)
  rgbd = np.asarray(rgbd, np.float32)
  num_views = rgbd.shape[0]
  files: dict[str, Any] = {'views': []}
  for v in range(num_views):
    entry = {
        'rgb': f'view_{v:02d}_rgb.png',
        'depth': f'view_{v:02d}_depth.png',
    }
    images.save_png(paths.join(out_dir, entry['rgb']), rgbd[v, ..., :3])
    images.save_png(paths.join(out_dir, entry['depth']), images.colourise_depth(rgbd[v, ..., 3]))
    if cond_rgbd is not None and v > 0:
      m_rgb = cond_mask_rgb[v] if cond_mask_rgb is not None else cond_mask[v]
      cond_picture = np.concatenate([
          images.to_uint8(cond_rgbd[v, ..., :3] * m_rgb),
          images.colourise_depth(cond_rgbd[v, ..., 3], cond_mask[v]),
      ], axis=1)
      entry['cond'] = f'view_{v:02d}_cond.png'
      images.save_png(paths.join(out_dir, entry['cond']), cond_picture)
    files['views'].append(entry)
  cols = grid_cols or (9 if num_views == 27 else min(num_views, 8))
  grids = {'grid_rgb': images.to_uint8(rgbd[..., :3]),
           'grid_depth': images.colourise_depth(rgbd[..., 3])}
  if cond_rgbd is not None and cond_mask is not None:
    m_rgb = cond_mask_rgb if cond_mask_rgb is not None else cond_mask
    grids['grid_cond'] = images.to_uint8(np.asarray(cond_rgbd)[..., :3] * m_rgb)
    grids['grid_mask'] = images.to_uint8(np.repeat(np.asarray(cond_mask)[..., :1], 3, -1))
  for name, tiles in grids.items():
    images.save_png(paths.join(out_dir, f'{name}.png'),
                    images.image_grid(enlarge(tiles, grid_view_px), cols))
    files[name] = f'{name}.png'
  if video is not None:
    written = video_io.save_video(paths.join(out_dir, 'orbit'), enlarge(video, grid_view_px),
                                  fps=fps)
    files.update({k: paths.basename(p) for k, p in written.items()})
  points, colours = fused_point_cloud(rgbd, views, near=near, far=far, fov_deg=fov_deg,
                                      max_depth=ply_max_depth)
  ply.save_ply(paths.join(out_dir, 'points.ply'), points, colours)
  files['ply'], files['num_points'] = 'points.ply', int(points.shape[0])
  if mesh is not None:
    files.update(export_mesh(out_dir, rgbd=rgbd, views=views, near=near, far=far,
                             fov_deg=fov_deg, settings=mesh)[0])
  arrays = {'rgbd': rgbd, 'views': np.asarray(views, np.float32)}
  if cond_rgbd is not None:
    arrays['cond_rgbd'] = np.asarray(cond_rgbd, np.float32)
  if cond_mask is not None:
    arrays['cond_mask'] = np.asarray(cond_mask, np.float32)
  if cond_mask_rgb is not None:
    arrays['cond_mask_rgb'] = np.asarray(cond_mask_rgb, np.float32)
  npz.save_npz(paths.join(out_dir, 'arrays.npz'), compressed=True, **arrays)
  files['npz'] = 'arrays.npz'
  return files


def enlarge(tiles: np.ndarray, min_px: int) -> np.ndarray:
  """[N, H, W, C] pictures enlarged by the integer factor that makes H >= min_px (nearest
  neighbour: a 32 px view becomes a sharp 128 px one, not a blur); min_px 0 keeps them."""
  factor = max(1, -(-int(min_px) // tiles.shape[1])) if min_px else 1
  return np.asarray(tiles).repeat(factor, axis=1).repeat(factor, axis=2)


def export_mesh(out_dir: str, *, rgbd: np.ndarray, views: np.ndarray, near: float, far: float,
                fov_deg: float, settings: mesh_lib.MeshSettings
                ) -> tuple[dict[str, Any], mesh_lib.Mesh]:
  """Writes mesh.ply (TSDF fusion of all views, sampling/mesh.py), mesh.glb when trimesh is
  installed, and cameras.ply (the views' frustums, view 0 red).

  Returns:
    (dict of the written paths (relative to out_dir), the mesh's vertex / face counts and
    grid; the mesh).
  """
  paths.makedirs(out_dir)
  fused, grid = mesh_lib.fused_mesh(rgbd, views, near=near, far=far, fov_deg=fov_deg,
                                    settings=settings)
  ply.save_mesh_ply(paths.join(out_dir, 'mesh.ply'), *fused)
  frustums, edges = mesh_lib.camera_frustums(views, fov_deg=fov_deg, size=settings.frustum_size)
  ply.save_mesh_ply(paths.join(out_dir, 'cameras.ply'), *frustums, edges=edges)
  files = {'mesh': 'mesh.ply', 'cameras': 'cameras.ply', 'mesh_vertices': len(fused.vertices),
           'mesh_faces': len(fused.faces), 'mesh_grid': grid}
  if glb.AVAILABLE and len(fused.faces):
    glb.save_mesh_glb(paths.join(out_dir, 'mesh.glb'), *fused)
    files['mesh_glb'] = 'mesh.glb'
  return files, fused


def fusion_video(frames: np.ndarray) -> np.ndarray:
  """Fused frames [T, H, W, 4] in [0, 1] -> uint8 [T, H, 2W, 3]: colour beside its depth."""
  return np.concatenate([images.to_uint8(frames[..., :3]),
                         images.colourise_depth(frames[..., 3])], axis=2)


def export_run(out_dir: str, *, rgbd: np.ndarray, views: np.ndarray, labels: np.ndarray,
               instance_ids: np.ndarray, overview_views: int = 9,
               grid_view_px: int = 0) -> dict[str, str]:
  """Writes the files of a whole run beside its instance folders.

  Files: views.npz (rgbd, views, labels, instance_ids of every instance) and overview.png (one
  row per instance with its first `overview_views` views, enlarged to `grid_view_px`).

  Args:
    out_dir: the run folder.
    rgbd: [N, V, H, W, 4] generated views in [0, 1].
    views: [N, V, 4, 4].
    labels: [N] class labels.
    instance_ids: [N].
    overview_views: views per row of the overview.
    grid_view_px: views of the overview are enlarged (nearest) to at least this many pixels.

  Returns:
    dict of the written paths (relative to out_dir).
  """
  paths.makedirs(out_dir)
  npz.save_npz(paths.join(out_dir, 'views.npz'), compressed=True, rgbd=rgbd, views=views,
               labels=labels, instance_ids=instance_ids)
  cols = min(rgbd.shape[1], overview_views)
  tiles = rgbd[:, :cols, ..., :3].reshape((-1,) + rgbd.shape[2:4] + (3,))
  images.save_png(paths.join(out_dir, 'overview.png'),
                  images.image_grid(enlarge(images.to_uint8(tiles), grid_view_px), cols))
  return {'npz': 'views.npz', 'overview': 'overview.png'}
