#!/usr/bin/env bash
# Start one distill-lab training worker on this machine: a Prefect process worker on a work pool
# that runs the study-run flow runs of studies with `executor: pool` (and any other deployment
# on that pool), one at a time. Start one per GPU (CUDA_VISIBLE_DEVICES) or per machine.
#
#   infra/worker.sh [POOL]                    # POOL default distill-pool
#   CUDA_VISIBLE_DEVICES=1 WORKER_NAME=gpu-box-1 infra/worker.sh distill-pool
#
# Needs (infra/README.md, "A study over many machines"):
#   PREFECT_API_URL         the team's Prefect server, e.g. http://prefect.internal:4200/api
#   MLFLOW_TRACKING_URI     the team's MLflow server (not a SQLite file: other machines write too)
#   DISTILL_LAB_STORE_URL   the rollout store, postgresql+psycopg://USER@HOST:5432/DB_store
#   DISTILL_LAB_ARTIFACTS   the artifact folder on storage every worker and the study share,
#                           mounted at the same path on every machine
# Optional: PYTHON (default python; the project's environment), WORKER_NAME (default
# <host>-<CUDA_VISIBLE_DEVICES or cpu>), WORKER_LIMIT (flow runs at once, default 1: each run
# trains on the whole GPU or CPU it is given).
set -euo pipefail

POOL="${1:-distill-pool}"
PYTHON="${PYTHON:-python}"
for name in PREFECT_API_URL MLFLOW_TRACKING_URI DISTILL_LAB_STORE_URL DISTILL_LAB_ARTIFACTS; do
    if [ -z "${!name:-}" ]; then
        echo "worker.sh: $name is not set; see infra/README.md (A study over many machines)" >&2
        exit 2
    fi
done
if [ ! -d "$DISTILL_LAB_ARTIFACTS" ] || [ ! -w "$DISTILL_LAB_ARTIFACTS" ]; then
    echo "worker.sh: DISTILL_LAB_ARTIFACTS=$DISTILL_LAB_ARTIFACTS is not a writable folder here;" \
         "mount the shared artifact storage at that path first" >&2
    exit 2
fi
# The worker imports flows.study_run from this environment: say which code it runs, the
# version the study compares with its own before a run starts.
code_version=$("$PYTHON" -c "from tasks.plan import code_identity; print(code_identity())") || {
    echo "worker.sh: $PYTHON cannot import the project (pip install -e . or set PYTHONPATH" \
         "to the checkout)" >&2
    exit 2
}
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
NAME="${WORKER_NAME:-$(hostname)-${CUDA_VISIBLE_DEVICES:-cpu}}"
echo "worker $NAME on pool $POOL: code version $code_version, artifacts $DISTILL_LAB_ARTIFACTS," \
     "Prefect $PREFECT_API_URL, MLflow $MLFLOW_TRACKING_URI"
exec "$PYTHON" -m prefect worker start --pool "$POOL" --type process \
    --limit "${WORKER_LIMIT:-1}" --name "$NAME"
