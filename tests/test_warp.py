"""The splat warp (docs/method.md §4): reference fixtures, exact scenes and degenerate input.

Figures measured with this implementation (jax 0.10.2, CPU) on the fixture subset
(warp_subset.npz; truth = analytic co-visibility; reference = the authors' OpenGL code):

  case       | ours: min precision  recall  PSNR  | reference: min precision  recall  PSNR | min IoU
  fw  128 px |       1.0000         0.9071  28.9 |             1.0000         0.9066  28.8 | 0.992
  fbw 128 px |       0.9996         0.7811  36.5 |             0.9998         0.7807  35.9 | 0.989
  fw   64 px |       1.0000         0.7230  27.6 |             1.0000         0.7210  27.5 | 0.978
  fbw  64 px |       0.9987         0.7089  34.3 |             0.9994         0.7086  32.0 | 0.979
(recall = mean over cases; PSNR in dB, pooled over each warp's own masks of the cases.)
On the pixels both fbw masks keep (issue #15; test_fbw_colour_on_pixels_both_keep), pooled per
size: 64 px ours 34.37 dB vs the reference's 32.10 (29.86 before the cubic resampling of #15),
128 px 36.48 vs 36.12 (34.91 before). Per case, ours minus the reference's: >= +1.59 dB at 64 px;
at 128 px +1.9 / +2.0 dB and -0.29 dB for the case with a one-pixel bright line on the
foreshortened ground (its 236 pixels: 17.5 vs 18.4 dB, both warps lose it; the rest 40.7 vs 38.8).
The issue's reference figures (88.4 % / 82.9 % recall, 27.3 / 33.4 dB) are means over the
authors' full set; on this subset the reference itself reaches the recalls above, so recall is
asserted against the reference on the same cases (ours >= reference) and PSNR against 27.3 /
33.4 dB. Before #15 (fbw colour 34.9 / 29.8 dB at 128 / 64 px) the fbw PSNR at 128 px had
fallen from 36.8 dB when the forward pass began to read the surface at pixel centres: the mask
then also kept hard pixels that the reference keeps too (a one-pixel bright line that both warps
blur), while on the pixels kept before and after the colour error fell (MSE 2.0e-4 -> 1.8e-4; at
64 px 1.26e-3 -> 0.99e-3).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ivd_jax import errors
from ivd_jax.data import procedural
from ivd_jax.geometry import cameras
from ivd_jax.geometry import depth as depth_lib
from ivd_jax.geometry import raster
from ivd_jax.geometry import warp

NEAR, FAR = 0.5, 100.0


def _fw(rgbd, src, dst):
  return warp.warp_rgbd(rgbd, src, dst, near=NEAR, far=FAR)


def _fbw(rgbd, src, mid):
  return warp.forward_backward_warp(rgbd, src, mid, near=NEAR, far=FAR)


def _padded(fn):
  """Runs a batched warp with the batch padded to 6 (64 px) / 3 (128 px): one compile each."""
  jitted = jax.jit(jax.vmap(fn, in_axes=(0, None, 0)))

  def run(rgbd, src, views):
    n = len(rgbd)
    size = 6 if rgbd.shape[1] == 64 else 3
    pad = -n % size
    rgbd = np.concatenate([rgbd, np.repeat(rgbd[:1], pad, 0)])
    views = np.concatenate([views, np.repeat(views[:1], pad, 0)])
    return jax.tree_util.tree_map(lambda x: x[:n], jax.device_get(jitted(rgbd, src, views)))
  return run


@pytest.fixture(scope='module')
def fw_batch():
  return _padded(_fw)


@pytest.fixture(scope='module')
def fbw_batch():
  return _padded(_fbw)


def _psnr(a, b, m):
  m = np.asarray(m, bool)
  return float(10 * np.log10(1.0 / np.mean((a[m] - b[m]) ** 2)))


@pytest.fixture(scope='module')
def fixture_scores(fixtures_dir, fw_batch, fbw_batch):
  """Scores of our warps and of the reference's on every fixture case."""
  d = np.load(fixtures_dir / 'warp_subset.npz')
  scores = {}
  for g in ('s64', 's128'):
    rgbd = np.concatenate([d[f'{g}_input_rgb'], d[f'{g}_input_depth_zbuf'][..., None]], -1)
    rgbd = np.repeat(rgbd, 3, axis=0)
    views = d[f'{g}_modelview'].reshape(-1, 4, 4).astype(np.float32)
    n = rgbd.shape[1]
    outs = {'fw': jax.device_get(fw_batch(rgbd, cameras.SOURCE_VIEW, views)),
            'fbw': jax.device_get(fbw_batch(rgbd, cameras.SOURCE_VIEW, views))}
    for kind, truth_key, target in (('fw', 'covis_tgt_in_src', d[f'{g}_true_rgb']),
                                    ('fbw', 'covis_src_in_tgt', rgbd[..., :3])):
      truth = d[f'{g}_{truth_key}'].reshape(-1, n, n).astype(bool)
      target = np.asarray(target).reshape(-1, n, n, 3)
      ours = outs[kind].mask[..., 0] > 0.5
      ref = d[f'{g}_{kind}_mask'].reshape(-1, n, n).astype(bool)
      ref_rgb = d[f'{g}_{kind}_color'].reshape(-1, n, n, 3)
      row = {}
      for name, m, rgb in (('ours', ours, outs[kind].rgbd[..., :3]), ('ref', ref, ref_rgb)):
        row[name] = dict(
            precision=[(mi & ti).sum() / max(mi.sum(), 1) for mi, ti in zip(m, truth)],
            recall=float(np.mean([(mi & ti).sum() / ti.sum() for mi, ti in zip(m, truth)])),
            psnr=_psnr(rgb, target, m))
      row['iou'] = [(a & b).sum() / (a | b).sum() for a, b in zip(ours, ref)]
      both = ours & ref
      row['psnr_both'] = dict(ours=_psnr(outs[kind].rgbd[..., :3], target, both),
                              ref=_psnr(ref_rgb, target, both))
      scores[g, f'ref_masks_{kind}'] = ref
      row['out'] = outs[kind]
      scores[g, kind] = row
  return scores


@pytest.mark.parametrize('g,kind,ref_recall,ref_psnr', [
    ('s128', 'fw', 0.884, 27.3), ('s128', 'fbw', None, 33.4),
    ('s64', 'fw', None, None), ('s64', 'fbw', None, None)])
def test_against_reference_and_truth(fixture_scores, g, kind, ref_recall, ref_psnr):
  """Precision >= 0.995, recall >= the reference's, PSNR >= the reference's, IoU >= 0.85."""
  row = fixture_scores[g, kind]
  assert min(row['ours']['precision']) >= 0.995
  assert row['ours']['recall'] >= row['ref']['recall']
  if ref_recall is not None:
    assert row['ours']['recall'] >= ref_recall
  if ref_psnr is not None:
    assert row['ours']['psnr'] >= ref_psnr
  assert min(row['iou']) >= 0.85
  if kind == 'fbw':
    # The border extension of the forward warp keeps the source border where pi_1 sees it:
    # the outermost rows and columns survive about as often as in the reference.
    ours = fixture_scores[g, kind]['out'].mask[..., 0] > 0.5
    ref = fixture_scores[g, 'ref_masks_fbw']
    border = lambda m: m[:, [0, -1], :].sum() + m[:, :, [0, -1]].sum()
    assert border(ours) >= 0.9 * border(ref)
  out = row['out']
  assert np.all(np.isfinite(out.rgbd))
  # Outputs are zero outside the mask, the mask is binary.
  assert set(np.unique(out.mask)) <= {0.0, 1.0}
  np.testing.assert_array_equal(out.rgbd * (1 - out.mask), 0.0)


@pytest.mark.parametrize('g,floor', [('s64', 34.2), ('s128', 36.3)])
def test_fbw_colour_on_pixels_both_keep(fixture_scores, g, floor):
  """Issue #15: fbw colour vs the input on the pixels both warps keep, pooled over the cases of a
  size, at least the reference's (measured: 64 px 34.37 vs 32.10 dB, 128 px 36.48 vs 36.12),
  with the visibility of before: precision >= 0.9987, recall >= the reference's, IoU >= 0.978."""
  row = fixture_scores[g, 'fbw']
  assert row['psnr_both']['ours'] >= row['psnr_both']['ref']
  assert row['psnr_both']['ours'] >= floor
  assert min(row['ours']['precision']) >= 0.9987
  assert row['ours']['recall'] >= row['ref']['recall']
  assert min(row['iou']) >= 0.978


def test_fbw_depth_matches_reference(fixtures_dir, fixture_scores):
  """Inside both masks the z-buffer depth agrees with the reference's to < 2e-4 (mean)."""
  d = np.load(fixtures_dir / 'warp_subset.npz')
  out = fixture_scores['s128', 'fbw']['out']
  ref_mask = d['s128_fbw_mask'].reshape(3, 128, 128).astype(bool)
  both = (out.mask[..., 0] > 0.5) & ref_mask
  err = np.abs(out.rgbd[..., 3] - d['s128_fbw_depth'].reshape(3, 128, 128))[both]
  assert err.mean() < 2e-4


@pytest.fixture(scope='module')
def scene64():
  scene = procedural.sample_scene(3)
  rgbd = procedural.render_rgbd(scene, cameras.SOURCE_VIEW, 64)
  return scene, rgbd


def test_identity_camera_returns_input(scene64, fw_batch, fbw_batch):
  """Same camera: depth is reproduced exactly and colour closely wherever the mask is set."""
  _, rgbd = scene64
  views = np.asarray(cameras.SOURCE_VIEW)[None]
  for fn in (fw_batch, fbw_batch):
    out = jax.device_get(fn(rgbd[None], cameras.SOURCE_VIEW, views))
    m = out.mask[0, ..., 0] > 0.5
    assert m.mean() > 0.7  # at 64 px the 0.02 thresholds cut most of the ground plane
    np.testing.assert_allclose(out.rgbd[0, ..., 3][m], rgbd[..., 3][m], atol=2e-5)
    assert _psnr(out.rgbd[0, ..., :3], rgbd[..., :3], m) > 30.0


def test_warp_agrees_with_exact_render(scene64, fw_batch):
  """Warp of an exactly rendered scene vs the true render from another camera."""
  scene, rgbd = scene64
  dst = np.asarray(cameras.orbit_view(0.2, 0.08, 1.05))
  out = jax.device_get(fw_batch(rgbd[None], cameras.SOURCE_VIEW, dst[None]))
  true = procedural.render(scene, dst, 64)
  covis = procedural.covisibility(scene, dst, true.depth, cameras.SOURCE_VIEW)
  m = out.mask[0, ..., 0] > 0.5
  assert (m & covis).sum() / m.sum() >= 0.995
  assert (m & covis).sum() / covis.sum() >= 0.6
  assert _psnr(out.rgbd[0, ..., :3], true.rgb, m) > 24.0
  true_zbuf = np.asarray(depth_lib.zbuf_from_depth(true.depth, NEAR, FAR))
  assert np.abs(out.rgbd[0, ..., 3] - true_zbuf)[m].mean() < 1e-3


def test_batch_sharded_jit_equals_unsharded(scene64):
  """vmap + jit with the batch sharded over 8 devices gives the unsharded result."""
  _, rgbd = scene64
  keys = jax.random.split(jax.random.key(0), 8)
  views = jax.vmap(cameras.random_training_view)(keys)
  batch = np.repeat(rgbd[None], 8, axis=0)
  fn = jax.vmap(_fbw, in_axes=(0, None, 0))
  plain = jax.device_get(jax.jit(fn)(batch, cameras.SOURCE_VIEW, views))
  mesh = jax.make_mesh((8, 1), ('data', 'fsdp'), axis_types=(AxisType.Auto,) * 2)
  data = NamedSharding(mesh, P(('data', 'fsdp')))
  rep = NamedSharding(mesh, P())
  with jax.set_mesh(mesh):
    sharded = jax.jit(fn, in_shardings=(data, rep, data), out_shardings=data)
    out = sharded(jax.device_put(batch, data), np.asarray(cameras.SOURCE_VIEW),
                  jax.device_put(views, data))
  assert out.mask.sharding.spec == P(('data', 'fsdp'))
  # Identical masks and depth; colours agree to float rounding except where a sub-pixel's
  # winning sample flips between two samples of the same surface because an ulp of difference
  # in the two compilations moves a depth across a z-buffer bucket boundary (measured: 2 of
  # 32768 pixels, colour difference < 0.01).
  np.testing.assert_array_equal(jax.device_get(out.mask), plain.mask)
  np.testing.assert_allclose(jax.device_get(out.rgbd)[..., 3], plain.rgbd[..., 3], atol=2e-5)
  diff = np.abs(jax.device_get(out.rgbd) - plain.rgbd).max(-1)
  assert np.mean(diff < 2e-5) > 0.999 and diff.max() < 0.05
  assert plain.mask.mean() > 0.4


def _plane(n, zbuf):
  rgbd = np.full((n, n, 4), 0.5, np.float32)
  rgbd[..., 3] = zbuf
  return rgbd


def test_degenerate_inputs_give_finite_empty_outputs(fw_batch, fbw_batch):
  n = 64
  wall = _plane(n, float(depth_lib.zbuf_from_depth(1.0, NEAR, FAR)))
  invalid = _plane(n, np.nan)
  invalid[::2, :, 3] = np.inf
  invalid[:, ::3, 3] = -np.inf
  behind_wall = np.asarray(cameras.look_at((0.0, 0.0, -1.0), (0.0, 0.0, 0.0)))
  facing_away = np.asarray(cameras.look_at((0.0, 0.0, 1.0), (0.0, 0.0, 2.0)))
  cases = [(invalid, cameras.SOURCE_VIEW), (wall, behind_wall), (wall, facing_away)]
  batch = np.stack([c[0] for c in cases])
  views = np.stack([np.asarray(c[1]) for c in cases])
  for fn in (fw_batch, fbw_batch):
    out = jax.device_get(fn(batch, cameras.SOURCE_VIEW, views))
    assert np.all(np.isfinite(out.rgbd)) and np.all(np.isfinite(out.mask))
    assert out.mask.sum() == 0 and np.abs(out.rgbd).sum() == 0
  # Partially invalid depth: the invalid pixels are never visible.
  half = wall.copy()
  half[:, :32, 3] = np.nan
  out = jax.device_get(fw_batch(half[None], cameras.SOURCE_VIEW,
                                np.asarray(cameras.SOURCE_VIEW)[None]))
  assert out.mask[0, :, :32].sum() == 0 and out.mask[0, 2:-2, 34:-2].min() == 1


def test_depth_edge_counts_pairs():
  z = np.full((8, 8), 0.2, np.float32)
  z[:, 4:] = 0.8
  keep = np.asarray(warp.depth_edge(z, atol=0.02, rtol=0.02))
  # Columns 3 and 4 touch 3 discontinuous pairs (left/right + two diagonals), except the
  # corner rows which touch 2.
  np.testing.assert_array_equal(keep[1:-1, 3:5], False)
  np.testing.assert_array_equal(keep[:, :3], True)
  np.testing.assert_array_equal(keep[[0, -1], 3], True)
  # A step below either threshold is not an edge (BOTH must exceed).
  z2 = np.where(z > 0.5, 0.21, 0.2).astype(np.float32)
  assert np.asarray(warp.depth_edge(z2, atol=0.02, rtol=0.02)).all()
  assert warp.depth_edge(z[..., None], atol=0.02, rtol=0.02).shape == (8, 8, 1)


def test_erode_square():
  m = np.ones((9, 9, 1), np.float32)
  m[4, 4] = 0
  out = np.asarray(warp.erode(m, 3))
  assert out.sum() == 81 - 9 and out[3:6, 3:6].sum() == 0
  assert np.asarray(warp.erode(m, 5)).sum() == 81 - 25
  np.testing.assert_array_equal(warp.erode(np.ones((5, 5, 1)), 7), 1.0)  # border not eroded
  np.testing.assert_array_equal(warp.erode(m, 1), m)


def test_zbuffer_keeps_the_centre_most_sample_of_the_nearest_surface():
  """raster's z-buffer: nearest depth bucket, then (centre_first) centre cover, then distance."""
  # Sub-pixel 0: two samples of one surface (same depth bucket); 1: one sample; 2: a near sample
  # off-centre and a far one at the centre; 3: nothing (undrawn samples go to the dump slot 4).
  z = np.array([2.0, 2.0 * (1 + 2.0**-12), 1.0, np.inf, 3.0, 2.5], np.float32)
  dist = np.array([0.2, 0.1, 0.3, 0.0, 0.0, 0.45], np.float32)
  idx = np.array([0, 0, 1, 4, 2, 2], np.int32)
  splat = raster._Splat(idx=jnp.asarray(idx), z=jnp.asarray(z), centre_dist=jnp.asarray(dist),
                        col_i=None, row_i=None, tri_is_1=None, num_quads=0, refined=None)
  inside = jnp.asarray([True, False, False, True, True, True])
  for centre_first, want in ((False, [1, 2, 5, 6]), (True, [0, 2, 5, 6])):
    depth, win_id = raster._zbuffer(splat, inside if centre_first else None, 4)
    np.testing.assert_array_equal(win_id, want)
    np.testing.assert_allclose(depth[:3], z[want[:3]], rtol=raster.DEPTH_TIE)
    assert depth[3] == np.inf


def test_bad_input_is_a_user_error():
  with pytest.raises(errors.UserError, match='square'):
    warp.warp_rgbd(np.zeros((2, 8, 8, 4)), cameras.SOURCE_VIEW, cameras.SOURCE_VIEW,
                   near=NEAR, far=FAR)
  with pytest.raises(errors.UserError, match='near'):
    warp.forward_backward_warp(np.zeros((8, 8, 4)), cameras.SOURCE_VIEW, cameras.SOURCE_VIEW,
                               near=1.0, far=0.5)
