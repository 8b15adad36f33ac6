"""Depth encodings of docs/method.md §3."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ivd_jax.geometry import depth


def test_zbuf_endpoints_and_roundtrip():
  d = np.array([0.5, 1.0, 2.0, 100.0], np.float32)
  z = np.asarray(depth.zbuf_from_depth(d, 0.5, 100.0))
  np.testing.assert_allclose(z, [0.0, 1.0 / 1.99, 1.5 / 1.99, 1.0], atol=1e-6)
  np.testing.assert_allclose(depth.depth_from_zbuf(z[1:3], 0.5, 100.0), d[1:3], rtol=1e-5)
  # Clipping: out-of-range depth saturates, zbuf 0/1 map to (almost) near/far.
  np.testing.assert_allclose(depth.zbuf_from_depth(np.float32(1000.0), 0.5, 100.0), 1.0)
  assert float(depth.depth_from_zbuf(0.0, 0.5, 100.0)) == pytest.approx(0.5, rel=1e-5)
  assert np.isfinite(float(depth.depth_from_zbuf(1.0, 0.5, 100.0)))


def test_matches_fixture_encoding(fixtures_dir):
  d = np.load(fixtures_dir / 'warp_subset.npz')
  np.testing.assert_allclose(
      depth.zbuf_from_depth(d['s64_input_depth_planar'], 0.5, 100.0),
      d['s64_input_depth_zbuf'], atol=2e-6)
  np.testing.assert_allclose(
      depth.zbuf_from_depth(d['agg64_view_depth_planar'], 0.6, 5.0),
      d['agg64_view_depth_zbuf'], atol=2e-6)


def test_midas_conversion():
  # 6250 * 4 = 25000 -> disparity 4 > 1/near = 2: rescaled so the nearest point sits at 0.5.
  raw = np.array([[25000.0, 6250.0], [625.0, 0.0]], np.float32)
  z = depth.zbuf_from_midas(raw, 0.5, 100.0)
  assert isinstance(z, np.ndarray)
  disp = np.array([2.0, 0.5, 0.05, 1e-3])
  want = np.clip((disp - 2.0) / (0.01 - 2.0), 0, 1).reshape(2, 2)
  np.testing.assert_allclose(z, want, atol=1e-6)
  # Below 1/near nothing is rescaled; jnp input gives the same numbers.
  raw2 = np.array([6250.0, 3125.0], np.float32)
  np.testing.assert_allclose(depth.zbuf_from_midas(jnp.asarray(raw2), 0.5, 100.0),
                             [(1 - 2) / (0.01 - 2), (0.5 - 2) / (0.01 - 2)], atol=1e-6)


def test_network_encoding_and_jit():
  x = jnp.array([0.0, 0.25, 1.0])
  np.testing.assert_allclose(depth.to_network(x), [-1.0, -0.5, 1.0])
  np.testing.assert_allclose(depth.from_network(depth.to_network(x)), x)
  f = jax.jit(lambda d: depth.depth_from_zbuf(depth.zbuf_from_depth(d, 0.6, 5.0), 0.6, 5.0))
  np.testing.assert_allclose(f(jnp.array([0.7, 1.3, 4.9])), [0.7, 1.3, 4.9], rtol=1e-5)
