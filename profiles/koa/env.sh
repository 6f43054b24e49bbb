# Source this on KOA before running the workflow (login node or controller job):
#   source profiles/koa/env.sh
# Puts the caches on scratch (home is 50 GB; scratch is purged after 90 days unmodified), and loads Python.
# Set KOAML_SCRATCH to use another folder, SLURM_ACCOUNT to your allocation (see `sacctmgr show assoc user=$USER`).
if command -v module >/dev/null 2>&1; then
  module load lang/Python/3.11.5-GCCcore-13.2.0 2>/dev/null || true
fi
export KOAML_SCRATCH=${KOAML_SCRATCH:-/mnt/lustre/koa/scratch/$USER}
export HF_HOME=${HF_HOME:-$KOAML_SCRATCH/hf}
export TMPDIR=${TMPDIR_KOAML:-$KOAML_SCRATCH/tmp}
export PIP_CACHE_DIR=$KOAML_SCRATCH/pip-cache
export TOKENIZERS_PARALLELISM=false
mkdir -p "$HF_HOME" "$TMPDIR" "$PIP_CACHE_DIR"
# Compute nodes have no internet: jobs read the cache that `snakemake fetch` filled on the login node.
# (fetch itself must run without these two: `env -u HF_HUB_OFFLINE -u HF_DATASETS_OFFLINE snakemake ... fetch`.)
export HF_HUB_OFFLINE=1
export HF_DATASETS_OFFLINE=1
if [ -z "${SLURM_ACCOUNT:-}" ]; then
  echo "koa-ml: set SLURM_ACCOUNT to your allocation, e.g. export SLURM_ACCOUNT=<account>" >&2
fi
