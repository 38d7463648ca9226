#!/usr/bin/env bash
# ShapesWorld v2 training on one GPU, in device calls of at most 9 minutes that resume across calls and machines.
#
# Each call starts from a model folder (fp16 EMA weights, ~14 MB): the previous call's result when one is carried
# in as $PREV (default runs/gpu_v2/prev), else the shipped v1 model. It trains on v2 scenes with the fast path
# (bf16 autocast with fp32 norms/loss, torch.compile, fused AdamW, scenes rendered and kept on the GPU, batch
# $BATCH with the learning rate scaled by sqrt(batch / 256)), tracks object / sky+ground AUROC of the EMA weights on
# 16 v2 `test` scenes at every checkpoint, and writes to $OUT:
#   $OUT/pipeline/       the model folder to carry into the next call (copy it to runs/gpu_v2/prev) or to ship
#   $OUT/train.log       the trainer's output; $OUT/pipeline/train_log.json has steps, samples/s, checkpoint AUROCs
#   $OUT/nvidia-smi.txt  the GPU
# The full checkpoint (fp32 weights + AdamW moments) stays on the machine: it is lost between calls. What a new
# call loses is listed in docs/shapesworld.md §3 (optimizer moments, fp32 master weights, EMA history, warm-up).
#
# Modes:
#   bash scripts/gpu_train_v2.sh              train (MINUTES, default 7.5, of the call's 9)
#   bash scripts/gpu_train_v2.sh --bench      samples/s before/after on the same GPU: the shipped trainer's settings
#                                             (fp32/TF32, batch 256, no compile) then the fast path, 1.5 min each
#   bash scripts/gpu_train_v2.sh --dry-run    CPU, 2 steps, torch.compile with the eager backend: checks the script
#                                             end to end without a GPU (tests/shapesworld/test_gpu_script.py)
set -euo pipefail

MODE=train
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --bench) MODE=bench ;;
  "") ;;
  *) echo "usage: $0 [--dry-run | --bench]" >&2; exit 2 ;;
esac

OUT=${OUT:-runs/gpu_v2_out}
PREV=${PREV:-runs/gpu_v2/prev}
SHIPPED=src/conceptattention/assets/shapesworld
MINUTES=${MINUTES:-7.5}
BATCH=${BATCH:-1024}
WORK=${WORK:-$(mktemp -d /tmp/shapesworld_v2.XXXXXX)}
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

INIT=$SHIPPED
if [[ -f "$PREV/shapesworld.json" ]]; then INIT=$PREV; fi
echo "[gpu_train_v2] mode=$MODE init=$INIT out=$OUT work=$WORK" | tee "$OUT/train.log"

train() {  # train RUN_FOLDER ARGS...
  local run=$1; shift
  "$PY" -m conceptattention.shapesworld.train --out "$run" --init-from "$INIT" --data-version v2 "$@" 2>&1 \
    | tee -a "$OUT/train.log"
}

case $MODE in
  dry)
    train "$WORK/run" --device cpu --minutes 2 --max-steps 2 --batch-size 4 --bank-size 64 --sample-steps 2 \
      --threads 1 --precision bf16 --compile --compile-backend eager --lr-scaling sqrt --checkpoint-eval-scenes 1
    cp -r "$WORK/run/pipeline" "$OUT/pipeline"
    ;;
  bench)
    nvidia-smi > "$OUT/nvidia-smi.txt" || true
    train "$WORK/before" --device cuda --minutes 1.5 --batch-size 256 --eval-captions 0 --bank-size 100000
    train "$WORK/after" --device cuda --minutes 1.5 --batch-size "$BATCH" --eval-captions 0 --bank-size 100000 \
      --precision bf16 --compile --lr-scaling sqrt
    mkdir -p "$OUT/before" "$OUT/after"
    cp "$WORK/before/pipeline/train_log.json" "$OUT/before/"
    cp "$WORK/after/pipeline/train_log.json" "$OUT/after/"
    ;;
  train)
    nvidia-smi > "$OUT/nvidia-smi.txt" || true
    train "$WORK/run" --device cuda --minutes "$MINUTES" --batch-size "$BATCH" --bank-size 200000 --eval-captions 0 \
      --precision bf16 --compile --lr-scaling sqrt --checkpoint-eval-scenes 16 --checkpoint-minutes 2
    cp -r "$WORK/run/pipeline" "$OUT/pipeline"
    ;;
esac
echo "[gpu_train_v2] done: $OUT/pipeline" | tee -a "$OUT/train.log"
