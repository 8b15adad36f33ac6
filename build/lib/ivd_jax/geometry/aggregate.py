"""Aggregated conditioning of docs/method.md §8: warp every earlier view into the new camera and
blend.

Each view is splatted separately with its own z-buffer (raster.render_mesh), exactly like the
reference's AggregationRenderer draws each mesh into a cleared depth buffer, and the fragments
are blended per sub-pixel:
* weight w_i = max(exp(max(-20 theta, -50)), 1e-4), theta the angle between the surface normal
  and the direction to view i's own camera; texture in view i's eroded border gets w * 1e-8;
  material at cuts gets 1e-16; back-facing material contributes nothing (but occludes its view);
* colour = sum w_i c_i / sum w_i; depth = mean of the valid fragments (in inverse depth, the
  space of the reference's depth buffer); where only cut material is present, the farthest cut
  fragment (this bridged depth is the hull of docs/method.md §7); mask = any valid fragment;
  mask_rgb = any valid non-eroded texture;
* then the > 0.75 ssaa^2 coverage rule, depth_edge and mask_rgb &= erode(mask, 2 erode - 1).

`valid` marks the filled slots of a fixed-size view buffer so that one compiled function serves
a whole view sequence.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ivd_jax import errors
from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.geometry import raster
from ivd_jax.geometry import warp

# The reference's AggregationRenderer clips at 0.01.
AGG_CLIP_NEAR = 0.01
# Depth of the reference's "frustum" padding ring in its own camera.
CURTAIN_NEAR = 0.1
CUT_WEIGHT = 1e-16
ERODED_FACTOR = 1e-8


class Aggregated(NamedTuple):
  """rgbd [H, W, 4] (colour zero outside mask_rgb, depth zero outside mask); mask, mask_rgb
  [H, W, 1] in {0, 1}; hull [H, W, 1]: z-buffer lower bound of newly revealed content (the
  aggregated depth including cut material and the views' frustum curtains; 0 where nothing
  bounds it)."""
  rgbd: jnp.ndarray
  mask: jnp.ndarray
  mask_rgb: jnp.ndarray
  hull: jnp.ndarray


def depth_normals(points: jnp.ndarray) -> jnp.ndarray:
  """Unit normals [H, W, 3] of a grid of camera-space points (the reference's Sobel normals)."""
  p = jnp.pad(points, ((1, 1), (1, 1), (0, 0)), mode='edge')
  edge_x = p[:, 2:] - p[:, :-2]
  edge_y = p[:-2, :] - p[2:, :]
  edge_x = (edge_x[:-2, :] + 2 * edge_x[1:-1, :] + edge_x[2:, :]) / 4
  edge_y = (edge_y[:, :-2] + 2 * edge_y[:, 1:-1] + edge_y[:, 2:]) / 4
  n = jnp.cross(edge_x, edge_y)
  return n / jnp.maximum(jnp.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def frustum_curtain(depth: jnp.ndarray, view_to_target: jnp.ndarray, *, fov_deg: float,
                    near_clip: float = CURTAIN_NEAR) -> jnp.ndarray:
  """Target planar depth [N, N] where each target pixel's centre ray leaves a view's frustum.

  The reference pads every aggregated mesh with a ring of vertices one pixel outside the image
  pulled to depth 0.1 ("frustum" padding): a curtain along the frustum's side walls from the
  image border to the camera. Its inner side faces the target wherever a target ray leaves the
  frustum (its outer side is discarded as back-facing), so it bounds the depth of content the
  view could not see. Here the curtain is the side planes themselves (the image edges), between
  depth `near_clip` and the depth of the nearest border pixel. +inf where a ray meets no curtain.

  Args:
    depth: [N, N] planar depth of the view (the border rows/columns are used).
    view_to_target: [4, 4] the view's camera -> target camera transform.
    fov_deg: field of view.
    near_clip: where the reference's padding ring sits (0.1).
  """
  n = depth.shape[0]
  h = 0.5 / cameras.focal_length(fov_deg)  # the image edge: |x / -z| = h
  target_to_view = cameras.invert_view(view_to_target)
  rays = cameras.pixel_rays(n, fov_deg).reshape(-1, 3) @ target_to_view[:3, :3].T  # [P, 3]
  o = target_to_view[:3, 3]
  # Inside <=> n_j . p >= 0 for the planes left, right, top, bottom.
  normals = jnp.array([[1.0, 0.0, -h], [-1.0, 0.0, -h], [0.0, -1.0, -h], [0.0, 1.0, -h]])
  g0 = normals @ o  # [4]
  dg = rays @ normals.T  # [P, 4]
  lam = -g0 / jnp.where(dg == 0, 1e-30, dg)
  entering = dg > 0
  lam_in = jnp.max(jnp.where(entering, lam, -jnp.inf), -1)
  lam_in = jnp.maximum(lam_in, jnp.where(jnp.all(g0 >= 0), 0.0, lam_in))
  exiting = dg < 0
  lam_out = jnp.min(jnp.where(exiting, lam, jnp.inf), -1)
  plane = jnp.argmin(jnp.where(exiting, lam, jnp.inf), -1)
  p = o + lam_out[:, None] * rays
  z = -p[:, 2]
  safe_z = jnp.where(z > 0, z, 1.0)
  u = jnp.clip(0.5 + p[:, 0] / safe_z * 0.5 / h, 0.0, 1.0)
  v = jnp.clip(0.5 - p[:, 1] / safe_z * 0.5 / h, 0.0, 1.0)
  col = jnp.clip(jnp.floor(u * n), 0, n - 1).astype(jnp.int32)
  row = jnp.clip(jnp.floor(v * n), 0, n - 1).astype(jnp.int32)
  border = jnp.stack([depth[row, 0], depth[row, n - 1], depth[0, col], depth[n - 1, col]], -1)
  border_depth = jnp.take_along_axis(border, plane[:, None], -1)[:, 0]
  ok = (jnp.isfinite(lam_out) & (lam_out > 0) & (lam_in <= lam_out) & (z >= near_clip)
        & (z <= border_depth))
  return jnp.where(ok, lam_out, jnp.inf).reshape(n, n)


def _render_view(rgbd, view, target_view, *, near, far, fov_deg, ssaa, atol, rtol, erode):
  """One view's fragments in the target: per sub-pixel weight class, colour and inverse depth."""
  n = rgbd.shape[0]
  zb = rgbd[..., 3]
  exists = jnp.isfinite(zb)
  depth = jnp.where(exists, depth_lib.depth_from_zbuf(jnp.where(exists, zb, 0.5), near, far), 1.0)
  src_pts = warp.grid_points(depth, fov_deg, n)
  diag_a = warp.shorter_diagonal(src_pts)
  edge = warp.cut_flags(depth, diag_a, atol=atol, rtol=rtol)
  eroded = warp.erode((~edge)[..., None], 2 * erode + 1)[..., 0] < 0.5
  to_target = warp.relative_transform(view, target_view)
  pts = warp.apply_transform(to_target, src_pts)
  normals = depth_normals(src_pts) @ to_target[:3, :3].T
  payload = jnp.concatenate([jnp.nan_to_num(rgbd[..., :3]), normals, pts], -1)
  out = raster.render_mesh(pts, payload, exists, [edge, eroded], resolution=n, fov_deg=fov_deg,
                         ssaa=ssaa, diag_a=diag_a, clip_near=AGG_CLIP_NEAR)
  # Direction from the fragment to view i's own camera, in target camera coordinates.
  eye = to_target[:3, 3]
  pay = out['payload']
  to_eye = eye - pay[..., 6:9]
  to_eye = to_eye / jnp.maximum(jnp.linalg.norm(to_eye, axis=-1, keepdims=True), 1e-12)
  normal = pay[..., 3:6] / jnp.maximum(jnp.linalg.norm(pay[..., 3:6], axis=-1, keepdims=True),
                                       1e-12)
  theta = jnp.arccos(jnp.clip(jnp.sum(to_eye * normal, -1), 0.0, 1.0))
  weight = jnp.maximum(jnp.exp(jnp.maximum(-20.0 * theta, -50.0)), 1e-4)
  is_edge, is_eroded = out['flags'][..., 0], out['flags'][..., 1]
  weight = jnp.where(is_eroded, weight * ERODED_FACTOR, weight)
  front = out['hit'] & out['front']
  valid = front & ~is_edge
  weight = jnp.where(is_edge, CUT_WEIGHT, weight) * front
  # Centre sub-pixels where the view drew nothing show its frustum curtain (cut-class material).
  centre_hit = raster.centre_subpixel(out['hit'], ssaa)
  curtain = frustum_curtain(depth, to_target, fov_deg=fov_deg)
  centre_depth = jnp.where(centre_hit, out['centre_depth'], curtain)
  centre_edge = (raster.centre_subpixel(front & is_edge, ssaa)
                 | (~centre_hit & jnp.isfinite(curtain)))
  inv_centre = 1.0 / jnp.maximum(centre_depth, 1e-6)
  return dict(weight=weight, colour=pay[..., :3], valid=valid, edge=front & is_edge,
              texture=valid & ~is_eroded, inv_centre=inv_centre, centre_edge=centre_edge)


def aggregate_views(rgbds: jnp.ndarray, views: jnp.ndarray, valid: jnp.ndarray,
                    target_view: jnp.ndarray, *, near: float, far: float, fov_deg: float = 45.0,
                    ssaa: int = 3, atol: float = 0.03, rtol: float = 0.03, erode: int = 3
                    ) -> Aggregated:
  """Aggregates V RGB-D views [V, N, N, 4] (z-buffer depth with near/far) into target_view.

  Args:
    rgbds: [V, N, N, 4] in [0, 1]; slots with valid=False are ignored (any content).
    views: [V, 4, 4] world -> camera matrices of the slots.
    valid: [V] bool, which slots hold views.
    target_view: [4, 4].
    near, far: depth encoding (0.6 / 5 at sampling in the reference).
    fov_deg, ssaa, atol, rtol: as in warp.warp_rgbd (sampling uses 0.03).
    erode: texture erosion radius: (2 erode + 1)^2 on each view's non-cut vertices, and
      (2 erode - 1)^2 on the final mask for mask_rgb.

  Returns:
    Aggregated(rgbd, mask, mask_rgb, hull), all [N, N, .] float32.
  """
  if rgbds.ndim != 4 or rgbds.shape[-1] != 4 or rgbds.shape[1] != rgbds.shape[2]:
    raise errors.UserError(f'rgbds has shape {rgbds.shape}; expected [V, N, N, 4]')
  if views.shape != (rgbds.shape[0], 4, 4) or valid.shape != (rgbds.shape[0],):
    raise errors.UserError(
        f'views {views.shape} / valid {valid.shape} must be [V, 4, 4] / [V] with '
        f'V = {rgbds.shape[0]} (one per rgbd slot)')
  if erode < 1:
    raise errors.UserError(f'erode={erode}; use a radius >= 1 (3 in the reference)')
  render = lambda r, v: _render_view(r, v, target_view, near=near, far=far, fov_deg=fov_deg,
                                     ssaa=ssaa, atol=atol, rtol=rtol, erode=erode)
  frag = jax.vmap(render)(rgbds, views)
  on = jnp.asarray(valid, bool)[:, None, None]
  weight = frag['weight'] * on
  is_valid = frag['valid'] & on
  is_edge = frag['edge'] & on
  is_texture = frag['texture'] & on

  wsum = weight.sum(0)
  colour = (weight[..., None] * frag['colour']).sum(0) / jnp.maximum(wsum, 1e-30)[..., None]
  coloured = wsum > 0
  mask_sub = is_valid.any(0)
  mask_rgb_sub = is_texture.any(0)
  count = warp.downsample(coloured.astype(jnp.float32), ssaa)
  colour = (warp.downsample(colour * coloured[..., None], ssaa)
            / jnp.maximum(count, 1.0)[..., None])

  # Depth at the pixel centres: mean inverse depth of the valid fragments, else the farthest cut
  # fragment, else nothing (hull 0 = the near plane, a trivial lower bound).
  centre = lambda x: raster.centre_subpixel(jnp.moveaxis(x, 0, -1), ssaa)
  c_valid = centre(is_valid)
  c_edge = jnp.moveaxis(frag['centre_edge'] & on, 0, -1)
  inv = jnp.moveaxis(frag['inv_centre'], 0, -1)
  n_valid = c_valid.sum(-1)
  inv_valid = jnp.sum(inv * c_valid, -1) / jnp.maximum(n_valid, 1)
  inv_edge = jnp.min(jnp.where(c_edge, inv, jnp.inf), -1)
  inv_depth = jnp.where(n_valid > 0, inv_valid, inv_edge)
  known = (n_valid > 0) | c_edge.any(-1)
  depth = jnp.where(known, 1.0 / jnp.where(known, inv_depth, 1.0), near)
  zbuf = depth_lib.zbuf_from_depth(depth, near, far)

  threshold = 0.75 * ssaa * ssaa
  mask = ((warp.downsample(mask_sub.astype(jnp.float32), ssaa) > threshold)
          & warp.depth_edge(zbuf, atol=atol, rtol=rtol))
  mask = mask[..., None].astype(jnp.float32)
  mask_rgb = ((warp.downsample(mask_rgb_sub.astype(jnp.float32), ssaa) > threshold)[..., None]
              & (warp.erode(mask, 2 * erode - 1) > 0.5)).astype(jnp.float32)
  rgbd = jnp.concatenate([colour * mask_rgb, zbuf[..., None] * mask], -1)
  return Aggregated(rgbd=rgbd, mask=mask, mask_rgb=mask_rgb, hull=zbuf[..., None])

