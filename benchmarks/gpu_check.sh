#!/usr/bin/env bash
# One short GPU check (< 8 minutes) on a machine that has the repository but not the venv:
#
#   1. `make install` (creates .venv with the pinned packages),
#   2. the loss speed benchmark (vectorised spread loss against the loop oracle),
#   3. the training speed benchmark: every backbone in fp32 and bf16, the data-path comparison,
#      then bf16 with torch.compile for ResNet-18 and the ViT, and the loss alone compiled,
#   4. a few epochs of the paper recipe (ViT, reference augmentation) on fabricated CIFAR-sized data.
#
# Everything goes to one file: "$OUT/gpu_check.txt" if OUT is set, else ./gpu_check.txt.
# A failing section is recorded and the script goes on. The whole check has a budget
# (GPU_CHECK_BUDGET_S, default 465 s): each section runs under the smaller of its own limit and
# what is left, and a section with under 20 s left is skipped (and reported as such).
# Exit status: 0 if every section passed, 1 otherwise.
#
#   benchmarks/gpu_check.sh               # on the GPU machine
#   benchmarks/gpu_check.sh --cpu-smoke   # the same sections, tiny sizes, on CPU (checks the script);
#                                         # reuses an existing .venv instead of running make install
#   GPU_CHECK_PYTHON=/path/to/python benchmarks/gpu_check.sh   # an interpreter that already has the
#                                         # project's packages: no install
set -uo pipefail

SMOKE=0
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (allowed: --cpu-smoke)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  REPORT="$OUT/gpu_check.txt"
else
  REPORT="$PWD/gpu_check.txt"
fi
: > "$REPORT"
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-465}
FAILED=()
PY=${GPU_CHECK_PYTHON:-.venv/bin/python}

log() { echo "$*" | tee -a "$REPORT"; }
elapsed() { echo $(( $(date +%s) - START )); }

# run NAME LIMIT_S CMD...: run a section with a time limit, its output appended to the report.
run() {
  local name=$1 limit=$2 left
  shift 2
  left=$(( BUDGET - $(elapsed) ))
  if (( left < 20 )); then
    log ""
    log "## $name: skipped, ${left} s of the ${BUDGET} s budget left"
    FAILED+=("$name (skipped: out of time)")
    return 0
  fi
  (( limit > left )) && limit=$left
  log ""
  log "## $name  (t = $(elapsed) s, limit ${limit} s)"
  log '$ '"$*"
  log ""
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$REPORT"
  local status=${PIPESTATUS[0]}
  if [[ $status -ne 0 ]]; then
    FAILED+=("$name (exit $status$([[ $status -eq 124 ]] && echo ', timed out'))")
    log "** $name failed with exit status $status"
  fi
  return 0
}

log "# thanos-bench GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$([[ $SMOKE -eq 1 ]] && echo ' (--cpu-smoke)')"
command -v nvidia-smi > /dev/null && run "nvidia-smi" 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
  log ""
  log "## install: skipped (GPU_CHECK_PYTHON=$PY)"
elif [[ $SMOKE -eq 1 && -x $PY ]]; then
  log ""
  log "## install: skipped (--cpu-smoke and .venv exists)"
else
  run "make install" 330 make install
fi
if [[ ! -x $PY ]]; then
  log "** no $PY after make install: nothing else can run"
  exit 1
fi

run "torch" 60 "$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.version.cuda, '| available', torch.cuda.is_available()); print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device', '| bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported())"

if [[ $SMOKE -eq 1 ]]; then
  DEV=(--device cpu)
  LOSS=(--batch-sizes 64 --dims 32 --oracle-max-batch 64 --min-time 0.05 --max-repeats 3)
  EAGER=(--batch 8 --min-time 0.05 --min-repeats 1 --warmup 1 --workers 1 --precisions fp32 bf16)
  COMPILED=(--batch 8 --min-time 0.05 --min-repeats 1 --warmup 1 --precisions bf16 --compile-only
            --backbones small_cnn@8 --skip-data --loss-batches 64)
  PAPER=(--skip-train --skip-data --paper-epochs 1 --paper-images 512 --paper-batch 64 --precisions fp32)
else
  DEV=()
  LOSS=(--batch-sizes 512 2048 --dims 128 --oracle-max-batch 512)
  EAGER=(--batch 256 --min-time 1 --precisions fp32 bf16)
  COMPILED=(--batch 256 --min-time 1 --precisions bf16 --compile-only --backbones resnet18@32 vit@32
            --skip-data --loss-batches 1024 4096)
  PAPER=(--skip-train --skip-data --paper-epochs 3 --precisions fp32 bf16)
fi

# Cheapest and most wanted first; compilation (slow to warm up) gets what is left.
run "loss speed (fp32: the loss always computes in float32)" 60 "$PY" benchmarks/loss_speed.py "${DEV[@]}" "${LOSS[@]}"
run "train speed, eager, fp32 and bf16; data path" 90 "$PY" benchmarks/train_speed.py "${DEV[@]}" "${EAGER[@]}"
run "paper recipe, a few epochs" 100 "$PY" benchmarks/train_speed.py "${DEV[@]}" "${PAPER[@]}"
run "train speed, bf16, torch.compile; loss compiled" 200 "$PY" benchmarks/train_speed.py "${DEV[@]}" "${COMPILED[@]}"

log ""
log "## summary: $(elapsed) s in all"
if [[ ${#FAILED[@]} -eq 0 ]]; then
  log "every section passed"
  exit 0
fi
for f in "${FAILED[@]}"; do log "FAILED: $f"; done
exit 1
