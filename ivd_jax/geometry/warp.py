"""The warp operator of METHOD 4 as a jittable scatter-based splat.

The reference renders an RGB-D image as a triangle mesh on its pixel grid with OpenGL at 3x
supersampling (SSAA). Here the same mesh is rasterised by point sampling: every grid quad (two
triangles, split along the shorter 3D diagonal as the reference does) is sampled at K x K points
(K = 5 for ssaa = 3: an unstretched quad puts ~3 samples into each target sub-pixel, and a
surface stretched ~1.2x still leaves no pinholes; see samples_per_quad). Samples are interpolated
linearly on their triangle, projected, and resolved per sub-pixel with a z-buffer (scatter-min
of planar depth); among the samples of the nearest surface the one nearest to the sub-pixel
centre wins and brings its colour and flags. Then METHOD 4:

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
backward pass samples strongly stretched quads more densely (render_mesh refine), where K x K
samples thin out to more than a sub-pixel apart.

Vertices with NaN/inf depth produce no triangles at all, so they can never be visible, and every
output is finite. Everything works on single examples; use jax.vmap for batches.
"""
import functools
from typing import Dict, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ivd_jax import errors
from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib

# The reference's OpenGL near planes: SimpleRenderer clips at 0.1; geometry closer to the target
# camera than this is discarded (METHOD 4 step 1).
CLIP_NEAR = 0.1
# The first warp of a forward-backward warp extends the source image by this many pixels of
# replicated border depth and colour. The reference pads by `resolution` pixels, but only the
# innermost pixels of that strip can land inside the source image again after the backward warp;
# three pixels keep the backward mesh closed over the source border for any pi_1 of METHOD 5.
FBW_BORDER = 3
# The intermediate image of forward_backward_warp is read only at pixel centres (depth and
# colour of the centre sample, as the reference reads depth[1::3, 1::3]), so its z-buffer needs
# no supersampling: one cell per pixel with 3 x 3 samples per quad (spacing 1/3 pixel).
FBW_MID_SSAA = 1
FBW_MID_SAMPLES = 3
# The backward warp of forward_backward_warp samples quads stretched beyond STRETCHED_SUBPIXELS
# (longest projected edge in sub-pixels; an unstretched quad spans ssaa) REFINE_SPLIT^2 times as
# densely. There 5 x 5 samples thin out to over a sub-pixel apart, so coverage and the winning
# triangles at surface edges drift from OpenGL's exact rasterisation (measured on the fixtures:
# fbw recall -0.003; 7 x 7 samples on every quad recover the same but cost 37 % more CPU).
# At most one quad in FBW_REFINE_SHARE is refined (the first in raster order; a fixed size, so
# it stays jittable); the fixture views stretch 2-7 % of the quads that much.
STRETCHED_SUBPIXELS = 5.0
REFINE_SPLIT = 2
FBW_REFINE_SHARE = 48
# Relative depth within which splat samples count as the same surface of a sub-pixel.
DEPTH_TIE = 2.0**-10
_TIE_SHIFT = 23 - 10  # float32 has 23 mantissa bits; buckets keep the top 10
# Buckets start at depth 1e-4 (below any clip plane); (bucket << 8 | distance) fits in int32.
_BUCKET_OFFSET = int(np.array(1e-4, np.float32).view(np.int32)) >> _TIE_SHIFT
_NO_KEY = np.iinfo(np.int32).max
# Key bit of a sample whose triangle misses its sub-pixel's centre (render_mesh centre_first);
# (bucket << 8 | distance) stays below 2^28.
_OUTSIDE_BIT = 1 << 30


def _materialize(x: jnp.ndarray) -> jnp.ndarray:
  """x (int32 or float32) bit for bit, computed once into memory.

  XLA CPU fuses cheap elementwise producers into every consumer, so without this the sample
  projection and the gathered payloads were re-computed inside each scatter and gather loop that
  reads them (over 40 % of the warp's time). An integer remainder counts as expensive to its
  fusion heuristics, so its result is stored once; here it is one that changes nothing: the bits
  modulo 0xffffffff (only the bit pattern 0xffffffff, int -1 or one NaN, would become 0, and
  no caller holds it).
  """
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jax.lax.bitcast_convert_type(jax.lax.rem(bits, jnp.uint32(0xFFFFFFFF)), x.dtype)


def _divmod(index: jnp.ndarray, divisor: int) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Quotient and remainder of non-negative int32 indices (no sign fix-ups as in // and %)."""
  d = jnp.int32(divisor)
  return jax.lax.div(index, d), jax.lax.rem(index, d)


class Warped(NamedTuple):
  """A warped RGB-D image: rgbd [H, W, 4] (zero outside the mask) and mask [H, W, 1] in {0, 1}."""
  rgbd: jnp.ndarray
  mask: jnp.ndarray


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


def _quad_corners(x: jnp.ndarray) -> Tuple[jnp.ndarray, ...]:
  """The four corner views [Hv-1, Wv-1, ...] of a vertex grid [Hv, Wv, ...]."""
  return x[:-1, :-1], x[:-1, 1:], x[1:, :-1], x[1:, 1:]


def _triangle_corners(corners, diag_a):
  """Vertices of the quad's two triangles, wound like (c00, c01, c11) of the source grid."""
  c00, c01, c10, c11 = corners
  pick = lambda a, b: jnp.where(diag_a[..., None], a, b) if a.ndim > diag_a.ndim else (
      jnp.where(diag_a, a, b))
  # Diagonal A: (c00, c01, c11) and (c00, c11, c10); diagonal B: (c00, c01, c10), (c01, c11, c10).
  tri0 = (c00, c01, pick(c11, c10))
  tri1 = (pick(c00, c01), c11, c10)
  return tri0, tri1


def cut_flags(depth: jnp.ndarray, diag_a: jnp.ndarray, *, atol: float, rtol: float
              ) -> jnp.ndarray:
  """Vertex flags [Hv, Wv] of the reference's mask_discontinuity: vertices of cut triangles.

  A triangle is cut where BOTH max-min depth > atol and max-min inverse depth > rtol.
  """
  inv = 1.0 / jnp.maximum(depth, 1e-12)
  per_tri = []
  for tri_d, tri_i in zip(_triangle_corners(_quad_corners(depth), diag_a),
                          _triangle_corners(_quad_corners(inv), diag_a)):
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
  c00, c01, c10, c11 = _quad_corners(points)
  return (jnp.linalg.norm(c00 - c11, axis=-1) < jnp.linalg.norm(c01 - c10, axis=-1))


@functools.lru_cache(maxsize=None)
def _sub_quad_terms(split: int) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """Sub-quads of a split quad as quads of their own: per sub-quad, (diagonal A, diagonal B).

  Sub-quad (i, j) covers s = s0 + s' / split, t = t0 + t' / split with s0 = j / split,
  t0 = i / split. On it the quad's diagonal term m is m0 + (ms s' + mt t' + mc m') / split, with
  m' the sub-quad's own diagonal term: a sub-quad on the split diagonal (mc = 1) is split like
  its quad, any other lies in one triangle `tri` and is affine (mc = 0).
  """
  i, j = (x.reshape(-1).astype(np.float32) for x in np.meshgrid(
      np.arange(split), np.arange(split), indexing='ij'))
  s0, t0 = j / split, i / split
  zero, one = np.zeros_like(s0), np.ones_like(s0)
  # Diagonal A, m = min(s, t): on the diagonal s0 + min(s', t') / split; above it (j > i) t,
  # below it s. Diagonal B, m = max(s + t - 1, 0): on the anti-diagonal max(s' + t' - 1, 0) /
  # split; before it 0; after it s + t - 1.
  on_a, on_b = i == j, i + j == split - 1
  after_b = i + j > split - 1
  terms = dict(
      m0=(np.where(on_a, s0, np.where(j > i, t0, s0)), np.where(after_b, s0 + t0 - 1.0, zero)),
      ms=(np.where(i > j, one, zero), np.where(after_b, one, zero)),
      mt=(np.where(j > i, one, zero), np.where(after_b, one, zero)),
      mc=(np.where(on_a, one, zero), np.where(on_b, one, zero)),
      tri=(np.where(i > j, one, zero), np.where(after_b, one, zero)))
  terms['s0'] = (s0, s0)
  terms['t0'] = (t0, t0)
  return {k: (a.astype(np.float32), b.astype(np.float32)) for k, (a, b) in terms.items()}


def _stretched_quads(points: jnp.ndarray, quad_exists: jnp.ndarray, count: int, *, size: int,
                     f: float, clip_near: float) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Flat ids [count] of the first quads (raster order) stretched beyond STRETCHED_SUBPIXELS.

  Only quads in front of the clip plane whose projected bounding box meets the image count.
  Returns the ids and whether each is a real one (fewer may qualify).
  """
  z = -points[..., 2]
  ok = z > clip_near
  inv_z = 1.0 / jnp.where(ok, z, 1.0)
  col = (0.5 + f * points[..., 0] * inv_z) * size
  row = (0.5 - f * points[..., 1] * inv_z) * size
  foot = jnp.zeros(quad_exists.shape, jnp.float32)
  for v in (col, row):
    c00, c01, c10, c11 = _quad_corners(v)
    for a, b in ((c00, c01), (c10, c11), (c00, c10), (c01, c11)):
      foot = jnp.maximum(foot, jnp.abs(a - b))
  q_ok = functools.reduce(jnp.logical_and, _quad_corners(ok)) & quad_exists
  cols, rws = _quad_corners(col), _quad_corners(row)
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


def render_mesh(points: jnp.ndarray, payload: jnp.ndarray, exists: jnp.ndarray,
                flags: Sequence[jnp.ndarray], *, resolution: int, fov_deg: float, ssaa: int,
                diag_a: jnp.ndarray, clip_near: float = CLIP_NEAR, nearest: bool = False,
                samples: int = 0, centre_first: bool = False,
                refine: int = 0) -> Dict[str, jnp.ndarray]:
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
    diag_a: [Hv-1, Wv-1] quad split (see shorter_diagonal).
    clip_near: samples closer than this planar depth are discarded.
    nearest: payload of the nearest grid vertex (the reference's GL_NEAREST texture lookup)
      instead of linear interpolation on the triangle.
    samples: K of the K x K samples per quad; 0 = samples_per_quad(ssaa).
    centre_first: a sample whose triangle covers its sub-pixel's centre beats any that does
      not, so a sub-pixel shows the nearest surface AT its centre (as OpenGL samples it) rather
      than the nearest anywhere in it (which biases depth toward the foreground at edges).
    refine: at most this many quads stretched beyond STRETCHED_SUBPIXELS (the first in raster
      order) get REFINE_SPLIT^2 x K x K samples more, one K x K set per sub-quad.

  Returns:
    dict of per-sub-pixel [S, S] arrays (S = ssaa N): depth (planar; +inf where nothing was
    drawn), hit (any sample), front (the winner's triangle faces the camera), flags [S, S, F]
    and payload [S, S, C] of the winning sample.
  """
  hv, wv = exists.shape
  k = samples or samples_per_quad(ssaa)
  pattern = _sample_pattern(k)
  kk = k * k
  size = ssaa * resolution
  f = cameras.focal_length(fov_deg)
  points = jnp.where(exists[..., None], points, 0.0)  # no NaN enters the interpolation

  corners = _quad_corners(points)
  tri0, tri1 = _triangle_corners(corners, diag_a)
  ex0, ex1 = _triangle_corners(_quad_corners(exists), diag_a)
  tri_exists = jnp.stack([ex0[0] & ex0[1] & ex0[2], ex1[0] & ex1[1] & ex1[2]], -1)
  # Front-facing in the target: the winding that the source grid has (see _triangle_corners)
  # gives dot(cross(b - a, c - a), -a) < 0 for a camera at the origin.
  front = jnp.stack([
      jnp.sum(jnp.cross(b - a, c - a) * a, axis=-1) > 0 for a, b, c in (tri0, tri1)], -1)
  tri_flags = []
  for flag in flags:
    f0, f1 = _triangle_corners(_quad_corners(flag), diag_a)
    tri_flags.append(jnp.stack([f0[0] & f0[1] & f0[2], f1[0] & f1[1] & f1[2]], -1))

  # Samples: [R, K^2] positions on their triangles (exact: the mesh is piecewise linear), one row
  # per quad plus, with `refine`, REFINE_SPLIT^2 rows per refined quad, one per sub-quad, each
  # written as a quad of its own (see _sub_quad_terms): every row samples the same static
  # pattern, which keeps the sample loops as cheap as without refinement.
  # Written channel by channel with per-row coefficients so that XLA CPU emits cheap vectorised
  # loops (it re-materialises these expressions inside every scatter/gather that reads them).
  c00, c01, c10, c11 = (c.reshape(-1, 3) for c in corners)
  da = diag_a.reshape(-1, 1)
  tri_ex = tri_exists.reshape(-1, 2)
  num_quads = da.shape[0]
  k0, ka, kb, kc = c00, c01 - c00, c10 - c00, c11 - c01 - c10 + c00
  tri_pattern = jnp.where(da, pattern['tri_a'].astype(bool), pattern['tri_b'].astype(bool))
  tri_is_1 = tri_pattern
  rows = lambda x: x
  if refine:
    refined, refined_ok = _stretched_quads(points, tri_exists.any(-1), refine, size=size, f=f,
                                           clip_near=clip_near)
    nsub = REFINE_SPLIT * REFINE_SPLIT
    rows = lambda x: jnp.concatenate([x, jnp.repeat(x[refined], nsub, axis=0)])
    r_da = jnp.repeat(da[refined], nsub, axis=0)
    terms = {key: jnp.where(r_da, np.tile(v[0], refine)[:, None], np.tile(v[1], refine)[:, None])
             for key, v in _sub_quad_terms(REFINE_SPLIT).items()}
    r0, ra, rb, rc = (jnp.repeat(x[refined], nsub, axis=0) for x in (k0, ka, kb, kc))
    h = 1.0 / REFINE_SPLIT
    k0 = jnp.concatenate([k0, r0 + terms['s0'] * ra + terms['t0'] * rb + terms['m0'] * rc])
    ka = jnp.concatenate([ka, h * (ra + terms['ms'] * rc)])
    kb = jnp.concatenate([kb, h * (rb + terms['mt'] * rc)])
    kc = jnp.concatenate([kc, h * terms['mc'] * rc])
    da = jnp.concatenate([da, r_da])
    tri_ex = jnp.concatenate([tri_ex, jnp.repeat(tri_ex[refined] & refined_ok[:, None], nsub,
                                                 axis=0)])
    # Sub-quads off the split diagonal lie in one triangle.
    tri_is_1 = jnp.concatenate([tri_pattern, jnp.where(
        terms['mc'] > 0, jnp.where(r_da, pattern['tri_a'].astype(bool),
                                   pattern['tri_b'].astype(bool)), terms['tri'] > 0)])
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
  z, col, row = _materialize(z), _materialize(col), _materialize(row)
  valid = (sample_exists & (z > clip_near) & (col >= 0) & (col < size) & (row >= 0)
           & (row < size))
  col_i = jnp.floor(col)
  row_i = jnp.floor(row)
  dump = size * size  # out-of-image samples go to one extra slot
  idx = _materialize(jnp.where(valid, row_i.astype(jnp.int32) * size + col_i.astype(jnp.int32),
                               dump).reshape(-1))
  z = jnp.where(valid, z, jnp.inf).reshape(-1)
  centre_dist = ((col - col_i - 0.5) ** 2 + (row - row_i - 0.5) ** 2).reshape(-1)

  # One scatter-min resolves visibility: the integer key orders samples by their depth bucket
  # (relative width ~DEPTH_TIE, so the samples of one surface tie) and then by the distance to
  # the sub-pixel centre, so the winner is the centre-most sample of the nearest surface: it carries
  # the colour at the centre, as OpenGL samples it, and the choice does not depend on float
  # rounding of coplanar samples (sharded == unsharded).
  drawn = jnp.isfinite(z)
  if centre_first:
    # The centre ray of the sample's sub-pixel is inside its triangle when the three edge
    # planes through the camera centre see it on the same side.
    ray_x = ((col_i + 0.5) / size - 0.5) / f
    ray_y = (0.5 - (row_i + 0.5) / size) / f
    side = []
    for (a0, b0), (a1, b1) in zip(((tri0[0], tri0[1]), (tri0[1], tri0[2]), (tri0[2], tri0[0])),
                                  ((tri1[0], tri1[1]), (tri1[1], tri1[2]), (tri1[2], tri1[0]))):
      e0 = rows(jnp.cross(a0, b0).reshape(-1, 3))
      e1 = rows(jnp.cross(a1, b1).reshape(-1, 3))
      e = [jnp.where(tri_is_1, e1[:, ch:ch + 1], e0[:, ch:ch + 1]) for ch in range(3)]
      side.append(e[0] * ray_x + e[1] * ray_y - e[2])
    inside = (((side[0] >= 0) & (side[1] >= 0) & (side[2] >= 0))
              | ((side[0] <= 0) & (side[1] <= 0) & (side[2] <= 0))).reshape(-1)
  # Depth bucket = the float's exponent and top 10 mantissa bits (relative width 2^-10): a
  # logarithmic quantisation without a log per sample.
  bits = jax.lax.bitcast_convert_type(jnp.where(drawn, z, 1.0), jnp.int32)
  bucket = (bits >> _TIE_SHIFT) - _BUCKET_OFFSET
  key = bucket * 256 + jnp.minimum(centre_dist * 512, 255).astype(jnp.int32)
  if centre_first:
    key = jnp.where(inside, key, key | _OUTSIDE_BIT)
  key = jnp.where(drawn, key, _NO_KEY)
  kbuf = jnp.full((dump + 1,), _NO_KEY, jnp.int32).at[idx].min(
      key, mode='promise_in_bounds').at[dump].set(-1)
  num = z.shape[0]
  winner = key == kbuf.at[idx].get(mode='promise_in_bounds')
  candidate = jnp.where(winner, jnp.arange(num, dtype=jnp.int32), num)
  win_id = jnp.full((dump + 1,), num, jnp.int32).at[idx].min(
      candidate, mode='promise_in_bounds')[:dump]
  kbuf = kbuf[:dump]
  # Planar depth of each sub-pixel's surface from its bucket (centre of the bucket).
  bucket = (kbuf & ~_OUTSIDE_BIT) >> 8
  zbuf = jnp.where(kbuf < _NO_KEY, jax.lax.bitcast_convert_type(
      ((bucket + _BUCKET_OFFSET) << _TIE_SHIFT) | (1 << (_TIE_SHIFT - 1)), jnp.float32), jnp.inf)
  tri = tri_is_1.astype(jnp.int32)

  hit = win_id < num
  win_id = jnp.where(hit, win_id, 0)
  quad, ks = _divmod(win_id, kk)
  win_tri = jnp.asarray(tri).reshape(-1)[win_id]
  ws = jnp.asarray(pattern['s'])[ks]
  wt = jnp.asarray(pattern['t'])[ks]
  if refine:
    # Sub-quad coordinates of refined rows back to their quad's.
    sub_row, sub = _divmod(jnp.maximum(quad - num_quads, 0), nsub)
    sub_t, sub_s = _divmod(sub, REFINE_SPLIT)
    is_sub = quad >= num_quads
    ws = jnp.where(is_sub, (sub_s + ws) * h, ws)
    wt = jnp.where(is_sub, (sub_t + wt) * h, wt)
    quad = jnp.where(is_sub, refined[sub_row], quad)
  qr, qc = _divmod(quad, wv - 1)
  pay = payload.reshape(hv * wv, -1)
  v00 = _materialize(qr * wv + qc)
  if nearest:
    # Nearest texel of the interpolated texture coordinate, which on a pixel-grid mesh is the
    # quad corner nearest to (s, t) whichever triangle holds the sample (GL_NEAREST lookup).
    win_payload = pay[_materialize(v00 + (ws > 0.5) + (wt > 0.5) * wv)]
  else:
    p00, p01, p10, p11 = pay[v00], pay[v00 + 1], pay[v00 + wv], pay[v00 + wv + 1]
    wm = jnp.where(diag_a.reshape(-1)[quad], jnp.minimum(ws, wt),
                   jnp.maximum(ws + wt - 1.0, 0.0))[:, None]
    ws, wt = ws[:, None], wt[:, None]
    win_payload = p00 + ws * (p01 - p00) + wt * (p10 - p00) + wm * (p11 - p01 - p10 + p00)
  win_payload = jnp.where(hit[:, None], win_payload, 0.0)

  win_slot = _materialize(quad * 2 + win_tri)
  pick = lambda per_tri: per_tri.reshape(-1)[win_slot] & hit
  out_flags = (jnp.stack([pick(fl) for fl in tri_flags], -1) if tri_flags
               else jnp.zeros((size * size, 0), bool))
  shape = (size, size)
  out = dict(depth=zbuf.reshape(shape), hit=hit.reshape(shape),
             front=pick(front).reshape(shape), flags=out_flags.reshape(shape + (-1,)),
             payload=win_payload.reshape(shape + (-1,)))

  # Exact values at the pixel centres (the centre sub-pixel's centre, as OpenGL samples it):
  # intersect the centre ray with the winning triangle's plane and interpolate there, so the
  # output depth and the intermediate image of forward_backward_warp carry no sub-pixel bias.
  centre = lambda x: centre_subpixel(x.reshape(shape + x.shape[1:]), ssaa).reshape(
      (-1,) + x.shape[1:])
  c_quad, c_tri, c_hit = centre(quad), centre(win_tri), centre(hit)
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
  if nearest:
    c_payload = centre(win_payload)
  else:
    c_payload = w[:, :1] * pay[ia] + w[:, 1:2] * pay[ib] + w[:, 2:] * pay[ic]
    c_payload = jnp.where(ok[:, None], c_payload, centre(win_payload))
  out['centre_depth'] = jnp.where(ok, c_depth, centre(zbuf)).reshape(resolution, resolution)
  out['centre_payload'] = c_payload.reshape(resolution, resolution, -1)
  return out


def downsample(x: jnp.ndarray, ssaa: int, op: str = 'sum') -> jnp.ndarray:
  """Reduces ssaa x ssaa blocks of [S, S, ...] to [S/ssaa, S/ssaa, ...]."""
  s = x.shape[0] // ssaa
  x = x.reshape((s, ssaa, s, ssaa) + x.shape[2:])
  return getattr(x, op)(axis=(1, 3))


def centre_subpixel(x: jnp.ndarray, ssaa: int) -> jnp.ndarray:
  """The centre sub-sample of each ssaa x ssaa block (the reference's [1::3, 1::3])."""
  off = (ssaa - 1) // 2
  return x[off::ssaa, off::ssaa]


def depth_edge(zbuf: jnp.ndarray, *, atol: float, rtol: float) -> jnp.ndarray:
  """Keep-mask of METHOD 4 step 5: False where >= 3 discontinuous neighbour pairs touch a pixel.

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


def _resolve(out: Dict[str, jnp.ndarray], colour_channels: int, *, near: float, far: float,
             ssaa: int, atol: float, rtol: float) -> Warped:
  """METHOD 4 steps 4-5: coverage rule, mean colour, centre depth, depth_edge, masking."""
  covered = out['hit'] & out['front'] & ~out['flags'][..., 0]
  count = downsample(covered.astype(jnp.float32), ssaa)
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
    near, far: the depth encoding's planes (METHOD 3).
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
  out = render_mesh(pts, colour, exists, [flag], resolution=n, fov_deg=fov_deg, ssaa=ssaa,
                    diag_a=diag_a)
  return _resolve(out, 3, near=near, far=far, ssaa=ssaa, atol=atol, rtol=rtol)


def forward_backward_warp(rgbd: jnp.ndarray, src_view: jnp.ndarray, mid_view: jnp.ndarray, *,
                          near: float, far: float, fov_deg: float = 45.0, ssaa: int = 3,
                          atol: float = 0.02, rtol: float = 0.02) -> Warped:
  """Training-pair warp (METHOD 4): src -> mid without cuts, border extended, then back with cuts.

  The result lives in src_view: the part of the image that mid_view can see, with the
  resampling artifacts of two warps. Arguments as in warp_rgbd.
  """
  _check(rgbd, ssaa, near, far)
  n = rgbd.shape[0]
  b = FBW_BORDER
  zb = rgbd[..., 3]
  exists = jnp.isfinite(zb)
  depth = jnp.where(exists, depth_lib.depth_from_zbuf(jnp.where(exists, zb, 0.5), near, far), 1.0)
  edge_pad = lambda x: jnp.pad(x, ((b, b), (b, b)) + ((0, 0),) * (x.ndim - 2), mode='edge')
  src_pts = grid_points(edge_pad(depth), fov_deg, n, border=b)
  diag_a = shorter_diagonal(src_pts)
  to_mid = relative_transform(src_view, mid_view)
  colour = edge_pad(jnp.nan_to_num(rgbd[..., :3]))
  fwd = render_mesh(apply_transform(to_mid, src_pts), colour, edge_pad(exists),
                    [jnp.zeros(src_pts.shape[:2], bool)], resolution=n, fov_deg=fov_deg,
                    ssaa=FBW_MID_SSAA, samples=FBW_MID_SAMPLES, diag_a=diag_a,
                    centre_first=True)
  # The mid view as an image: mean colour of the covered sub-pixels, centre sub-pixel depth.
  # Pixels whose centre shows back-facing material stay as occluders but are flagged hidden.
  covered = fwd['hit'] & fwd['front']
  ssaa_mid = FBW_MID_SSAA
  # One stored array, colour and depth, so that no consumer re-computes the centre reads.
  mid = _materialize(jnp.concatenate([fwd['centre_payload'], fwd['centre_depth'][..., None]], -1))
  mid_colour, mid_depth = mid[..., :3], mid[..., 3]
  mid_exists = jnp.isfinite(mid_depth)
  mid_hidden = ~centre_subpixel(covered, ssaa_mid)
  mid_depth = jnp.where(mid_exists, mid_depth, 1.0)

  mid_pts = grid_points(mid_depth, fov_deg, n)
  mid_diag = shorter_diagonal(mid_pts)
  flag = cut_flags(mid_depth, mid_diag, atol=atol, rtol=rtol) | mid_hidden
  back = render_mesh(apply_transform(relative_transform(mid_view, src_view), mid_pts), mid_colour,
                     mid_exists, [flag], resolution=n, fov_deg=fov_deg, ssaa=ssaa,
                     diag_a=mid_diag, nearest=True,
                     refine=(n - 1) ** 2 // FBW_REFINE_SHARE)
  return _resolve(back, 3, near=near, far=far, ssaa=ssaa, atol=atol, rtol=rtol)
