#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: make it, copy this tree to every worker, install, run the
# same command on every worker (one JAX process per host, jax.distributed over the slice),
# follow per-worker logs, stop with an agreed checkpoint, delete.
#
#   launch/tpu_pod.sh create                  # make the slice, or reuse it when it exists
#   launch/tpu_pod.sh setup                   # copy the working tree, Python 3.11 venv, install
#   launch/tpu_pod.sh run CONFIG WORKDIR [--config.x.y=value ...]
#   launch/tpu_pod.sh status                  # per worker: running / exit code, last log line
#   launch/tpu_pod.sh logs [WORKER|all]       # follow worker 0's (or WORKER's, or every) log
#   launch/tpu_pod.sh stop                    # SIGTERM every worker's run; waits until saved
#   launch/tpu_pod.sh delete
# e.g. launch/tpu_pod.sh run configs/uncond.py:imagenet128 gs://BUCKET/runs/gu \
#        --config.data.dir=gs://BUCKET/data/imagenet128
#
# Settings (environment):
#   TPU_NAME          the slice's name (required)
#   ZONE              its zone (required), e.g. us-central2-b
#   PROJECT           the Google Cloud project (default: gcloud's configured one)
#   ACCELERATOR_TYPE  create: slice type (default v4-32 = 4 hosts; TPU_TYPE is read too)
#   RUNTIME_VERSION   create: VM image (default tpu-ubuntu2204-base; TPU_VERSION is read too)
#   SPOT=1            create: a spot slice (pre-emptible; `run` again resumes)
#   REMOTE_DIR        the code's folder in each worker's home (default ivd_jax)
#   INSTALL=0         setup: copy the code only; REMOTE_PYTHON must already have the deps
#   REMOTE_PYTHON     the workers' interpreter (default REMOTE_DIR/.venv/bin/python)
#   PYTHON_VERSION    setup: Python of the venv (default 3.11; the base image has 3.10, and
#                     jax 0.10 / flax 0.12 / grain / orbax need >= 3.11)
#   EXTRAS            setup: pyproject extras installed (default tpu,gcs: jax[tpu], gcsfs)
#   GCSFUSE_BUCKETS   "b1 b2": setup installs gcsfuse, run mounts each at GCSFUSE_ROOT/<bucket>
#   GCSFUSE_ROOT      (default $HOME/gcs on the workers); point data.dir there
#   STAGE_DATA        gs://... folder that run copies to every worker's STAGE_DIR/<its name>
#   STAGE_DIR         (default /tmp/ivd_jax_data; relative = inside REMOTE_DIR)
#   REMOTE_ENV        "K=V ..." exported on the workers for the run (LIBTPU_INIT_ARGS=...)
#   FOLLOW=0 / LINES  logs: print the last LINES (default 50) lines instead of following
#   STOP_TIMEOUT      stop: seconds to wait for the runs to save and exit (default 900)
#   GCLOUD            the gcloud executable (default gcloud); DRY_RUN=1 prints the calls (stderr)
#
# Every gcloud call goes through gcloud_tpu() below, so these are all of them
# (COMMON = --zone=$ZONE [--project=$PROJECT]; "all" = every worker of the slice):
#   create  gcloud compute tpus tpu-vm describe $TPU_NAME COMMON --format=value(state)
#           gcloud compute tpus tpu-vm create $TPU_NAME COMMON --accelerator-type=...
#                  --version=... [--spot]                                (only when missing)
#   setup   gcloud compute tpus tpu-vm scp ARCHIVE $TPU_NAME:ivd_jax.tar.gz COMMON --worker=all
#           gcloud compute tpus tpu-vm ssh $TPU_NAME COMMON --worker=all --command=SETUP
#   run     gcloud compute tpus tpu-vm ssh $TPU_NAME COMMON --worker=all --command=STAGE
#                  (only with STAGE_DATA or GCSFUSE_BUCKETS: copies / mounts on every worker)
#           gcloud compute tpus tpu-vm ssh $TPU_NAME COMMON --worker=all --command=RUN
#   status  gcloud compute tpus tpu-vm ssh $TPU_NAME COMMON --worker=all --command=STATUS
#   logs    gcloud compute tpus tpu-vm ssh $TPU_NAME COMMON --worker=W|all --command=TAIL
#   stop    gcloud compute tpus tpu-vm ssh $TPU_NAME COMMON --worker=all --command=STOP
#   delete  gcloud compute tpus tpu-vm delete $TPU_NAME COMMON --quiet
# (the workers themselves call `gcloud storage rsync` for STAGE_DATA).
#
# setup copies the working tree (tracked and untracked, not ignored files) and, unless INSTALL=0,
# creates REMOTE_DIR/.venv with uv's managed CPython $PYTHON_VERSION (uv comes from the image's
# python3 -m pip install --user; no apt, so it does not wait on the TPU VM's apt lock) and runs
# pip install -e .[tpu,gcs] in it. run starts `python -m ivd_jax.main` detached on every worker
# with IVD_JAX_DISTRIBUTED=1: ivd_jax.parallel then calls jax.distributed.initialize(), which finds
# the slice's workers on the metadata server. Logs: REMOTE_DIR/logs/run_<time>_worker<N>.log on
# each worker (logs/latest.log links the newest); the pid is in logs/run.pid, the exit code in
# logs/run.exit. WORKDIR must be shared by all workers (gs://... or a mounted bucket). Running
# `run` again with the same WORKDIR resumes from its latest checkpoint; stop (or a spot VM's
# pre-emption) makes every worker save the same step and exit.
set -euo pipefail
case "${1:-}" in
  create|setup|run|status|logs|stop|delete) ;;
  *) sed -n '2,63p' "$0"; exit 2 ;;
esac
: "${TPU_NAME:?set TPU_NAME}"; : "${ZONE:?set ZONE}"
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-${TPU_TYPE:-v4-32}}
RUNTIME_VERSION=${RUNTIME_VERSION:-${TPU_VERSION:-tpu-ubuntu2204-base}}
REMOTE_DIR=${REMOTE_DIR:-ivd_jax}
REMOTE_PYTHON=${REMOTE_PYTHON:-.venv/bin/python}
PYTHON_VERSION=${PYTHON_VERSION:-3.11}
EXTRAS=${EXTRAS:-tpu,gcs}
GCSFUSE_ROOT=${GCSFUSE_ROOT:-\$HOME/gcs}
STAGE_DIR=${STAGE_DIR:-/tmp/ivd_jax_data}
COMMON=(--zone="$ZONE")
if [ -n "${PROJECT:-}" ]; then COMMON+=(--project="$PROJECT"); fi
cd "$(dirname "$0")/.."

# The one place gcloud is called.
gcloud_tpu() {
  local call=("${GCLOUD:-gcloud}" compute tpus tpu-vm "$@")
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${call[@]}" >&2; echo >&2; return 0; fi
  "${call[@]}"
}
ssh_workers() {  # ssh_workers WORKER COMMAND: COMMAND in bash on the worker(s), from the code dir
  gcloud_tpu ssh "$TPU_NAME" "${COMMON[@]}" --worker="$1" --command="$PRELUDE $2"
}
q() { printf '%q' "$1"; }

# Every remote command starts here: the code folder and this worker's number (TPU_WORKER_ID where
# the environment has it, else the metadata server's agent-worker-number, else the hostname).
PRELUDE="cd ~/$REMOTE_DIR 2>/dev/null || { echo \"no ~/$REMOTE_DIR: run setup first\" >&2; exit 1; };
W=\${TPU_WORKER_ID:-\$(curl -sf -m 2 -H 'Metadata-Flavor: Google' \
http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number \
2>/dev/null || hostname)};"
ALIVE='[ -f logs/run.pid ] && kill -0 "$(cat logs/run.pid)" 2>/dev/null'

case "${1:-}" in
  create)
    describe=(describe "$TPU_NAME" "${COMMON[@]}" --format='value(state)')
    if [ "${DRY_RUN:-0}" = 1 ]; then
      gcloud_tpu "${describe[@]}"
    elif state=$(gcloud_tpu "${describe[@]}" 2>/dev/null); then
      echo "reusing $TPU_NAME ($state)"; exit 0
    fi
    extra=()
    if [ "${SPOT:-0}" = 1 ]; then extra+=(--spot); fi
    gcloud_tpu create "$TPU_NAME" "${COMMON[@]}" --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$RUNTIME_VERSION" ${extra[@]+"${extra[@]}"}
    ;;

  setup)
    archive=$(mktemp --suffix=.tar.gz)
    trap 'rm -f "$archive"' EXIT
    git ls-files -z --cached --others --exclude-standard |
      tar --null --ignore-failed-read -czf "$archive" -T - 2>/dev/null
    gcloud_tpu scp "$archive" "$TPU_NAME:ivd_jax.tar.gz" "${COMMON[@]}" --worker=all
    install=""
    if [ "${INSTALL:-1}" = 1 ]; then
      install="export PATH=\$HOME/.local/bin:\$HOME/.cargo/bin:\$PATH;
        command -v uv >/dev/null || python3 -m pip install --user -q uv ||
          curl -LsSf https://astral.sh/uv/install.sh | sh;
        .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
          { rm -rf .venv; uv venv -q --seed --python $(q "$PYTHON_VERSION") .venv; };
        uv pip install -q --python .venv/bin/python -e $(q ".[$EXTRAS]");"
    fi
    fuse=""
    if [ -n "${GCSFUSE_BUCKETS:-}" ]; then
      fuse="command -v gcsfuse >/dev/null || { export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s);
        echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" |
          sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null;
        curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null;
        sudo apt-get update -q && sudo apt-get install -y -q gcsfuse; };"
    fi
    # Replace the code but keep the venv, logs and staged data of earlier setups.
    gcloud_tpu ssh "$TPU_NAME" "${COMMON[@]}" --worker=all --command="set -e;
      mkdir -p ~/$REMOTE_DIR && cd ~/$REMOTE_DIR;
      if $ALIVE; then echo 'a run is going here: stop it first' >&2; exit 1; fi;
      find . -mindepth 1 -maxdepth 1 ! -name .venv ! -name logs ! -name staged -exec rm -rf {} +;
      tar -xzf ~/ivd_jax.tar.gz && rm -f ~/ivd_jax.tar.gz;
      $install $fuse
      $(q "$REMOTE_PYTHON") -c 'import sys, jax, ivd_jax
assert sys.version_info >= (3, 11), sys.version
print(\"ready:\", sys.version.split()[0], \"jax\", jax.__version__, ivd_jax.__file__)'"
    ;;

  run)
    shift
    if [ $# -lt 2 ]; then echo "usage: $0 run CONFIG WORKDIR [--config.x=y ...]" >&2; exit 2; fi
    case "$2" in
      gs://*|/*) ;;
      *) echo "warning: WORKDIR $2 is relative: each worker would write its own" >&2 ;;
    esac
    # Every argument quoted on its own: no empty argument when there are no overrides.
    args=""
    for a in "$@"; do args+=" $(q "$a")"; done
    stamp=$(date +%Y%m%d-%H%M%S)
    prepare=""
    if [ -n "${STAGE_DATA:-}" ]; then
      dest="$STAGE_DIR/$(basename "${STAGE_DATA%/}")"
      prepare+="mkdir -p $(q "$dest") && gcloud storage rsync --recursive $(q "$STAGE_DATA") $(q "$dest") &&
        echo \"worker \$W: staged $(q "$STAGE_DATA") in $(q "$dest")\" || exit 1;"
    fi
    for b in ${GCSFUSE_BUCKETS:-}; do
      prepare+="mkdir -p $GCSFUSE_ROOT/$b; mountpoint -q $GCSFUSE_ROOT/$b ||
        gcsfuse --implicit-dirs $(q "$b") $GCSFUSE_ROOT/$b || exit 1;"
    done
    envs="export IVD_JAX_DISTRIBUTED=1;"
    for kv in ${REMOTE_ENV:-}; do envs+=" export $(q "$kv");"; done
    # Detached from the ssh session (setsid nohup); the inner shell records pid and exit code.
    inner="$(q "$REMOTE_PYTHON") -m ivd_jax.main --config=\"\$0\" --workdir=\"\$1\" \"\${@:2}\" &
      echo \$! > logs/run.pid; wait \$!; echo \$? > logs/run.exit"
    busy="mkdir -p logs; if $ALIVE; then
      echo \"worker \$W: a run is going (pid \$(cat logs/run.pid)): stop it first\" >&2; exit 1; fi;"
    # Staging and mounts finish on every worker before any starts (jax.distributed.initialize
    # waits 5 minutes for the others).
    if [ -n "$prepare" ]; then ssh_workers all "$busy $prepare"; fi
    ssh_workers all "$busy rm -f logs/run.exit; $envs
      log=logs/run_${stamp}_worker\$W.log; ln -sfn \${log#logs/} logs/latest.log;
      setsid nohup bash -c $(q "$inner")$args > \$log 2>&1 < /dev/null &
      echo \"worker \$W: started, log ~/$REMOTE_DIR/\$log\""
    echo "status: $0 status; logs: $0 logs [WORKER|all]; stop: $0 stop; TensorBoard: tensorboard --logdir $2/tensorboard"
    ;;

  status)
    ssh_workers all "if $ALIVE; then s=\"running (pid \$(cat logs/run.pid))\";
      elif [ -f logs/run.exit ]; then s=\"exited \$(cat logs/run.exit)\"; else s='no run'; fi;
      echo \"worker \$W: \$s | \$(tail -n 1 logs/latest.log 2>/dev/null)\""
    ;;

  logs)
    worker=${2:-0}
    follow=-F
    if [ "${FOLLOW:-1}" = 0 ]; then follow=""; fi
    ssh_workers "$worker" "tail -n ${LINES:-50} $follow logs/latest.log | sed -u \"s/^/[worker \$W] /\""
    ;;

  stop)
    # The trainers agree on one step, save it and exit; wait for that (STOP_TIMEOUT seconds).
    ssh_workers all "if ! $ALIVE; then echo \"worker \$W: no run\"; exit 0; fi;
      pid=\$(cat logs/run.pid); kill -TERM \$pid; echo \"worker \$W: SIGTERM to \$pid\";
      for ((i = 0; i < ${STOP_TIMEOUT:-900} * 2; i++)); do kill -0 \$pid 2>/dev/null || break; sleep 0.5; done;
      if kill -0 \$pid 2>/dev/null; then echo \"worker \$W: still running\" >&2; exit 1; fi;
      for ((i = 0; i < 20; i++)); do [ -f logs/run.exit ] && break; sleep 0.25; done;
      echo \"worker \$W: exited \$(cat logs/run.exit 2>/dev/null)\""
    ;;

  delete)
    gcloud_tpu delete "$TPU_NAME" "${COMMON[@]}" --quiet
    ;;

esac
