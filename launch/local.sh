#!/usr/bin/env bash
# Run an ivd_jax job on this machine: one process, or several on localhost (multi-host rehearsal).
#
#   launch/local.sh CONFIG WORKDIR [--config.x.y=value ...]
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 launch/local.sh configs/uncond.py /tmp/gu
#
# CONFIG is a config file with an optional preset (configs/uncond.py:tiny). With NUM_PROCESSES > 1
# every process gets jax.distributed coordinates on localhost in its environment
# (JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID, read by ivd_jax/parallel.py, so
# every mode and config works), gloo CPU collectives when JAX_PLATFORMS=cpu and
# DEVICES_PER_PROCESS simulated CPU devices; logs go to LOG_DIR/process_<i>.log (default
# WORKDIR/logs, or ./logs/<workdir name> for a gs:// WORKDIR). SIGTERM / SIGINT are passed to
# every process (they save one agreed step and exit); the script exits with the first failure.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,14p' "$0"; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
NUM_PROCESSES=${NUM_PROCESSES:-1}
# XLA:CPU's fusion settings (XNNPACK convolutions, no YNNPACK fusions) are applied by
# ivd_jax.main itself (ivd_jax/runtime.py; IVD_XLA_CPU_FLAGS=0 turns them off).
# Debian's tcmalloc (apt-get install libtcmalloc-minimal4) in place of glibc malloc: XLA:CPU
# returns and re-maps its buffers every step; with tcmalloc a fixture32 train step takes 8-38x
# fewer minor page faults and 16-21 % less CPU time (benchmarks/README.md). Used only when
# installed; IVD_TCMALLOC=0 turns it off.
TCMALLOC=${TCMALLOC:-/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4}
if [ "${IVD_TCMALLOC:-1}" = 1 ] && [ -f "$TCMALLOC" ]; then
  export LD_PRELOAD="${LD_PRELOAD:+$LD_PRELOAD:}$TCMALLOC"
fi
if [ "$NUM_PROCESSES" -le 1 ]; then
  exec "$PY" -m ivd_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
fi
PORT=${PORT:-$(( 20000 + RANDOM % 20000 ))}
case "$WORKDIR" in
  gs://*) LOG_DIR=${LOG_DIR:-logs/$(basename "$WORKDIR")} ;;
  *) LOG_DIR=${LOG_DIR:-$WORKDIR/logs} ;;
esac
mkdir -p "$LOG_DIR"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
if [ "$JAX_PLATFORMS" = cpu ]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}"
  export JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
fi
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  JAX_COORDINATOR_ADDRESS="localhost:$PORT" JAX_NUM_PROCESSES="$NUM_PROCESSES" JAX_PROCESS_ID="$i" \
    "$PY" -m ivd_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" \
    > "$LOG_DIR/process_$i.log" 2>&1 &
  pids+=($!)
done
# A trapped signal interrupts `wait` (status > 128): wait again for the process's real status.
signalled=0
trap 'signalled=1; kill -TERM "${pids[@]}" 2>/dev/null || true' TERM INT
echo "launched $NUM_PROCESSES processes; logs in $LOG_DIR/ (tail -f $LOG_DIR/process_0.log)"
status=0
for pid in "${pids[@]}"; do
  s=0
  wait "$pid" || s=$?
  while [ "$signalled" = 1 ]; do
    signalled=0; r=0
    wait "$pid" || r=$?
    if [ "$r" != 127 ]; then s=$r; fi  # 127: the first wait had its real status already
  done
  if [ "$status" = 0 ]; then status=$s; fi
done
exit "$status"
