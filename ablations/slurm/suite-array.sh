#!/usr/bin/env bash
# Split one suite over a SLURM job array, one shard per array task, no coordination needed:
#   sbatch --array=1-8 ablations/slurm/suite-array.sh ablations/quickstart.yaml
# Every task trains the runs of its shard (`--shard I/N`); a rerun of the array skips finished runs
# and resumes interrupted ones from their checkpoints. Results land in the shared --out directory;
# write the report once all tasks are done:  harness report ablations/quickstart.yaml
#SBATCH --job-name=harness-suite
#SBATCH --cpus-per-task=8
#SBATCH --gres=gpu:1
#SBATCH --time=24:00:00
#SBATCH --requeue
set -euo pipefail
SUITE=${1:?usage: sbatch --array=1-N suite-array.sh SUITE.yaml [harness run options]}
shift
SHARD="${SLURM_ARRAY_TASK_ID:?run as an array job}/${SLURM_ARRAY_TASK_COUNT:?run as an array job}"
exec harness run "$SUITE" --shard "$SHARD" --no-report --no-progress "$@"
