"""numpy .npz archives at local paths or on a bucket (gs://)."""
import io
from typing import Any

import numpy as np

from ivd_jax.io import paths


def save_npz(path: str, *, compressed: bool = False, **arrays: Any) -> str:
  """np.savez(_compressed) to `path` exactly (no '.npz' appended), written whole (io.paths)."""
  buffer = io.BytesIO()
  (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
  return paths.write_bytes(path, buffer.getvalue())


def load_npz(path: str) -> Any:
  """np.load of an .npz (no pickles); use as `with load_npz(p) as f: f['key']`."""
  if paths.is_remote(path):
    return np.load(io.BytesIO(paths.read_bytes(path)), allow_pickle=False)
  return np.load(path, allow_pickle=False)
