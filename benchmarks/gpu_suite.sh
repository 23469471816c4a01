#!/usr/bin/env bash
# The GPU suite of the Triton kernels, one command on a machine with a CUDA GPU:
#
#     bash benchmarks/gpu_suite.sh            # tests + full benchmark
#     bash benchmarks/gpu_suite.sh --quick    # tests + a short benchmark
#
# Needs the package installed against a CUDA build of torch, with triton
# (`pip install -e ".[test]" --no-build-isolation`). Steps:
#   1. the Triton test files on CUDA tensors (the interpreter cases skip: with a
#      GPU, tests/conftest.py leaves TRITON_INTERPRET unset); the log goes to
#      benchmarks/results/triton_gpu_tests_<machine>.txt
#   2. benchmarks/benchmark_triton_gpu.py (extra arguments are passed to it):
#      benchmarks/results/triton_gpu_<machine>.csv and ..._summary.md
# Exits non-zero when a test failed (after the benchmark has run anyway).
set -uo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET  # compiled kernels, not the interpreter

python - <<'PY' || exit 1
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_suite.sh: torch sees no CUDA device (torch %s, CUDA build: %s)" % (torch.__version__, torch.version.cuda))
import triton, mlkd_fast  # noqa: F401  (fails loudly when not installed)
PY
machine=$(python -c "import sys; sys.path.insert(0, 'benchmarks'); import harness; print(harness.machine_kind('cuda'))")
mkdir -p benchmarks/results
log="benchmarks/results/triton_gpu_tests_${machine}.txt"

echo "== 1/2 GPU tests (log: $log)"
python -m pytest -q -rs tests/test_relation_kl_triton.py tests/test_sample_contrastive_triton.py 2>&1 | tee "$log"
tests_rc=${PIPESTATUS[0]}

echo "== 2/2 benchmark"
python benchmarks/benchmark_triton_gpu.py "$@"
bench_rc=$?

echo "tests exit code: $tests_rc, benchmark exit code: $bench_rc"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
