#!/usr/bin/env bash
# Does general distillation help a student that cannot be copied from the teacher? A 4-layer x 312 student
# (random init; layers mapped to teacher layers 2, 3, 5, 6) is general-distilled from the pretrained
# all-MiniLM-L6-v2 on the GLUE sentences (benchmarks/general/glue_sentences.py), then distilled on MRPC with
# MLKD at the quality benchmark's budget; the same student without general distillation is the baseline.
# Both rows go to the quality CSV (never rerun); the general-distilled student is kept in runs/general/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error OMP_WAIT_POLICY=PASSIVE
PY=${PYTHON:-.venv/bin/python}
GD_STEPS=${GD_STEPS:-440}   # one pass over the packed GLUE sentences at batch 32, length 128
SHAPE="--student-layers 4 --student-hidden 312 --student-intermediate 1200"
[ -f runs/general/glue_sentences.txt ] || $PY benchmarks/general/glue_sentences.py
if [ ! -f runs/general/gd_4L312/student/config.json ] || [ ! -f runs/general/gd_4L312/history.json ]; then
    resume=""; [ -f runs/general/gd_4L312/checkpoint/state.pt ] && resume="--resume"
    $PY -m mlkd_fast general-distill --corpus runs/general/glue_sentences.txt --output-dir runs/general/gd_4L312 \
        $SHAPE --student-heads 12 --init random --layer-map 2,3,5,6 --max-steps "$GD_STEPS" --epochs 1 \
        --batch-size 32 --learning-rate 1e-4 --max-seq-length 128 --seed 42 --checkpoint-every 50 --no-progress $resume \
        > runs/general/gd_4L312.log 2>&1
fi
$PY benchmarks/quality/run.py --task mrpc --objective mlkd --heads 12 --seed 42 --variant mlkd-4L312-random \
    $SHAPE --init random --set "layer_map=[2,3,5,6]"
$PY benchmarks/quality/run.py --task mrpc --objective mlkd --heads 12 --seed 42 --variant mlkd-4L312-general \
    --student-dir runs/general/gd_4L312/student --set "layer_map=[2,3,5,6]"
