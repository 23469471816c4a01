#!/usr/bin/env bash
# The test command (README "Tests"): the whole suite, CPU only. Triton kernels
# run under the Triton interpreter (TRITON_INTERPRET=1 is set by their tests'
# subprocess-free fixture in tests/conftest.py); GPU tests skip visibly.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q -rs tests "$@"
