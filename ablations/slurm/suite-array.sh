#!/usr/bin/env bash
# Split one suite over a SLURM job array, one shard per array task, no coordination needed. Submit it
# from the repository root (sbatch runs a copy of this script from its spool, and each task starts
# in the directory it was submitted from):
#   sbatch --array=1-8 ablations/slurm/suite-array.sh ablations/quickstart.yaml
# sbatch passes your environment on; two variables are read:
#   VENV  the virtualenv to activate (default: .venv, the one `make install` creates)
#   OUT   the results root every task writes to, on a filesystem all nodes share (default: results)
#   OUT=/shared/results sbatch --array=1-8 ablations/slurm/suite-array.sh ablations/quickstart.yaml
# Every task trains the runs of its shard (`--shard I/N`); a rerun of the array skips finished runs
# and resumes interrupted ones from their checkpoints. Further arguments go to `harness run`
# (`--dry-run` lists each shard's runs and trains nothing). Write the report once all tasks are done:
#   harness report ablations/quickstart.yaml --results "$OUT"
#SBATCH --job-name=harness-suite
#SBATCH --cpus-per-task=8
#SBATCH --gres=gpu:1
#SBATCH --time=24:00:00
#SBATCH --requeue
set -euo pipefail
SUITE=${1:?usage: sbatch --array=1-N suite-array.sh SUITE.yaml [harness run options]}
shift
SHARD="${SLURM_ARRAY_TASK_ID:?run as an array job}/${SLURM_ARRAY_TASK_COUNT:?run as an array job}"
cd "${SLURM_SUBMIT_DIR:-.}"
VENV=${VENV:-.venv}
OUT=${OUT:-results}
if [[ ! -f "$VENV/bin/activate" ]]; then
    echo "suite-array.sh: no virtualenv at $VENV (run \`make install\` in $PWD, or set VENV)" >&2
    exit 2
fi
set +u  # activate scripts of some virtualenv versions read unset variables
# shellcheck disable=SC1091
source "$VENV/bin/activate"
set -u
exec harness run "$SUITE" --out "$OUT" --shard "$SHARD" --no-report --no-progress "$@"
