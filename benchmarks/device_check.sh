#!/usr/bin/env bash
# The accelerator figures of benchmarks/accelerator.py --size=real in one go (issue 16).
#
#   bash benchmarks/device_check.sh wheels   # here, with the package index: the wheels the
#                                            # device image lacks -> .whl/ (git-ignored)
#   bash benchmarks/device_check.sh          # there: installs .whl/ offline, runs the cases
#
# On the device machine the image's python3 (jax with its CUDA plugin, flax, optax, orbax) runs
# the repository as it is (no pip install -e, no network); the only missing package of the
# benchmark's imports, ml-collections (pure Python), travels as a wheel in .whl/ (device tool:
# carry [".whl"]). Writes $OUT/accelerator.jsonl (one JSON line per case, flushed as each ends,
# so a run cut short keeps what it measured), $OUT/env.txt (GPU, driver, package versions) and
# $OUT/summary.txt (the headline figures, also printed last). Budget: the cases stop starting at
# ACCEL_BUDGET_S (default 400 s) and a hard limit kills the run at 470 s, inside 8 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${1:-}" = wheels ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  ML=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("ml-collections"))')
  exec "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl "ml-collections==$ML"
fi

OUT=${OUT:-/tmp/ivd_jax_device_check}
mkdir -p "$OUT"
if ! "$PY" -c 'import ml_collections' 2> /dev/null; then
  if ! ls .whl/*.whl > /dev/null 2>&1; then
    echo "ml_collections is missing and .whl/ holds no wheels: run 'bash $0 wheels' where the" \
         "package index is reachable and carry .whl" >&2
    exit 2
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/ivd_jax_site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/ivd_jax_site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$PY" -c 'import sys, jax, flax, optax, orbax.checkpoint as o; print(sys.version); print(
    "jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__, "orbax",
    o.__version__); print(jax.devices())'
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# One model at a time on the device: let XLA's allocator have most of its memory.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
export PYTHONUNBUFFERED=1
timeout -s INT 470 "$PY" benchmarks/accelerator.py --size=real \
  --budget_s="${ACCEL_BUDGET_S:-400}" ${ACCEL_ARGS:-} | tee "$OUT/accelerator.jsonl"
status=${PIPESTATUS[0]}

"$PY" - "$OUT/accelerator.jsonl" << 'EOF' | tee "$OUT/summary.txt"
import json, sys
keys = ('global_batch', 'remat', 'attention', 'dtype', 's_per_step', 'images_per_s', 'mfu',
        'hfu', 'peak_bytes', 'compile_s', 'gu_ddpm_steps_per_s', 'gc_ddim_step_s',
        'aggregate_27_slots_s', 'view_set_s_per_instance', 'skipped', 'error')
for line in open(sys.argv[1]):
  row = json.loads(line)
  print(row['case'], {k: row[k] for k in keys if k in row})
EOF
exit "$status"
