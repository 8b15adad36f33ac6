#!/usr/bin/env bash
# Run an ivd_jax job on this machine: one process, or several on localhost (multi-host rehearsal).
#
#   launch/local.sh CONFIG WORKDIR [--config.x.y=value ...]
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=4 launch/local.sh configs/uncond.py /tmp/gu
#
# CONFIG is a config file with an optional preset (configs/uncond.py:tiny). With NUM_PROCESSES > 1
# every process gets jax.distributed coordinates on localhost (gloo CPU collectives when
# JAX_PLATFORMS=cpu) and DEVICES_PER_PROCESS simulated CPU devices; logs go to
# WORKDIR/logs/process_<i>.log and the script waits for all of them.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,10p' "$0"; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
NUM_PROCESSES=${NUM_PROCESSES:-1}
# XNNPACK convolutions make the UNet train step 12-24 % faster on XLA:CPU than its default
# (benchmarks/README.md). The flags are experimental and an unknown flag aborts XLA, so they are
# added only when this jaxlib accepts them; IVD_XNN_CONV=0 turns this off.
XNN_FLAGS="--xla_cpu_experimental_xnn_fusion_type=LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION --xla_cpu_experimental_ynn_fusion_type="
if [ "${IVD_XNN_CONV:-1}" = 1 ] && XLA_FLAGS="$XNN_FLAGS" JAX_PLATFORMS=cpu "$PY" -c \
    'import jax.numpy as jnp; jnp.zeros(1).block_until_ready()' > /dev/null 2>&1; then
  export XLA_FLAGS="${XLA_FLAGS:-} $XNN_FLAGS"
fi
if [ "$NUM_PROCESSES" -le 1 ]; then
  exec "$PY" -m ivd_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
fi
PORT=${PORT:-$(( 20000 + RANDOM % 20000 ))}
mkdir -p "$WORKDIR/logs"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
if [ "$JAX_PLATFORMS" = cpu ]; then
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-1}"
  COLLECTIVES=(--config.distributed.cpu_collectives=gloo)
else
  COLLECTIVES=()
fi
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  "$PY" -m ivd_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" \
    --config.distributed.coordinator_address="localhost:$PORT" \
    --config.distributed.num_processes="$NUM_PROCESSES" --config.distributed.process_id="$i" \
    "${COLLECTIVES[@]}" > "$WORKDIR/logs/process_$i.log" 2>&1 &
  pids+=($!)
done
echo "launched $NUM_PROCESSES processes; logs in $WORKDIR/logs/ (tail -f $WORKDIR/logs/process_0.log)"
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
