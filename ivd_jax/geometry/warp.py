"""The warp operator of docs/method.md §4: RGB-D images between cameras by a jittable splat.

The reference renders an RGB-D image as a triangle mesh on its pixel grid with OpenGL at 3x
supersampling (SSAA). Here this module builds the same mesh (grid_points; every grid quad split
into two triangles along its shorter 3D diagonal, shorter_diagonal, as the reference does) and
raster.render_mesh rasterises it by point sampling: K x K samples per quad (K = 5 for ssaa = 3:
~3 samples per target sub-pixel, and a surface stretched ~1.2x still leaves no pinholes),
interpolated linearly on their triangle, projected and resolved per sub-pixel with a z-buffer
(scatter-min of planar depth) in which, among the samples of the nearest surface, the one nearest
to the sub-pixel centre brings its colour and flags. Then docs/method.md §4:

* a triangle is cut (a depth discontinuity) where BOTH max-min depth > atol and max-min inverse
  depth > rtol over its three vertices; vertices of cut triangles are flagged and a triangle
  whose three vertices are all flagged occludes but is not covered (the reference's shader
  hides a fragment when its interpolated flag is ~1);
* back-facing triangles occlude but are not covered;
* a pixel is visible when more than 0.75 * ssaa^2 of its sub-pixels are covered; its colour is
  the mean of the covered sub-pixels and its depth the centre sub-pixel's z-buffer value;
* depth_edge removes pixels touched by 3 or more discontinuous neighbour pairs.

forward_backward_warp refines this where its two passes need it. The forward pass, whose
intermediate image is read at pixel centres only, lets a sample whose triangle covers its
sub-pixel's centre beat any that does not (render_mesh centre_first): OpenGL shows the surface
AT the centre, the nearest sample anywhere in the cell would favour the foreground at edges. The
backward pass samples strongly stretched quads (_stretched_quads) more densely (render_mesh
refine), where K x K samples thin out to more than a sub-pixel apart. Its colour is no mean of
sub-pixels: each pass finds where every pixel centre lands on the grid it renders (render_mesh
centre_grid) and resamples the colour there with a Catmull-Rom cubic (resample.py). The
reference's resampling (nearest texel at 3x SSAA, then a Lanczos downsample) is sharp; a mean
over nearest texels or linear interpolation, twice, blurs more (issue #15: 1.2-2.2 dB below the
reference on the fixtures' pixels both warps keep; the cubic is 0.4-2.3 dB above it).

Vertices with NaN/inf depth produce no triangles at all, so they can never be visible, and every
output is finite. Everything works on single examples; use jax.vmap for batches.
"""
import functools
from typing import Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

from ivd_jax import errors
from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.geometry import raster
from ivd_jax.geometry import resample

# The first warp of a forward-backward warp extends the source image by this many pixels of
# replicated border depth and colour. The reference pads by `resolution` pixels, but only the
# innermost pixels of that strip can land inside the source image again after the backward warp;
# three pixels keep the backward mesh closed over the source border for any pi_1 of
# docs/method.md §5.
FBW_BORDER = 3
# The intermediate image of forward_backward_warp is read only at pixel centres (depth and
# colour of the centre sample, as the reference reads depth[1::3, 1::3]), so its z-buffer needs
# no supersampling: one cell per pixel with 3 x 3 samples per quad (spacing 1/3 pixel).
FBW_MID_SSAA = 1
FBW_MID_SAMPLES = 3
# The backward warp of forward_backward_warp samples quads stretched beyond STRETCHED_SUBPIXELS
# (longest projected edge in sub-pixels; an unstretched quad spans ssaa) raster.REFINE_SPLIT^2
# times as densely. There 5 x 5 samples thin out to over a sub-pixel apart, so coverage and the
# winning triangles at surface edges drift from OpenGL's exact rasterisation (measured on the
# fixtures: fbw recall -0.003; 7 x 7 samples on every quad recover the same but cost 37 % more
# CPU). At most one quad in FBW_REFINE_SHARE is refined (the first in raster order; a fixed size,
# so it stays jittable); the fixture views stretch 2-7 % of the quads that much.
STRETCHED_SUBPIXELS = 5.0
FBW_REFINE_SHARE = 48


class Warped(NamedTuple):
  """A warped RGB-D image: rgbd [H, W, 4] (zero outside the mask) and mask [H, W, 1] in {0, 1}."""
  rgbd: jnp.ndarray
  mask: jnp.ndarray


def cut_flags(depth: jnp.ndarray, diag_a: jnp.ndarray, *, atol: float, rtol: float
              ) -> jnp.ndarray:
  """Vertex flags [Hv, Wv] of the reference's mask_discontinuity: vertices of cut triangles.

  A triangle is cut where BOTH max-min depth > atol and max-min inverse depth > rtol.
  """
  inv = 1.0 / jnp.maximum(depth, 1e-12)
  per_tri = []
  for tri_d, tri_i in zip(raster.triangle_corners(raster.quad_corners(depth), diag_a),
                          raster.triangle_corners(raster.quad_corners(inv), diag_a)):
    d = jnp.stack(tri_d)
    i = jnp.stack(tri_i)
    per_tri.append(((d.max(0) - d.min(0)) > atol) & ((i.max(0) - i.min(0)) > rtol))
  cut0, cut1 = per_tri
  both = cut0 | cut1
  # Which triangles touch each corner: A: c00, c11 both, c01 tri0, c10 tri1;
  # B: c01, c10 both, c00 tri0, c11 tri1.
  f00 = jnp.where(diag_a, both, cut0)
  f01 = jnp.where(diag_a, cut0, both)
  f10 = jnp.where(diag_a, cut1, both)
  f11 = jnp.where(diag_a, both, cut1)
  pad = lambda x, r, c: jnp.pad(x, ((r, 1 - r), (c, 1 - c)))
  return pad(f00, 0, 0) | pad(f01, 0, 1) | pad(f10, 1, 0) | pad(f11, 1, 1)


def shorter_diagonal(points: jnp.ndarray) -> jnp.ndarray:
  """[Hv-1, Wv-1] True where the quad is split along c00-c11 (the shorter 3D diagonal)."""
  c00, c01, c10, c11 = raster.quad_corners(points)
  return (jnp.linalg.norm(c00 - c11, axis=-1) < jnp.linalg.norm(c01 - c10, axis=-1))


def downsample(x: jnp.ndarray, ssaa: int, op: str = 'sum') -> jnp.ndarray:
  """Reduces ssaa x ssaa blocks of [S, S, ...] to [S/ssaa, S/ssaa, ...]."""
  s = x.shape[0] // ssaa
  x = x.reshape((s, ssaa, s, ssaa) + x.shape[2:])
  return getattr(x, op)(axis=(1, 3))


def _stretched_quads(points: jnp.ndarray, exists: jnp.ndarray, diag_a: jnp.ndarray, count: int,
                     *, size: int, fov_deg: float) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Flat ids [count] of the first quads (raster order) stretched beyond STRETCHED_SUBPIXELS.

  Arguments as in raster.render_mesh (size = ssaa N). Only drawn quads in front of its clip plane
  whose projected bounding box meets the image count. Returns the ids and whether each is a real
  one (fewer may qualify): render_mesh's `refine`.
  """
  f = cameras.focal_length(fov_deg)
  points = jnp.where(exists[..., None], points, 0.0)
  quad_exists = raster.triangle_all(exists, diag_a).any(-1)
  z = -points[..., 2]
  ok = z > raster.CLIP_NEAR
  inv_z = 1.0 / jnp.where(ok, z, 1.0)
  col = (0.5 + f * points[..., 0] * inv_z) * size
  row = (0.5 - f * points[..., 1] * inv_z) * size
  foot = jnp.zeros(quad_exists.shape, jnp.float32)
  for v in (col, row):
    c00, c01, c10, c11 = raster.quad_corners(v)
    for a, b in ((c00, c01), (c10, c11), (c00, c10), (c01, c11)):
      foot = jnp.maximum(foot, jnp.abs(a - b))
  q_ok = functools.reduce(jnp.logical_and, raster.quad_corners(ok)) & quad_exists
  cols, rws = raster.quad_corners(col), raster.quad_corners(row)
  lo = lambda cs: functools.reduce(jnp.minimum, cs)
  hi = lambda cs: functools.reduce(jnp.maximum, cs)
  q_ok = q_ok & (hi(cols) >= 0) & (lo(cols) < size) & (hi(rws) >= 0) & (lo(rws) < size)
  stretched = (q_ok & (foot > STRETCHED_SUBPIXELS)).reshape(-1)
  # The first `count` in raster order; top_k on minus the index is the cheapest such compaction
  # on XLA CPU (a third of jnp.nonzero's cumsum).
  num = stretched.shape[0]
  key, ids = jax.lax.top_k(jnp.where(stretched, -jnp.arange(num, dtype=jnp.float32),
                                     -2.0 * num), count)
  return ids.astype(jnp.int32), key > -num


def depth_edge(zbuf: jnp.ndarray, *, atol: float, rtol: float) -> jnp.ndarray:
  """Keep-mask of docs/method.md §4 step 5: False where >= 3 discontinuous pairs touch a pixel.

  A pair of 8-neighbours is discontinuous when it differs by more than atol AND its inverses
  by more than rtol. zbuf is [H, W] or [H, W, 1]; the result has the same shape (bool).
  """
  x = jnp.maximum(zbuf, 1e-6)
  if x.ndim == 3:
    x = x[..., 0]
  inv = 1.0 / x
  diff = lambda a, b, ia, ib: (jnp.abs(a - b) > atol) & (jnp.abs(ia - ib) > rtol)
  count = jnp.zeros(x.shape, jnp.int32)
  for (ra, ca), (rb, cb) in (((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                             ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
                             ((slice(1, None), slice(1, None)), (slice(None, -1), slice(None, -1))),
                             ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None)))):
    d = diff(x[ra, ca], x[rb, cb], inv[ra, ca], inv[rb, cb]).astype(jnp.int32)
    count = count.at[ra, ca].add(d).at[rb, cb].add(d)
  keep = count < 3
  return keep[..., None] if zbuf.ndim == 3 else keep


def erode(mask: jnp.ndarray, size: int) -> jnp.ndarray:
  """Square size x size erosion of a [H, W, 1] (or [H, W]) mask; outside the image counts as set.

  Returns float32 {0, 1} of the input's shape. size <= 1 returns the mask unchanged.
  """
  m = jnp.asarray(mask, jnp.float32)
  if size <= 1:
    return m
  squeeze = m.ndim == 2
  x = m[..., None] if squeeze else m
  pad_lo = (size - 1) // 2
  pad_hi = size - 1 - pad_lo
  out = jax.lax.reduce_window(x, 1.0, jax.lax.min, (size, size, 1), (1, 1, 1),
                              ((pad_lo, pad_hi), (pad_lo, pad_hi), (0, 0)))
  return out[..., 0] if squeeze else out


def grid_points(depth: jnp.ndarray, fov_deg: float, resolution: int, border: int = 0
                 ) -> jnp.ndarray:
  """Source-camera points [H + 2b, W + 2b, 3] of a depth grid whose pixels start at -border."""
  f = cameras.focal_length(fov_deg)
  n = depth.shape[0]
  uv = (jnp.arange(n, dtype=jnp.float32) - border + 0.5) / resolution
  x = jnp.broadcast_to((uv[None, :] - 0.5) / f, depth.shape)
  y = jnp.broadcast_to((0.5 - uv[:, None]) / f, depth.shape)
  return jnp.stack([x, y, -jnp.ones_like(x)], -1) * depth[..., None]


def relative_transform(src_view: jnp.ndarray, dst_view: jnp.ndarray) -> jnp.ndarray:
  """src camera -> dst camera [4, 4]."""
  return jnp.asarray(dst_view, jnp.float32) @ cameras.invert_view(src_view)


def apply_transform(transform: jnp.ndarray, points: jnp.ndarray) -> jnp.ndarray:
  """Applies a [4, 4] rigid transform to points [..., 3]."""
  return points @ transform[:3, :3].T + transform[:3, 3]


def _covered(out: Dict[str, jnp.ndarray]) -> jnp.ndarray:
  """Sub-pixels [S, S] that show drawn, front-facing, uncut material."""
  return out['hit'] & out['front'] & ~out['flags'][..., 0]


def _resolve(out: Dict[str, jnp.ndarray], colour_channels: int, *, near: float, far: float,
             ssaa: int, atol: float, rtol: float, colour: Optional[jnp.ndarray] = None
             ) -> Warped:
  """docs/method.md §4 steps 4-5: coverage rule, colour, centre depth, depth_edge.

  colour [N, N, C] is given or else the mean payload of the covered sub-pixels.
  """
  covered = _covered(out)
  count = downsample(covered.astype(jnp.float32), ssaa)
  if colour is None:
    colour_sum = downsample(out['payload'][..., :colour_channels] * covered[..., None], ssaa)
    colour = colour_sum / jnp.maximum(count, 1.0)[..., None]
  zbuf = depth_lib.zbuf_from_depth(out['centre_depth'], near, far)
  mask = (count > 0.75 * ssaa * ssaa) & depth_edge(zbuf, atol=atol, rtol=rtol)
  mask = mask[..., None].astype(jnp.float32)
  rgbd = jnp.concatenate([colour, zbuf[..., None]], -1) * mask
  return Warped(rgbd=rgbd, mask=mask)


def _check(rgbd, ssaa, near, far):
  if rgbd.ndim != 3 or rgbd.shape[-1] != 4 or rgbd.shape[0] != rgbd.shape[1]:
    raise errors.UserError(
        f'rgbd has shape {rgbd.shape}; the warp takes ONE square image [N, N, 4] '
        '(use jax.vmap for batches)')
  if int(ssaa) != ssaa or ssaa < 1:
    raise errors.UserError(f'ssaa={ssaa}; use a positive integer (3 in the reference)')
  if not 0 < near < far:
    raise errors.UserError(f'near={near}, far={far}; need 0 < near < far')


def warp_rgbd(rgbd: jnp.ndarray, src_view: jnp.ndarray, dst_view: jnp.ndarray, *, near: float,
              far: float, fov_deg: float = 45.0, ssaa: int = 3, atol: float = 0.02,
              rtol: float = 0.02, cut: bool = True) -> Warped:
  """Warps one RGB-D image [N, N, 4] (RGB + z-buffer depth, all in [0, 1]) from src to dst view.

  Args:
    rgbd: [N, N, 4] float32; channel 3 is the z-buffer encoding with `near`/`far`. NaN/inf depth
      marks missing pixels (never visible).
    src_view, dst_view: [4, 4] world -> camera matrices.
    near, far: the depth encoding's planes (docs/method.md §3).
    fov_deg: field of view of both cameras.
    ssaa: supersampling factor of the splat (coverage rule > 0.75 ssaa^2).
    atol, rtol: discontinuity thresholds on linear depth (cuts) and on the output z-buffer
      (depth_edge).
    cut: whether discontinuous triangles are hidden (True for a single forward warp).

  Returns:
    Warped(rgbd [N, N, 4] in dst, zero outside the mask; mask [N, N, 1] in {0, 1}).
  """
  _check(rgbd, ssaa, near, far)
  n = rgbd.shape[0]
  zb = rgbd[..., 3]
  exists = jnp.isfinite(zb)
  depth = jnp.where(exists, depth_lib.depth_from_zbuf(jnp.where(exists, zb, 0.5), near, far), 1.0)
  src_pts = grid_points(depth, fov_deg, n)
  diag_a = shorter_diagonal(src_pts)
  flag = (cut_flags(depth, diag_a, atol=atol, rtol=rtol) if cut
          else jnp.zeros(depth.shape, bool))
  pts = apply_transform(relative_transform(src_view, dst_view), src_pts)
  colour = jnp.nan_to_num(rgbd[..., :3])
  out = raster.render_mesh(pts, colour, exists, [flag], resolution=n, fov_deg=fov_deg,
                           ssaa=ssaa, diag_a=diag_a)
  return _resolve(out, 3, near=near, far=far, ssaa=ssaa, atol=atol, rtol=rtol)


class MidView(NamedTuple):
  """The intermediate image of forward_backward_warp, in mid_view.

  colour [N, N, 3] (the source colour resampled at each pixel centre, clipped to [0, 1] as the
  reference's 8-bit conversion does), depth [N, N] (planar depth at the centre; +inf where
  nothing was drawn) and hidden [N, N] (the centre shows back-facing material: it occludes but
  is cut in the backward pass).
  """
  colour: jnp.ndarray
  depth: jnp.ndarray
  hidden: jnp.ndarray


def forward_mid_view(rgbd: jnp.ndarray, src_view: jnp.ndarray, mid_view: jnp.ndarray, *,
                     near: float, far: float, fov_deg: float = 45.0) -> MidView:
  """First pass of forward_backward_warp: src rendered into mid_view uncut, border extended."""
  _check(rgbd, FBW_MID_SSAA, near, far)
  n = rgbd.shape[0]
  b = FBW_BORDER
  zb = rgbd[..., 3]
  exists = jnp.isfinite(zb)
  depth = jnp.where(exists, depth_lib.depth_from_zbuf(jnp.where(exists, zb, 0.5), near, far), 1.0)
  edge_pad = lambda x: jnp.pad(x, ((b, b), (b, b)) + ((0, 0),) * (x.ndim - 2), mode='edge')
  src_pts = grid_points(edge_pad(depth), fov_deg, n, border=b)
  diag_a = shorter_diagonal(src_pts)
  to_mid = relative_transform(src_view, mid_view)
  # Colour is no payload of the render: the render reports where each pixel centre lands on the
  # source grid (centre_grid) and the colour is resampled there (resample.py; the reference's
  # nearest texel at 3x SSAA + Lanczos is sharper than linear interpolation, docs/method.md §4).
  fwd = raster.render_mesh(apply_transform(to_mid, src_pts),
                           jnp.zeros(src_pts.shape[:2] + (0,), jnp.float32), edge_pad(exists),
                           [jnp.zeros(src_pts.shape[:2], bool)], resolution=n, fov_deg=fov_deg,
                           ssaa=FBW_MID_SSAA, samples=FBW_MID_SAMPLES, diag_a=diag_a,
                           centre_first=True)
  # Clipped to [0, 1] like the reference's 8-bit conversion: the cubic overshoots at edges.
  colour = jnp.clip(resample.sample_cubic(edge_pad(jnp.nan_to_num(rgbd[..., :3])),
                                          fwd['centre_grid']), 0.0, 1.0)
  hidden = ~raster.centre_subpixel(fwd['hit'] & fwd['front'], FBW_MID_SSAA)
  return MidView(colour=colour, depth=fwd['centre_depth'], hidden=hidden)


def forward_backward_warp(rgbd: jnp.ndarray, src_view: jnp.ndarray, mid_view: jnp.ndarray, *,
                          near: float, far: float, fov_deg: float = 45.0, ssaa: int = 3,
                          atol: float = 0.02, rtol: float = 0.02) -> Warped:
  """Training-pair warp (docs/method.md §4): src -> mid uncut, border extended, back with cuts.

  The result lives in src_view: the part of the image that mid_view can see, with the
  resampling artifacts of two warps. Arguments as in warp_rgbd.
  """
  _check(rgbd, ssaa, near, far)
  n = rgbd.shape[0]
  mid = forward_mid_view(rgbd, src_view, mid_view, near=near, far=far, fov_deg=fov_deg)
  # One stored array, colour and depth, so that no consumer re-computes the centre reads.
  stored = raster.materialize(jnp.concatenate([mid.colour, mid.depth[..., None]], -1))
  mid_colour, mid_depth = stored[..., :3], stored[..., 3]
  mid_exists = jnp.isfinite(mid_depth)
  mid_depth = jnp.where(mid_exists, mid_depth, 1.0)

  mid_pts = grid_points(mid_depth, fov_deg, n)
  mid_diag = shorter_diagonal(mid_pts)
  flag = cut_flags(mid_depth, mid_diag, atol=atol, rtol=rtol) | mid.hidden
  back_pts = apply_transform(relative_transform(mid_view, src_view), mid_pts)
  count = (n - 1) ** 2 // FBW_REFINE_SHARE
  refine = (_stretched_quads(back_pts, mid_exists, mid_diag, count, size=ssaa * n,
                             fov_deg=fov_deg) if count else None)
  back = raster.render_mesh(back_pts, jnp.zeros((n, n, 0), jnp.float32), mid_exists, [flag],
                            resolution=n, fov_deg=fov_deg, ssaa=ssaa, diag_a=mid_diag,
                            nearest=True, refine=refine)
  # The mid colour resampled where each pixel centre lands on the mid grid. A kept pixel whose
  # centre sub-pixel is not covered (at ssaa 3 at most 2 of its 9 are not) takes the mean grid
  # position of the covered ones among the 4 sub-pixels beside the centre (then 3 or 4 are).
  covered = _covered(back)
  off = (ssaa - 1) // 2
  beside = [(off, 0), (off, ssaa - 1), (0, off), (ssaa - 1, off)]
  cov = [covered[r::ssaa, c::ssaa, None].astype(jnp.float32) for r, c in beside]
  grid_beside = (sum(back['grid'][r::ssaa, c::ssaa] * w for (r, c), w in zip(beside, cov))
                 / jnp.maximum(sum(cov), 1.0))
  grid = jnp.where(raster.centre_subpixel(covered, ssaa)[..., None], back['centre_grid'],
                   grid_beside)
  return _resolve(back, 3, near=near, far=far, ssaa=ssaa, atol=atol, rtol=rtol,
                  colour=jnp.clip(resample.sample_cubic(mid_colour, grid), 0.0, 1.0))
