#!/usr/bin/env bash
# Issue 12 benchmarks on one GPU in one device call of at most 9 minutes: ConceptAttention's overhead per family at
# full size (random bf16 weights, released configs), eager and compiled, and the explain path's throughput.
#
# Runs benchmarks/overhead.py once per (family, compilation), in this order (by value), each under its own timeout
# and all under one budget (BUDGET_S, default 500 s), so that a slow family cannot eat the rest; a run that no longer
# fits is skipped and said so:
#   1. FLUX.1-schnell eager (--profile, --throughput: explain images/s at 512² and 1024², 4 noise samples,
#      1 vs 4 images per forward)     2. FLUX.1-schnell regional compile (compile_repeated_blocks, full forward)
#   3. FLUX.1-dev eager               4. SD3.5-large eager (CFG batch 2)     5. CogVideoX-5B eager (49×480×720, CFG)
#   6. Qwen-Image eager               7. if time is left: FLUX.1-schnell whole-model compile, SD3.5-large and
#                                        Qwen-Image regional compile
# Compiled runs time the full forward only: the explain path's early exit recompiles per block under torch.compile
# (docs/benchmarks.md, "next steps").
#
# Writes to $OUT (at most 8 files come back from a device call): bench.json (every run's JSON, a list), table.md
# (benchmarks/benchmark_table.py: the docs table with GPU, versions and commands), log.txt (every run's output),
# nvidia-smi.txt. Both are rewritten after every run, so a call cut short still brings back what finished.
#
# The GPU session runs it as one device call (about 9 minutes of command, 11 of device time with the start):
#   bash scripts/gpu_bench.sh --fetch-wheels        # here, once
#   run(command="bash scripts/gpu_bench.sh", carry=[".whl"], timeout_s=570)
# then copies table.md into docs/benchmarks.md.
#
# Modes:
#   bash scripts/gpu_bench.sh                 on the GPU machine (diffusers is installed from .whl/ if missing)
#   bash scripts/gpu_bench.sh --fetch-wheels  here, before the device call: diffusers 0.42.1 (+ importlib_metadata)
#                                             into .whl/ (ignored by git; name it in the call's carry)
#   bash scripts/gpu_bench.sh --dry-run       CPU, tiny sizes, 1 repeat, torch.compile with the eager backend: the
#                                             whole script end to end without a GPU
set -uo pipefail

MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --fetch-wheels) MODE=wheels ;;
  "") ;;
  *) echo "usage: $0 [--dry-run | --fetch-wheels]" >&2; exit 2 ;;
esac

PY=${PYTHON:-python3}
if [[ $MODE == wheels ]]; then
  mkdir -p .whl
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==8.7.0
  exit $?
fi

OUT=${OUT:-runs/gpu_bench_out}
BUDGET_S=${BUDGET_S:-500}
[[ $MODE == dry ]] && BUDGET_S=${DRY_BUDGET_S:-1800}
WORK=$(mktemp -d /tmp/gpu_bench.XXXXXX)
mkdir -p "$OUT"
START=$(date +%s)
LOG="$OUT/log.txt"
: >"$LOG"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

if [[ $MODE == gpu ]]; then
  nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
  if ! "$PY" -c "import diffusers" 2>/dev/null; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
      echo "diffusers is missing here and no .whl/ was carried: run 'bash scripts/gpu_bench.sh --fetch-wheels' first" | tee -a "$LOG"
      exit 1
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
  fi
  COMMON=(--size full --device cuda --repeats 10 --warmup 3)
  BACKEND=(--compile-backend inductor)
else
  COMMON=(--size tiny --device cpu --repeats 1 --warmup 0)
  BACKEND=(--compile-backend eager)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
echo "[gpu_bench] mode=$MODE out=$OUT budget=${BUDGET_S}s $("$PY" -c 'import torch, diffusers; print("torch", torch.__version__, "diffusers", diffusers.__version__)')" | tee -a "$LOG"

collect() {  # bundle every finished run and rebuild the table
  if ls "$WORK"/*.json >/dev/null 2>&1; then
    "$PY" benchmarks/benchmark_table.py $(ls -tr "$WORK"/*.json) --bundle "$OUT/bench.json" --markdown "$OUT/table.md" \
      >>"$LOG" 2>&1 || echo "[gpu_bench] benchmark_table.py failed" | tee -a "$LOG"
  fi
}

bench() {  # bench NAME TIMEOUT_S MIN_S ARGS...: one overhead.py run, skipped when under MIN_S of the budget is left
  local name=$1 limit=$2 need=$3; shift 3
  if [[ $MODE == dry ]]; then limit=300 need=0; fi
  local left=$((BUDGET_S - ($(date +%s) - START)))
  if ((left < need)); then
    echo "[gpu_bench] $name skipped: ${left}s of the budget left, needs ${need}s" | tee -a "$LOG"
    return
  fi
  ((limit > left)) && limit=$left
  echo "[gpu_bench] $name (timeout ${limit}s): overhead.py $*" | tee -a "$LOG"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$PY" benchmarks/overhead.py "${COMMON[@]}" "$@" --json "$WORK/$name.json" \
    >"$WORK/$name.log" 2>&1
  local rc=$?
  grep -v '^\s' "$WORK/$name.log" | grep -v '^[{}]' | tail -n 20 >>"$LOG"
  grep -E '"(full|explain)_ratio"|"bit_identical"|images_per_second' "$WORK/$name.log" | head -n 12 | tee -a "$LOG"
  echo "[gpu_bench] $name: exit $rc after $(($(date +%s) - t0))s" | tee -a "$LOG"
  if ((rc != 0)); then tail -n 30 "$WORK/$name.log" >>"$LOG"; fi
  collect
}

bench flux-schnell_eager 150 60 --family flux-schnell --profile --throughput
bench flux-schnell_regional 200 120 --family flux-schnell --compile regional "${BACKEND[@]}" --cases full_plain full_maps
bench flux-dev_eager 90 45 --family flux-dev --profile
bench sd3.5-large_eager 100 50 --family sd3.5-large --profile
bench cogvideox-5b_eager 150 80 --family cogvideox-5b --profile --warmup 1  # ~1.5 s per forward
bench qwen-image_eager 110 60 --family qwen-image --profile
bench flux-schnell_model 200 150 --family flux-schnell --compile model "${BACKEND[@]}" --cases full_plain full_maps
bench sd3.5-large_regional 150 120 --family sd3.5-large --compile regional "${BACKEND[@]}" --cases full_plain full_maps
bench qwen-image_regional 150 120 --family qwen-image --compile regional "${BACKEND[@]}" --cases full_plain full_maps

collect
echo "[gpu_bench] done in $(($(date +%s) - START))s: $OUT/bench.json, $OUT/table.md" | tee -a "$LOG"
[[ -f $OUT/table.md ]] && cat "$OUT/table.md"
rm -rf "$WORK"
