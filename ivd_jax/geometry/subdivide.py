"""Denser sampling of chosen quads for the rasteriser (raster.render_mesh refine).

A refined quad is split into split x split sub-quads, each written as a quad of its own (its
corner coefficients and diagonal term), so that raster samples every row, quad or sub-quad, with
the same static K x K pattern.
"""
import functools
from typing import Dict, Tuple

import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=None)
def sub_quad_terms(split: int) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
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
  on_a, on_b, after_b = i == j, i + j == split - 1, i + j > split - 1
  terms = dict(
      m0=(np.where(on_a, s0, np.where(j > i, t0, s0)), np.where(after_b, s0 + t0 - 1.0, zero)),
      ms=(np.where(i > j, one, zero), np.where(after_b, one, zero)),
      mt=(np.where(j > i, one, zero), np.where(after_b, one, zero)),
      mc=(np.where(on_a, one, zero), np.where(on_b, one, zero)),
      tri=(np.where(i > j, one, zero), np.where(after_b, one, zero)), s0=(s0, s0), t0=(t0, t0))
  return {k: (a.astype(np.float32), b.astype(np.float32)) for k, (a, b) in terms.items()}


def refined_rows(rows, refined, refined_ok, pattern, split: int):
  """Rows (k0, ka, kb, kc, da, tri_ex, tri_is_1) + one per sub-quad of each refined quad.

  rows are raster._sample's per-quad coefficients; refined [M] the quad ids, refined_ok [M]
  whether each is real; pattern raster's static sample pattern; split the sub-quads per side.
  """
  # Each sub-quad is written as a quad of its own (see sub_quad_terms): every row samples the
  # same static pattern, which keeps the sample loops as cheap as without refinement.
  k0, ka, kb, kc, da, tri_ex, tri_pattern = rows
  nsub = split * split
  r_da = jnp.repeat(da[refined], nsub, axis=0)
  count = refined.shape[0]
  terms = {key: jnp.where(r_da, np.tile(v[0], count)[:, None], np.tile(v[1], count)[:, None])
           for key, v in sub_quad_terms(split).items()}
  r0, ra, rb, rc = (jnp.repeat(x[refined], nsub, axis=0) for x in (k0, ka, kb, kc))
  h = 1.0 / split
  # Sub-quads off the split diagonal lie in one triangle.
  sub_tri = jnp.where(terms['mc'] > 0, jnp.where(r_da, pattern['tri_a'].astype(bool),
                                                 pattern['tri_b'].astype(bool)), terms['tri'] > 0)
  return (jnp.concatenate([k0, r0 + terms['s0'] * ra + terms['t0'] * rb + terms['m0'] * rc]),
          jnp.concatenate([ka, h * (ra + terms['ms'] * rc)]),
          jnp.concatenate([kb, h * (rb + terms['mt'] * rc)]),
          jnp.concatenate([kc, h * terms['mc'] * rc]),
          jnp.concatenate([da, r_da]),
          jnp.concatenate([tri_ex, jnp.repeat(tri_ex[refined] & refined_ok[:, None], nsub,
                                              axis=0)]),
          jnp.concatenate([tri_pattern, sub_tri]))
