"""JSON files with numpy values: manifests, summaries, results."""
import json
from typing import Any, Mapping

import numpy as np

from ivd_jax.io import paths


def jsonable(x: Any) -> Any:
  """numpy values -> lists/numbers, NaN/inf -> null (JSON has neither)."""
  if isinstance(x, Mapping):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, np.ndarray) or hasattr(x, '__array__') and not isinstance(x, (str, bytes)):
    arr = np.asarray(x)
    return jsonable(arr.item()) if arr.ndim == 0 else jsonable(arr.tolist())
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    return x.item()
  if isinstance(x, float) and not np.isfinite(x):
    return None  # JSON has no NaN/inf; null says "not measured".
  return x


def write_manifest(path: str, manifest: Mapping[str, Any]) -> str:
  """Writes manifest.json (numpy values become lists/numbers, NaN becomes null). Local or gs://."""
  paths.write_text(path, json.dumps(jsonable(manifest), indent=1, allow_nan=False))
  return path
