"""What a checkpoint's arrays must satisfy: finite values and the checksums recorded at save time.

The checksum of an array is sum_i bits(x_i) * (2 i + 1) mod 2^32 over its elements' bit patterns
(i the flat index): exact integer arithmetic, so it does not depend on the reduction order, the
mesh or the device count the arrays are sharded over, and any change of a single element changes
it (odd factors are invertible mod 2^32). The arrays of one part (params, ema_params, ...) are
combined the same way over their leaf index. Computed on device in one jitted pass; a few ms per
save of the small presets.
"""
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _leaf_checksum(x: jax.Array) -> jax.Array:
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  if x.dtype.itemsize == 8:  # 64-bit values (jax_enable_x64): two uint32 words each
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  else:
    unsigned = _UNSIGNED[x.dtype.itemsize]
    bits = x if x.dtype == unsigned else jax.lax.bitcast_convert_type(x, unsigned)
  bits = bits.astype(jnp.uint32)
  index, stride = jnp.zeros(bits.shape, jnp.uint32), 1
  for axis in reversed(range(bits.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * np.uint32(
        stride % 2**32)
    stride *= bits.shape[axis]
  return jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)


@jax.jit
def _fingerprint(tree: dict[str, Any]) -> dict[str, tuple[jax.Array, jax.Array]]:
  out = {}
  for part, value in tree.items():
    checksum, finite = jnp.uint32(0), jnp.bool_(True)
    for i, leaf in enumerate(jax.tree.leaves(value)):
      checksum = checksum + _leaf_checksum(leaf) * np.uint32(2 * i + 1)
      if jnp.issubdtype(leaf.dtype, jnp.inexact):
        finite = finite & jnp.all(jnp.isfinite(leaf))
    out[part] = (checksum, finite)
  return out


def _host(x: jax.Array) -> np.ndarray:
  """A replicated result on this host (also when other processes hold other devices)."""
  return np.asarray(x.addressable_data(0))


def fingerprint(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """{'checksum': {part: int}, 'finite': {part: bool}} of a dict of pytrees of arrays.

  Every process of a multi-process run must call it together (the arrays may be sharded).
  """
  # Outside any context mesh: the arrays carry their own shardings (a reader's arrays on one
  # device would not match a trainer's mesh set around the call).
  with jax.set_mesh(None):
    parts = jax.tree.map(_host, _fingerprint(tree))
  return {'checksum': {k: int(c) for k, (c, _) in parts.items()},
          'finite': {k: bool(f) for k, (_, f) in parts.items()}}


def nonfinite_parts(record: dict[str, dict[str, Any]]) -> list[str]:
  return [k for k, ok in record['finite'].items() if not ok]


def problem(tree: dict[str, Any], saved: Optional[dict[str, Any]]) -> Optional[str]:
  """None when `tree` is finite and matches the checksums `saved` with it (when any), else why."""
  record = fingerprint(tree)
  found = []
  bad = nonfinite_parts(record)
  if bad:
    found.append(f'holds NaN/inf in {", ".join(bad)}')
  changed = [k for k, c in ((saved or {}).get('checksum') or {}).items()
             if k in record['checksum'] and record['checksum'][k] != c]
  if changed:
    found.append(f'fails its checksum in {", ".join(changed)} (the files changed after they '
                 'were written)')
  return '; '.join(found) or None
