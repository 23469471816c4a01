#!/usr/bin/env bash
# Run quality rows one after another (one process at a time: two would halve each other's speed on 2 cores).
# Each line of the queue file is the arguments of one benchmarks/quality/run.py call; rows already in the
# results CSV are skipped by run.py itself, so the queue can be rerun after an interruption.
# Usage: bash benchmarks/quality/queue.sh QUEUE_FILE [LOG_DIR]
set -uo pipefail
cd "$(dirname "$0")/../.."
QUEUE=${1:?usage: queue.sh QUEUE_FILE [LOG_DIR]}
LOGS=${2:-runs/quality/logs}
mkdir -p "$LOGS"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error OMP_WAIT_POLICY=PASSIVE
PY=${PYTHON:-.venv/bin/python}
status=0
while read -r line; do
    case "$line" in ''|'#'*) continue ;; esac
    name=$(echo "$line" | tr -c 'A-Za-z0-9.=_-' '_')
    echo "[queue] $(date +%H:%M:%S) $line"
    # shellcheck disable=SC2086
    if ! $PY benchmarks/quality/run.py $line > "$LOGS/$name.log" 2>&1; then
        echo "[queue] FAILED: $line (log: $LOGS/$name.log)"
        status=1
    fi
done < "$QUEUE"
echo "[queue] $(date +%H:%M:%S) done"
exit $status
