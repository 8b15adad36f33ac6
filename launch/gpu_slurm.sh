#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one JAX process per GPU, coordinates from SLURM.
#
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 --cpus-per-task=8 \
#       launch/gpu_slurm.sh configs/uncond.py:imagenet128 /shared/runs/gu_imagenet \
#       --config.data.dir=/shared/data/imagenet128
#
# The working tree must be on a filesystem every node sees (or copied there), with a venv made by
#   python3 -m venv .venv && .venv/bin/pip install -r requirements.txt 'jax[cuda12]'
# WORKDIR must be shared too (NFS/Lustre or a bucket): orbax writes one checkpoint from all
# processes. Inside `srun` each task has SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID and the node list,
# from which jax.distributed.initialize() (called by ivd_jax/distributed.py when SLURM_NTASKS > 1)
# finds the coordinator and binds each process to its local GPU. Logs: WORKDIR/logs/<task>.log
# plus the SLURM output file. Resubmitting the same command resumes from the latest checkpoint;
# `scancel --signal=TERM` (or SLURM's pre-emption) makes the run save and exit cleanly.
#SBATCH --job-name=ivd_jax
#SBATCH --output=ivd_jax_%j.out
#SBATCH --signal=B:TERM@120
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,16p' "$0"; exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PY=${PYTHON:-$PWD/.venv/bin/python}
mkdir -p "$WORKDIR/logs"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
# One task per GPU; each task sees all GPUs of its node and JAX picks SLURM_LOCALID's.
srun --kill-on-bad-exit=1 --output="$WORKDIR/logs/%t.log" \
  "$PY" -m ivd_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" &
SRUN=$!
# SLURM signals the batch shell before the time limit / on pre-emption: pass it to the tasks,
# which save a checkpoint and exit.
trap 'kill -TERM $SRUN 2>/dev/null' TERM INT
wait $SRUN || wait $SRUN
