"""The splat rasteriser of the warp (docs/method.md §4): a grid mesh into an SSAA z-buffer.

Each grid quad (two triangles, split along the diagonal the caller picks) is sampled at K x K
points, interpolated linearly on its triangle, projected and resolved per sub-pixel by a
scatter-min z-buffer; phases: _sample (+ subdivide.refined_rows), _centre_inside (centre_first),
_zbuffer, _resolve_payload, _centre_values. Vertices with NaN/inf depth produce no triangles.
Everything works on single examples; use jax.vmap for batches.
"""
import functools
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ivd_jax.geometry import cameras
from ivd_jax.geometry import subdivide

# The reference's OpenGL near planes: SimpleRenderer clips at 0.1; geometry closer to the target
# camera than this is discarded (docs/method.md §4 step 1).
CLIP_NEAR = 0.1
# render_mesh(refine=...) samples the quads it is given REFINE_SPLIT^2 times as densely.
REFINE_SPLIT = 2
# Relative depth within which splat samples count as the same surface of a sub-pixel.
DEPTH_TIE = 2.0**-10
_TIE_SHIFT = 23 - 10  # float32 has 23 mantissa bits; buckets keep the top 10
# Buckets start at depth 1e-4 (below any clip plane); (bucket << 8 | distance) fits in int32.
_BUCKET_OFFSET = int(np.array(1e-4, np.float32).view(np.int32)) >> _TIE_SHIFT
_NO_KEY = np.iinfo(np.int32).max
# Key bit of a sample whose triangle misses its sub-pixel's centre (render_mesh centre_first);
# (bucket << 8 | distance) stays below 2^28.
_OUTSIDE_BIT = 1 << 30


def materialize(x: jnp.ndarray) -> jnp.ndarray:
  """x (int32 or float32) bit for bit, computed once into memory.

  XLA CPU fuses cheap elementwise producers into every consumer: without this the sample
  projection and gathered payloads were re-computed in each scatter and gather loop reading them
  (over 40 % of the warp's time). An integer remainder, expensive to its fusion heuristics, is
  stored once; this one keeps every bit (bits mod 0xffffffff; only int -1 / one NaN would not).
  """
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jax.lax.bitcast_convert_type(jax.lax.rem(bits, jnp.uint32(0xFFFFFFFF)), x.dtype)


def _divmod(index: jnp.ndarray, divisor: int) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Quotient and remainder of non-negative int32 indices (no sign fix-ups as in // and %)."""
  return jax.lax.div(index, jnp.int32(divisor)), jax.lax.rem(index, jnp.int32(divisor))


def samples_per_quad(ssaa: int) -> int:
  """K of the K x K samples per grid quad: about 5/3 samples per sub-pixel along each axis.

  An unstretched quad covers ssaa x ssaa sub-pixels; at spacing 0.6 sub-pixel a surface may be
  stretched ~1.2x in any direction (1.6x along the grid) before a sub-pixel can miss all
  samples, and the 7/9 coverage rule absorbs single misses. K = 2 ssaa gave the same fixture
  scores (recall within 0.003) at 1.44x the cost.
  """
  return (5 * ssaa + 2) // 3


@functools.lru_cache(maxsize=None)
def _sample_pattern(k: int) -> Dict[str, np.ndarray]:
  """Static sample positions in the unit quad and their per-diagonal interpolation terms.

  A point of the quad with corners c00 (top-left), c01 (right), c10 (below), c11 is
  c00 + s (c01 - c00) + t (c10 - c00) + m (c11 - c01 - c10 + c00), where m is min(s, t) when the
  quad is split along c00-c11 (diagonal A) and max(s + t - 1, 0) when split along c01-c10
  (diagonal B). `tri_*` says which of the quad's two triangles holds the sample.
  """
  g = (np.arange(k, dtype=np.float32) + 0.5) / k
  t, s = np.meshgrid(g, g, indexing='ij')
  s, t = s.reshape(-1), t.reshape(-1)
  return dict(s=s, t=t, m_a=np.minimum(s, t), m_b=np.maximum(s + t - 1.0, 0.0),
              tri_a=(t > s).astype(np.int32), tri_b=(s + t > 1.0).astype(np.int32))


def quad_corners(x: jnp.ndarray) -> Tuple[jnp.ndarray, ...]:
  """The four corner views [Hv-1, Wv-1, ...] of a vertex grid [Hv, Wv, ...]."""
  return x[:-1, :-1], x[:-1, 1:], x[1:, :-1], x[1:, 1:]


def triangle_corners(corners, diag_a):
  """Vertices of the quad's two triangles, wound like (c00, c01, c11) of the source grid."""
  c00, c01, c10, c11 = corners
  pick = lambda a, b: jnp.where(diag_a[..., None], a, b) if a.ndim > diag_a.ndim else (
      jnp.where(diag_a, a, b))
  # Diagonal A: (c00, c01, c11) and (c00, c11, c10); diagonal B: (c00, c01, c10), (c01, c11, c10).
  tri0 = (c00, c01, pick(c11, c10))
  tri1 = (pick(c00, c01), c11, c10)
  return tri0, tri1


def triangle_all(grid: jnp.ndarray, diag_a: jnp.ndarray) -> jnp.ndarray:
  """[Hv-1, Wv-1, 2] whether all three vertices of each quad's two triangles are set in grid."""
  return jnp.stack([a & b & c for a, b, c in triangle_corners(quad_corners(grid), diag_a)], -1)


class _Splat(NamedTuple):
  """The projected samples, flat [R K^2]: R rows (quads, then sub-quads) of K^2 pattern points."""
  idx: jnp.ndarray  # int32 sub-pixel; S^2 (the dump slot) where not drawn
  z: jnp.ndarray  # planar depth; +inf where not drawn
  centre_dist: jnp.ndarray  # squared distance to the sub-pixel centre, in sub-pixels
  col_i: jnp.ndarray  # [R, K^2] sub-pixel column (float); likewise row_i
  row_i: jnp.ndarray
  tri_is_1: jnp.ndarray  # [R, K^2] the sample lies in its quad's triangle 1
  num_quads: int  # rows [0, num_quads): the quads; then REFINE_SPLIT^2 per quad id in refined
  refined: Optional[jnp.ndarray]  # None without refinement


def _sample(points, tri_exists, diag_a, pattern, refine, *, size, f, clip_near) -> _Splat:
  """Sampling phase: [R, K^2] samples on their triangles (exact: the mesh is piecewise linear).

  Rows: one per quad, then (with `refine`) one per refined sub-quad. Written channel by channel
  with per-row coefficients so that XLA CPU emits cheap vectorised loops (it re-materialises
  these expressions inside every scatter/gather that reads them).
  """
  c00, c01, c10, c11 = (c.reshape(-1, 3) for c in quad_corners(points))
  da, tri_ex = diag_a.reshape(-1, 1), tri_exists.reshape(-1, 2)
  num_quads = da.shape[0]
  k0, ka, kb, kc = c00, c01 - c00, c10 - c00, c11 - c01 - c10 + c00
  tri_is_1 = jnp.where(da, pattern['tri_a'].astype(bool), pattern['tri_b'].astype(bool))
  refined = None
  if refine is not None:
    refined, refined_ok = refine
    k0, ka, kb, kc, da, tri_ex, tri_is_1 = subdivide.refined_rows(
        (k0, ka, kb, kc, da, tri_ex, tri_is_1), refined, refined_ok, pattern, REFINE_SPLIT)
  m = jnp.where(da, pattern['m_a'], pattern['m_b'])
  s, t = pattern['s'], pattern['t']
  interp = lambda ch: (k0[:, ch:ch + 1] + s * ka[:, ch:ch + 1] + t * kb[:, ch:ch + 1]
                       + m * kc[:, ch:ch + 1])
  px, py, pz = (interp(ch) for ch in range(3))  # [R, K^2] each
  sample_exists = jnp.where(tri_is_1, tri_ex[:, 1:], tri_ex[:, :1])
  z = -pz
  inv_z = 1.0 / jnp.where(z > clip_near, z, 1.0)
  col = (0.5 + f * px * inv_z) * size
  row = (0.5 - f * py * inv_z) * size
  z, col, row = materialize(z), materialize(col), materialize(row)
  valid = (sample_exists & (z > clip_near) & (col >= 0) & (col < size) & (row >= 0)
           & (row < size))
  col_i, row_i = jnp.floor(col), jnp.floor(row)
  dump = size * size  # out-of-image samples go to one extra slot
  idx = materialize(jnp.where(valid, row_i.astype(jnp.int32) * size + col_i.astype(jnp.int32),
                              dump).reshape(-1))
  return _Splat(idx=idx, z=jnp.where(valid, z, jnp.inf).reshape(-1),
                centre_dist=((col - col_i - 0.5) ** 2 + (row - row_i - 0.5) ** 2).reshape(-1),
                col_i=col_i, row_i=row_i, tri_is_1=tri_is_1, num_quads=num_quads,
                refined=refined)


def _centre_inside(tri0, tri1, splat: _Splat, *, size, f) -> jnp.ndarray:
  """Centre phase (centre_first): [R K^2] the sample's triangle covers its sub-pixel's centre."""
  # The centre ray is inside when the triangle's 3 edge planes through the camera agree on it.
  ray_x = ((splat.col_i + 0.5) / size - 0.5) / f
  ray_y = (0.5 - (splat.row_i + 0.5) / size) / f
  rows = lambda x: x if splat.refined is None else jnp.concatenate(
      [x, jnp.repeat(x[splat.refined], REFINE_SPLIT * REFINE_SPLIT, axis=0)])
  edges = lambda tri: ((tri[0], tri[1]), (tri[1], tri[2]), (tri[2], tri[0]))
  side = []
  for (a0, b0), (a1, b1) in zip(edges(tri0), edges(tri1)):
    e0 = rows(jnp.cross(a0, b0).reshape(-1, 3))
    e1 = rows(jnp.cross(a1, b1).reshape(-1, 3))
    e = [jnp.where(splat.tri_is_1, e1[:, ch:ch + 1], e0[:, ch:ch + 1]) for ch in range(3)]
    side.append(e[0] * ray_x + e[1] * ray_y - e[2])
  return (((side[0] >= 0) & (side[1] >= 0) & (side[2] >= 0))
          | ((side[0] <= 0) & (side[1] <= 0) & (side[2] <= 0))).reshape(-1)


def _zbuffer(splat: _Splat, inside: Optional[jnp.ndarray], dump: int
             ) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Z-buffer phase: one scatter-min of integer keys resolves visibility.

  A key orders samples by depth bucket (the float's exponent and top 10 mantissa bits: relative
  width DEPTH_TIE, so one surface's samples tie; a log quantisation without a log), then (with
  `inside`) centre cover, then distance to the sub-pixel centre. The winner, the centre-most
  sample of the nearest surface, carries the payload at the centre as OpenGL samples it, and
  does not depend on float rounding of coplanar samples (sharded == unsharded). Returns per
  sub-pixel [dump] the bucket's centre depth (+inf: none) and the lowest winning sample id.
  """
  drawn = jnp.isfinite(splat.z)
  bits = jax.lax.bitcast_convert_type(jnp.where(drawn, splat.z, 1.0), jnp.int32)
  bucket = (bits >> _TIE_SHIFT) - _BUCKET_OFFSET
  key = bucket * 256 + jnp.minimum(splat.centre_dist * 512, 255).astype(jnp.int32)
  if inside is not None:
    key = jnp.where(inside, key, key | _OUTSIDE_BIT)
  key = jnp.where(drawn, key, _NO_KEY)
  idx = splat.idx
  kbuf = jnp.full((dump + 1,), _NO_KEY, jnp.int32).at[idx].min(
      key, mode='promise_in_bounds').at[dump].set(-1)
  num = key.shape[0]
  winner = key == kbuf.at[idx].get(mode='promise_in_bounds')
  candidate = jnp.where(winner, jnp.arange(num, dtype=jnp.int32), num)
  win_id = jnp.full((dump + 1,), num, jnp.int32).at[idx].min(
      candidate, mode='promise_in_bounds')[:dump]
  kbuf = kbuf[:dump]
  bucket = (kbuf & ~_OUTSIDE_BIT) >> 8
  zbuf = jnp.where(kbuf < _NO_KEY, jax.lax.bitcast_convert_type(
      ((bucket + _BUCKET_OFFSET) << _TIE_SHIFT) | (1 << (_TIE_SHIFT - 1)), jnp.float32), jnp.inf)
  return zbuf, win_id


def _resolve_payload(splat: _Splat, win_id, pattern, pay, diag_a, *, wv, nearest):
  """Payload phase: hit, quad, triangle, grid position [S^2, 2] and payload [S^2, C] of winners."""
  num = splat.z.shape[0]
  hit = win_id < num
  win_id = jnp.where(hit, win_id, 0)
  quad, ks = _divmod(win_id, splat.tri_is_1.shape[1])
  win_tri = jnp.asarray(splat.tri_is_1.astype(jnp.int32)).reshape(-1)[win_id]
  ws, wt = jnp.asarray(pattern['s'])[ks], jnp.asarray(pattern['t'])[ks]
  if splat.refined is not None:
    # Sub-quad coordinates of refined rows back to their quad's.
    h = 1.0 / REFINE_SPLIT
    sub_row, sub = _divmod(jnp.maximum(quad - splat.num_quads, 0), REFINE_SPLIT * REFINE_SPLIT)
    sub_t, sub_s = _divmod(sub, REFINE_SPLIT)
    is_sub = quad >= splat.num_quads
    ws = jnp.where(is_sub, (sub_s + ws) * h, ws)
    wt = jnp.where(is_sub, (sub_t + wt) * h, wt)
    quad = jnp.where(is_sub, splat.refined[sub_row], quad)
  qr, qc = _divmod(quad, wv - 1)
  grid = jnp.stack([qr.astype(jnp.float32) + wt, qc.astype(jnp.float32) + ws], -1)
  v00 = materialize(qr * wv + qc)
  if nearest:
    # Nearest texel of the interpolated texture coordinate, which on a pixel-grid mesh is the
    # quad corner nearest to (s, t) whichever triangle holds the sample (GL_NEAREST lookup).
    win_payload = pay[materialize(v00 + (ws > 0.5) + (wt > 0.5) * wv)]
  else:
    p00, p01, p10, p11 = pay[v00], pay[v00 + 1], pay[v00 + wv], pay[v00 + wv + 1]
    wm = jnp.where(diag_a.reshape(-1)[quad], jnp.minimum(ws, wt),
                   jnp.maximum(ws + wt - 1.0, 0.0))[:, None]
    ws, wt = ws[:, None], wt[:, None]
    win_payload = p00 + ws * (p01 - p00) + wt * (p10 - p00) + wm * (p11 - p01 - p10 + p00)
  return hit, quad, win_tri, grid, jnp.where(hit[:, None], win_payload, 0.0)


def _centre_values(points, pay, diag_a, c_quad, c_tri, c_hit, c_win_payload, c_win_grid, *,
                   resolution, f, nearest) -> Tuple[jnp.ndarray, ...]:
  """Centre phase: each pixel's centre ray against its centre sub-pixel's winning triangle.

  c_quad, c_tri, c_hit, c_win_payload and c_win_grid describe the centre sub-pixels' winners
  [N^2, ...]. Returns the planar depth [N^2], payload [N^2, C] (the winner's with `nearest`) and
  grid position [N^2, 2] where the ray meets the triangle's plane, and ok [N^2]: where that is
  well defined (the depth is not else; payload and grid are then the winner's).
  """
  hv, wv = points.shape[:2]
  c_diag = diag_a.reshape(-1)[c_quad]
  c_qr, c_qc = _divmod(c_quad, wv - 1)
  c00i = c_qr * wv + c_qc
  i00, i01, i10, i11 = c00i, c00i + 1, c00i + wv, c00i + wv + 1
  ia = jnp.where(c_tri == 0, i00, jnp.where(c_diag, i00, i01))
  ib = jnp.where(c_tri == 0, i01, i11)
  ic = jnp.where(c_tri == 0, jnp.where(c_diag, i11, i10), i10)
  pts = points.reshape(hv * wv, 3)
  a, b, c = pts[ia], pts[ib], pts[ic]
  uv = (jnp.arange(resolution, dtype=jnp.float32) + 0.5) / resolution
  ray = jnp.stack(jnp.broadcast_arrays((uv[None, :] - 0.5) / f, (0.5 - uv[:, None]) / f,
                                       -jnp.ones((1, 1), jnp.float32)), -1).reshape(-1, 3)
  normal = jnp.cross(b - a, c - a)
  nn = jnp.sum(normal * normal, -1)
  n_dot_r = jnp.sum(normal * ray, -1)
  ok = c_hit & (n_dot_r * n_dot_r > 1e-6 * nn * jnp.sum(ray * ray, -1)) & (nn > 1e-20)
  lam = jnp.sum(normal * a, -1) / jnp.where(ok, n_dot_r, 1.0)
  x = lam[:, None] * ray
  safe_nn = jnp.where(ok, nn, 1.0)[:, None]
  wa = jnp.sum(jnp.cross(b - x, c - x) * normal, -1, keepdims=True) / safe_nn
  wb = jnp.sum(jnp.cross(c - x, a - x) * normal, -1, keepdims=True) / safe_nn
  w = jnp.maximum(jnp.concatenate([wa, wb, 1.0 - wa - wb], -1), 0.0)
  w = w / jnp.maximum(jnp.sum(w, -1, keepdims=True), 1e-12)
  c_depth = -(w[:, 0] * a[:, 2] + w[:, 1] * b[:, 2] + w[:, 2] * c[:, 2])
  vertex_grid = [jnp.stack(_divmod(i, wv), -1).astype(jnp.float32) for i in (ia, ib, ic)]
  c_grid = w[:, :1] * vertex_grid[0] + w[:, 1:2] * vertex_grid[1] + w[:, 2:] * vertex_grid[2]
  c_grid = jnp.where(ok[:, None], c_grid, c_win_grid)
  if nearest:
    return c_depth, c_win_payload, c_grid, ok
  c_payload = w[:, :1] * pay[ia] + w[:, 1:2] * pay[ib] + w[:, 2:] * pay[ic]
  return c_depth, jnp.where(ok[:, None], c_payload, c_win_payload), c_grid, ok


def render_mesh(points: jnp.ndarray, payload: jnp.ndarray, exists: jnp.ndarray,
                flags: Sequence[jnp.ndarray], *, resolution: int, fov_deg: float, ssaa: int,
                diag_a: jnp.ndarray, clip_near: float = CLIP_NEAR, nearest: bool = False,
                samples: int = 0, centre_first: bool = False,
                refine: Optional[Tuple[jnp.ndarray, jnp.ndarray]] = None
                ) -> Dict[str, jnp.ndarray]:
  """Splats a grid mesh given in TARGET camera coordinates into an SSAA z-buffer.

  Args:
    points: [Hv, Wv, 3] vertex positions in the target camera's frame (OpenGL).
    payload: [Hv, Wv, C] per-vertex values interpolated on the triangles (colour, normals...).
    exists: [Hv, Wv] bool; triangles with a missing vertex are not drawn at all.
    flags: per-vertex bool grids; for each, a triangle carries the flag when all three of its
      vertices carry it (the reference's interpolated-flag test).
    resolution: output resolution N; the z-buffer has (ssaa N)^2 sub-pixels.
    fov_deg: field of view of the target camera.
    ssaa: supersampling factor.
    diag_a: [Hv-1, Wv-1] True where a quad is split along c00-c11 (warp.shorter_diagonal).
    clip_near: samples closer than this planar depth are discarded.
    nearest: payload of the nearest grid vertex (the reference's GL_NEAREST texture lookup)
      instead of linear interpolation on the triangle.
    samples: K of the K x K samples per quad; 0 = samples_per_quad(ssaa).
    centre_first: a sample whose triangle covers its sub-pixel's centre beats any that does
      not, so a sub-pixel shows the nearest surface AT its centre (as OpenGL samples it) rather
      than the nearest anywhere in it (which biases depth toward the foreground at edges).
    refine: (ids [M] int32, real [M] bool) of quads (flat in [Hv-1, Wv-1]) that get
      REFINE_SPLIT^2 x K x K samples more, one K x K set per sub-quad; ids not real draw nothing.

  Returns:
    dict of per-sub-pixel [S, S] arrays (S = ssaa N): depth (planar; +inf where nothing was
    drawn), hit (any sample), front (the winner's triangle faces the camera), flags [S, S, F],
    payload [S, S, C] and grid [S, S, 2] (its position on the vertex grid: row, column; where
    hit) of the winning sample; and at the pixel centres centre_depth [N, N], centre_payload
    [N, N, C] and centre_grid [N, N, 2] (where the centre ray meets the winning triangle; for a
    resampling of per-vertex data that the payload's interpolation cannot express).
  """
  hv, wv = exists.shape
  pattern = _sample_pattern(samples or samples_per_quad(ssaa))
  size = ssaa * resolution
  f = cameras.focal_length(fov_deg)
  points = jnp.where(exists[..., None], points, 0.0)  # no NaN enters the interpolation
  tri0, tri1 = triangle_corners(quad_corners(points), diag_a)
  tri_exists = triangle_all(exists, diag_a)
  # Front-facing in the target: the winding that the source grid has (see triangle_corners)
  # gives dot(cross(b - a, c - a), -a) < 0 for a camera at the origin.
  front = jnp.stack([
      jnp.sum(jnp.cross(b - a, c - a) * a, axis=-1) > 0 for a, b, c in (tri0, tri1)], -1)
  splat = _sample(points, tri_exists, diag_a, pattern, refine, size=size, f=f,
                  clip_near=clip_near)
  inside = _centre_inside(tri0, tri1, splat, size=size, f=f) if centre_first else None
  zbuf, win_id = _zbuffer(splat, inside, size * size)
  pay = payload.reshape((hv * wv,) + payload.shape[2:])
  hit, quad, win_tri, grid, win_payload = _resolve_payload(splat, win_id, pattern, pay, diag_a,
                                                           wv=wv, nearest=nearest)
  win_slot = materialize(quad * 2 + win_tri)
  pick = lambda per_tri: per_tri.reshape(-1)[win_slot] & hit
  out_flags = (jnp.stack([pick(triangle_all(fl, diag_a)) for fl in flags], -1) if flags
               else jnp.zeros((size * size, 0), bool))
  shape = (size, size)
  out = dict(depth=zbuf.reshape(shape), hit=hit.reshape(shape), front=pick(front).reshape(shape),
             flags=out_flags.reshape(shape + out_flags.shape[1:]),
             payload=win_payload.reshape(shape + pay.shape[1:]),
             grid=grid.reshape(shape + (2,)))
  # Exact values at the pixel centres (the centre sub-pixel's centre, as OpenGL samples it):
  # intersect the centre ray with the winning triangle's plane and interpolate there, so the
  # output depth and the intermediate image of forward_backward_warp carry no sub-pixel bias.
  centre = lambda x: centre_subpixel(x.reshape(shape + x.shape[1:]), ssaa).reshape(
      (resolution * resolution,) + x.shape[1:])
  c_depth, c_payload, c_grid, ok = _centre_values(
      points, pay, diag_a, centre(quad), centre(win_tri), centre(hit), centre(win_payload),
      centre(grid), resolution=resolution, f=f, nearest=nearest)
  out['centre_depth'] = jnp.where(ok, c_depth, centre(zbuf)).reshape(resolution, resolution)
  out['centre_payload'] = c_payload.reshape((resolution, resolution) + pay.shape[1:])
  out['centre_grid'] = c_grid.reshape(resolution, resolution, 2)
  return out


def centre_subpixel(x: jnp.ndarray, ssaa: int) -> jnp.ndarray:
  """The centre sub-sample of each ssaa x ssaa block (the reference's [1::3, 1::3])."""
  off = (ssaa - 1) // 2
  return x[off::ssaa, off::ssaa]
