#!/usr/bin/env bash
# Every benchmark, then the plots and tables, on this machine's CPU:
#     bash benchmarks/run_all.sh            # default sizes (each script < 10 min on 2 cores), CSV/PNG in benchmarks/results/
#     bash benchmarks/run_all.sh --quick    # smoke run of seconds (CI), outputs in $TMPDIR/mlkd_fast_bench_quick/
# Extra arguments go to every benchmark script (e.g. --device cuda, --threads 2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
# With OpenMP's default spin-waiting, 2 torch threads run up to 30x slower as soon as another
# process takes a core (measured here: a 4L-312 forward, 21 ms -> 620 ms); passive waiting
# costs little on a quiet machine and keeps shared-machine numbers meaningful. Override by
# exporting OMP_WAIT_POLICY=ACTIVE on a dedicated machine; every CSV row records the policy.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
OUT=benchmarks/results
for a in "$@"; do
    if [ "$a" = "--quick" ]; then OUT=$("$PY" -c "import tempfile, os; print(os.path.join(tempfile.gettempdir(), 'mlkd_fast_bench_quick'))"); fi
done
for b in relation_kl sample_relation_kl sample_contrastive heads_latency e2e recipe cache_reuse; do
    start=$(date +%s)
    "$PY" benchmarks/benchmark_$b.py "$@"
    echo "benchmark_$b.py: $(( $(date +%s) - start )) s"
done
"$PY" benchmarks/plot.py --dir "$OUT"
