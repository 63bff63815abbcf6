#!/usr/bin/env bash
# The sweep measurements of issue 17 for a machine with one CUDA GPU, in one go:
#   1. throughput with K = 1, 2, 4, 8 runs side by side on the GPU (sweep.py --runs-per-gpu K): K seeds of
#      BN-only ResNet-32, EPOCHS epochs each on the JPEG CIFAR-10 (5,000 held out); for each K the sweep's
#      wall time and the training images per second of all K runs together (from their last epochs);
#   2. with the time left, the start of experiments/paper_depth.yaml (the paper's recipe, 160 epochs):
#      BN-only ResNet-14 and ResNet-32, 5 seeds each, at the K of step 1 with the most images per second,
#      stopped (checkpointed) at the budget; their histories say how far they got.
#
#   scripts/sweep_gpu.sh DATA_DIR OUT_DIR [BUDGET_SECONDS]
#
# DATA_DIR holds train/<class>/*.jpg (the JPEG CIFAR-10 of ../shared/data). OUT_DIR receives log.txt,
# throughput.md and runs.tar.gz (each run's config.json, history.csv, summary.json and train.log).
# Environment: EPOCHS (2), KS ("1 2 4 8"), TRAIN_SIZE (0: all 45,000), VAL_SPLIT (5000), PYTHON (python3),
# DEVICE (cuda; cpu runs the same steps with --parallel K instead, to try the script without a GPU:
#   DEVICE=cpu EPOCHS=1 KS="1 2" VAL_SPLIT=100 scripts/sweep_gpu.sh TINY_JPEG_DIR /tmp/out 150).
set -uo pipefail
usage="usage: scripts/sweep_gpu.sh DATA_DIR OUT_DIR [BUDGET_SECONDS]"
DATA=$(realpath "${1:?$usage}") || exit 2
OUT=$(realpath -m "${2:?$usage}") || exit 2
BUDGET=${3:-0}
PY=${PYTHON:-python3}
EPOCHS=${EPOCHS:-2}
KS=${KS:-1 2 4 8}
TRAIN_SIZE=${TRAIN_SIZE:-0}
VAL_SPLIT=${VAL_SPLIT:-5000}
DEVICE=${DEVICE:-cuda}
cd "$(dirname "$0")/.." || exit 2
WORK=$(mktemp -d)
mkdir -p "$OUT" || exit 2
export PYTHONUNBUFFERED=1

stamp() { echo "[$(date +%T), ${SECONDS} s] $*"; }
left() { if [ "$BUDGET" -gt 0 ]; then echo $((BUDGET - SECONDS - 30)); else echo 86400; fi; }
side_by_side() { if [ "$DEVICE" = cuda ]; then echo "--gpus 1 --runs-per-gpu $1"; else echo "--gpus 0 --parallel $1"; fi; }

{
stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cpus', __import__('os').cpu_count())"

stamp "0. warm-up: one short run decodes the JPEGs into the cache the sweeps share"
if ! $PY train.py --dataset imagefolder --data-dir "$DATA" --val-split "$VAL_SPLIT" --train-size 256 --epochs 1 -t bn \
        --device "$DEVICE" --no-progress --save-dir "$WORK/warmup"; then
    stamp "the warm-up run failed: stopping"
    exit 1
fi

echo "| runs side by side | sweep wall (s) | last epoch, median (s) | images/s, all runs | per run |" > "$WORK/throughput.md"
echo "|---:|---:|---:|---:|---:|" >> "$WORK/throughput.md"
for K in $KS; do
    if [ "$(left)" -lt 60 ]; then stamp "1. K=$K skipped: the budget is spent"; continue; fi
    seeds=$(seq -s, 0 $((K - 1)))
    size=$([ "$TRAIN_SIZE" -gt 0 ] && echo "train_size: $TRAIN_SIZE" || echo "")
    cat > "$WORK/grid_$K.yaml" <<EOF
base:
  dataset: imagefolder
  data_dir: $DATA
  val_split: $VAL_SPLIT
  epochs: $EPOCHS
  trainable: bn
  precision: fp32
  device: $DEVICE
  $size
axes:
  seed: [$seeds]
EOF
    stamp "1. K=$K: $K BN-only ResNet-32 runs of $EPOCHS epochs side by side"
    start=$SECONDS
    # shellcheck disable=SC2046  # the flags are words
    timeout -s INT "$(left)" $PY sweep.py "$WORK/grid_$K.yaml" --out "$WORK/throughput_K$K" $(side_by_side "$K")
    wall=$((SECONDS - start))
    $PY - "$WORK/throughput_K$K" "$K" "$wall" "$WORK/rates" >> "$WORK/throughput.md" <<'PYEOF'
import os, statistics, sys
sys.path.insert(0, os.getcwd())
from run_reader import read_history, run_folders
folder, k, wall, rates = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
last, images = [], 0
for run in run_folders([folder]):
    history = read_history(os.path.join(run, "history.csv"))
    seconds = history["epoch_seconds"][-1] - history["eval_seconds"][-1]
    per_epoch = history["images_forward_backward"][-1] if "images_forward_backward" in history else float("nan")
    last.append(seconds)
    images += per_epoch / seconds
if len(last) < k:
    print(f"| {k} | {wall:.0f} | only {len(last)} of {k} runs finished an epoch | | |")
else:
    print(f"| {k} | {wall:.0f} | {statistics.median(last):.2f} | {images:,.0f} | {images / k:,.0f} |")
    with open(rates, "a") as fh:  # "K images/s" of the K whose runs all finished, for picking the best
        fh.write(f"{k} {images:.1f}\n")
PYEOF
    tail -n 1 "$WORK/throughput.md"
done
cp "$WORK/throughput.md" "$OUT/"

best=$(sort -k2 -g "$WORK/rates" 2>/dev/null | tail -n 1 | cut -d' ' -f1)
best=${best:-1}
if [ "$(left)" -lt 120 ]; then
    stamp "2. paper_depth skipped: too little of the budget left"
else
    stamp "2. paper_depth.yaml, BN-only ResNet-14 then ResNet-32, 5 seeds, $best side by side, until the budget"
    for arch in resnet14 resnet32; do
        [ "$(left)" -lt 60 ] && break
        # shellcheck disable=SC2046
        timeout -s INT "$(left)" $PY sweep.py experiments/paper_depth.yaml --out "$WORK/paper_depth" \
            --set dataset=imagefolder --set data_dir="$DATA" --set val_split="$VAL_SPLIT" --set device="$DEVICE" \
            --set trainable=bn --set arch=$arch $(side_by_side "$best")
    done
    $PY plots.py "$WORK/paper_depth" --table 2>&1 | tail -n 20
fi

stamp "done"
} 2>&1 | tee "$OUT/log.txt"

(cd "$WORK" && find . -name config.json -o -name history.csv -o -name summary.json -o -name train.log \
    -o -name throughput.md -o -name sweep_status.json | tar -czf "$OUT/runs.tar.gz" -T -)
rm -rf "$WORK"
