#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: create (or reuse) it, copy this tree, install, run the same
# command on every worker with per-worker logs, workdir on a GCS bucket.
#
#   launch/tpu_pod.sh create   # make the slice (TPU_TYPE, TPU_VERSION, SPOT=1 for spot VMs)
#   launch/tpu_pod.sh setup    # copy the code to every worker and install it with jax[tpu]
#   launch/tpu_pod.sh run configs/uncond.py:imagenet128 gs://BUCKET/runs/gu \
#       --config.data.dir=gs://BUCKET/data/imagenet128
#   launch/tpu_pod.sh logs [WORKER]   # follow a worker's log (default 0)
#   launch/tpu_pod.sh stop            # SIGTERM the runs: they save a checkpoint and exit
#   launch/tpu_pod.sh delete
#
# Settings (environment): TPU_NAME (required), ZONE (required), PROJECT (default: gcloud's),
# TPU_TYPE (default v4-32), TPU_VERSION (default tpu-ubuntu2204-base), SPOT (0/1).
# Rerunning `run` with the same workdir resumes from its latest checkpoint. Every worker runs
# the same command; ivd_jax/distributed.py calls jax.distributed.initialize(), which finds the
# pod's coordinates itself, and each host feeds its own slice of the global batch.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}"; : "${ZONE:?set ZONE}"
TPU_TYPE=${TPU_TYPE:-v4-32}
TPU_VERSION=${TPU_VERSION:-tpu-ubuntu2204-base}
REMOTE_DIR=${REMOTE_DIR:-ivd_jax}
GCLOUD=(gcloud compute tpus tpu-vm)
COMMON=(--zone="$ZONE")
[ -n "${PROJECT:-}" ] && COMMON+=(--project="$PROJECT")
cd "$(dirname "$0")/.."

ssh_all() { "${GCLOUD[@]}" ssh "$TPU_NAME" "${COMMON[@]}" --worker=all --command="$1"; }

case "${1:-}" in
  create)
    extra=()
    [ "${SPOT:-0}" = 1 ] && extra+=(--spot)
    "${GCLOUD[@]}" create "$TPU_NAME" "${COMMON[@]}" --accelerator-type="$TPU_TYPE" \
      --version="$TPU_VERSION" "${extra[@]}"
    ;;
  setup)
    archive=$(mktemp --suffix=.tar.gz)
    git ls-files -z | tar --null -czf "$archive" -T -
    "${GCLOUD[@]}" scp "$archive" "$TPU_NAME:/tmp/ivd_jax.tar.gz" "${COMMON[@]}" --worker=all
    rm -f "$archive"
    ssh_all "set -e; mkdir -p ~/$REMOTE_DIR && tar -xzf /tmp/ivd_jax.tar.gz -C ~/$REMOTE_DIR && \
      cd ~/$REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip && \
      .venv/bin/pip install -q -r requirements.txt 'jax[tpu]' gcsfs && \
      .venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count())'"
    ;;
  run)
    shift
    if [ $# -lt 2 ]; then echo "usage: $0 run CONFIG WORKDIR [--config.x=y ...]" >&2; exit 2; fi
    config=$1; workdir=$2; shift 2
    args=$(printf ' %q' "$@")
    # nohup + setsid: the run survives the ssh session; each worker logs to its own file.
    ssh_all "cd ~/$REMOTE_DIR && mkdir -p logs && setsid nohup .venv/bin/python -m ivd_jax.main \
      --config=$config --workdir=$workdir$args > logs/worker_\$(hostname).log 2>&1 < /dev/null & \
      echo started on \$(hostname)"
    echo "follow with: $0 logs [WORKER]; TensorBoard: tensorboard --logdir $workdir/tensorboard"
    ;;
  logs)
    "${GCLOUD[@]}" ssh "$TPU_NAME" "${COMMON[@]}" --worker="${2:-0}" \
      --command="tail -n 50 -F ~/$REMOTE_DIR/logs/worker_*.log"
    ;;
  stop)
    ssh_all "pkill -TERM -f '[i]vd_jax.main' || true"
    ;;
  delete)
    "${GCLOUD[@]}" delete "$TPU_NAME" "${COMMON[@]}" --quiet
    ;;
  *)
    sed -n '2,20p' "$0"; exit 2
    ;;
esac
