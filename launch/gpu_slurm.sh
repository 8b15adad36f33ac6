#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one JAX process per GPU, coordinates from SLURM.
#
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 --cpus-per-task=8 \
#       launch/gpu_slurm.sh configs/uncond.py:imagenet128 /shared/runs/gu_imagenet \
#       --config.data.dir=/shared/data/imagenet128
#
# The working tree must be on a filesystem every node sees (or copied there), with a venv made by
#   python3 -m venv .venv && .venv/bin/pip install -e '.[cuda,gcs]'
# WORKDIR must be shared too (NFS/Lustre or a gs:// bucket): orbax writes one checkpoint from all
# processes. Inside `srun` each task has SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and the node list,
# from which jax.distributed.initialize() (called by ivd_jax/parallel.py in an srun step with
# SLURM_NTASKS > 1) finds the coordinator and binds each process to its local GPU.
# Settings (environment): PYTHON (default .venv/bin/python), LOG_DIR (per-task logs <task>.log;
# default WORKDIR/logs, or ./logs/<job name>_<job id> when WORKDIR is a gs:// bucket, which
# neither mkdir nor srun --output can write), XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.9).
# The script exits with the job step's own exit status. Resubmitting the same command resumes
# from the latest checkpoint; `scancel --signal=TERM` (or SLURM's pre-emption, --signal below)
# makes the run save one agreed step and exit cleanly.
#SBATCH --job-name=ivd_jax
#SBATCH --output=ivd_jax_%j.out
#SBATCH --signal=B:TERM@120
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,19p' "$0"; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PY=${PYTHON:-$PWD/.venv/bin/python}
case "$WORKDIR" in
  gs://*) LOG_DIR=${LOG_DIR:-$PWD/logs/${SLURM_JOB_NAME:-ivd_jax}_${SLURM_JOB_ID:-$$}} ;;
  *) LOG_DIR=${LOG_DIR:-$WORKDIR/logs} ;;
esac
mkdir -p "$LOG_DIR"
echo "logs: $LOG_DIR/<task>.log"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
# One task per GPU; each task sees all GPUs of its node and JAX picks SLURM_LOCALID's.
srun --kill-on-bad-exit=1 --output="$LOG_DIR/%t.log" \
  "$PY" -m ivd_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" &
SRUN=$!
# SLURM signals the batch shell before the time limit / on pre-emption: pass it to the tasks,
# which save a checkpoint and exit. A trapped signal interrupts `wait` (status > 128), so wait
# again for the step's real status; a plain failure is returned as it is.
signalled=0
trap 'signalled=1; kill -TERM "$SRUN" 2>/dev/null || true' TERM INT
status=0
wait "$SRUN" || status=$?
while [ "$signalled" = 1 ]; do
  signalled=0; s=0
  wait "$SRUN" || s=$?
  if [ "$s" != 127 ]; then status=$s; fi  # 127: already reaped by the first wait
done
exit "$status"
