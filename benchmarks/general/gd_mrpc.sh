#!/usr/bin/env bash
# Does general distillation give a better start point? A student is general-distilled from the pretrained
# all-MiniLM-L6-v2 on the GLUE sentences (benchmarks/general/glue_sentences.py: train and test files, no dev,
# no labels), then distilled on MRPC with MLKD at the quality benchmark's budget; its row is compared with
# the same student started without general distillation. Both rows go to the quality CSV (never rerun);
# the general-distilled students stay in runs/general/.
#   bash benchmarks/general/gd_mrpc.sh 4L312    # 4 layers x 312, random init, teacher layers 2, 3, 5, 6
#   bash benchmarks/general/gd_mrpc.sh 3L384h4  # 3 layers x 384 with 4 heads, pretrained layers 2, 4, 6 re-split
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error OMP_WAIT_POLICY=PASSIVE
PY=${PYTHON:-.venv/bin/python}
GD_STEPS=${GD_STEPS:-440}   # one pass over the packed GLUE sentences at batch 32, length 128
CASE=${1:?usage: gd_mrpc.sh 4L312|3L384h4}
case "$CASE" in
    4L312) SHAPE="--student-layers 4 --student-hidden 312 --student-intermediate 1200"; HEADS=12
           GD_ARGS="$SHAPE --student-heads 12 --init random --layer-map 2,3,5,6"; MAP='--set layer_map=[2,3,5,6]'
           BASELINE="$SHAPE --init random" ;;
    3L384h4) HEADS=4; GD_ARGS="--student-layers 3 --student-heads 4 --init teacher"; MAP=""
           BASELINE="" ;;  # the baseline is the mrpc.queue row "mlkd, 4 heads" (copied from the fine-tuned teacher)
    *) echo "unknown case $CASE" >&2; exit 2 ;;
esac
OUT=runs/general/gd_$CASE
[ -f runs/general/glue_sentences.txt ] || $PY benchmarks/general/glue_sentences.py
if [ ! -f "$OUT/history.json" ]; then
    resume=""; [ -f "$OUT/checkpoint/state.pt" ] && resume="--resume"
    # shellcheck disable=SC2086
    $PY -m mlkd_fast general-distill --corpus runs/general/glue_sentences.txt --output-dir "$OUT" $GD_ARGS \
        --max-steps "$GD_STEPS" --epochs 1 --batch-size 32 --learning-rate 1e-4 --max-seq-length 128 --seed 42 \
        --checkpoint-every 50 --no-progress $resume > "$OUT.log" 2>&1
fi
if [ -n "$BASELINE" ]; then
    # shellcheck disable=SC2086
    $PY benchmarks/quality/run.py --task mrpc --objective mlkd --heads $HEADS --seed 42 --variant "mlkd-$CASE-random" \
        $BASELINE $MAP
fi
# shellcheck disable=SC2086
$PY benchmarks/quality/run.py --task mrpc --objective mlkd --heads $HEADS --seed 42 --variant "mlkd-$CASE-general" \
    --student-dir "$OUT/student" $MAP
