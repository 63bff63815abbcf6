#!/usr/bin/env bash
# Issue 29 on a machine with one CUDA GPU, in one go (BN-only ResNet-32, batch 128, fp32, JPEG CIFAR-10):
#   1. the screen: 10,000 training images, 2,000 held out, 8 epochs (80,000 image-passes), 1 warm-up epoch
#      then cosine, seed 0: SGD, Adam, ngd (natural gradient: empirical and sampled Fisher) and ngd
#      --ngd-power 0.5 (full-matrix RMSprop) over their learning rates; RUNS of them side by side;
#   2. the full budget: for the best learning rate of each of the four (final val accuracy of step 1),
#      3 seeds of 45,000 training images with 5,000 held out, 30 epochs = 1.35 M image-passes, all side by
#      side, each stopped (checkpointed) when the time left runs out.
#
#   scripts/optimizers_gpu.sh DATA_DIR OUT_DIR [BUDGET_SECONDS]
#
# DATA_DIR holds train/<class>/*.jpg. OUT_DIR receives log.txt and runs.tar.gz (each run's config.json,
# history.csv, summary.json and train.log). Runs side by side share the GPU, so their seconds are not
# each optimizer's own: time the steps with bench_optimizers.py. To try it without a GPU:
#   DEVICE=cpu RUNS=2 SCREEN_EPOCHS=2 FULL_EPOCHS=2 TRAIN_SIZE=300 SCREEN_SIZE=300 SCREEN_VAL=100 FULL_VAL=100 scripts/optimizers_gpu.sh D OUT 300
set -uo pipefail
usage="usage: scripts/optimizers_gpu.sh DATA_DIR OUT_DIR [BUDGET_SECONDS]"
DATA=$(realpath "${1:?$usage}") || exit 2
OUT=$(realpath -m "${2:?$usage}") || exit 2
BUDGET=${3:-540}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
RUNS=${RUNS:-10}
SCREEN_EPOCHS=${SCREEN_EPOCHS:-8}
SCREEN_SIZE=${SCREEN_SIZE:-10000}
FULL_EPOCHS=${FULL_EPOCHS:-30}
TRAIN_SIZE=${TRAIN_SIZE:-0}
SCREEN_VAL=${SCREEN_VAL:-2000}
FULL_VAL=${FULL_VAL:-5000}
cd "$(dirname "$0")/.." || exit 2
WORK=$(mktemp -d)
mkdir -p "$OUT" "$WORK/screen" "$WORK/full" || exit 2
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
START=$SECONDS
stamp() { echo "[$(date +%T), $((SECONDS - START)) s] $*"; }
pack() { (cd "$WORK" && tar -czf "$OUT/runs.tar.gz" --exclude='*.pt' screen full); }
trap pack EXIT

COMMON=(--dataset imagefolder --data-dir "$DATA" -a resnet32 -t bn -b 128 --precision fp32 --device "$DEVICE"
        --schedule cosine --warmup-epochs 1 --no-progress)
{
stamp "machine"
nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

stamp "0. the decoded-image cache (one decode for every run)"
$PY train.py "${COMMON[@]}" --train-size 256 --val-split 64 --epochs 1 --warmup-epochs 0 --save-dir "$WORK/warm" > /dev/null || exit 1

stamp "1. the screen"
screen=(
  "sgd_lr=0.8|--optimizer sgd --momentum 0.9 --weight-decay 0.0001 --lr 0.8"
  "sgd_lr=1.6|--optimizer sgd --momentum 0.9 --weight-decay 0.0001 --lr 1.6"
  "sgd_lr=3.2|--optimizer sgd --momentum 0.9 --weight-decay 0.0001 --lr 3.2"
  "sgd_lr=6.4|--optimizer sgd --momentum 0.9 --weight-decay 0.0001 --lr 6.4"
  "adam_lr=0.1|--optimizer adam --weight-decay 0 --bn-weight-decay false --lr 0.1"
  "adam_lr=0.3|--optimizer adam --weight-decay 0 --bn-weight-decay false --lr 0.3"
  "adam_lr=1|--optimizer adam --weight-decay 0 --bn-weight-decay false --lr 1"
)
for fisher in empirical sampled; do
  for lr in 0.4 0.8 1.6 3.2; do
    screen+=("ngd-$fisher""_lr=$lr|--optimizer ngd --ngd-power 1 --ngd-refresh 10 --ngd-fisher $fisher --momentum 0.9 --weight-decay 0 --lr $lr")
  done
done
for lr in 0.4 1.6 6.4; do
  screen+=("ngd-sqrt_lr=$lr|--optimizer ngd --ngd-power 0.5 --ngd-refresh 10 --momentum 0.9 --weight-decay 0 --lr $lr")
done
for entry in "${screen[@]}"; do echo "$entry"; done > "$WORK/screen.txt"
SCREEN_LEFT=$((BUDGET / 3 - (SECONDS - START)))
xargs -P "$RUNS" -d '\n' -I{} bash -c 'name=${1%%|*}; flags=${1#*|}; timeout '"$SCREEN_LEFT"' '"$PY"' train.py \
    "${@:2}" --train-size '"$SCREEN_SIZE"' --val-split '"$SCREEN_VAL"' --epochs '"$SCREEN_EPOCHS"' --seed 0 $flags \
    --save-dir '"$WORK"'/screen/$name > '"$WORK"'/screen/$name.log 2>&1; echo "  $name: exit $?"' _ {} "${COMMON[@]}" \
    < "$WORK/screen.txt"
$PY - "$WORK/screen" > "$WORK/best.txt" <<'PY'
import json, os, sys
root = sys.argv[1]
best = {}
for name in sorted(os.listdir(root)):
    path = os.path.join(root, name, "summary.json")
    if not os.path.exists(path):
        continue
    acc = json.load(open(path))["final"]["val_acc"]
    family = name.split("_lr=")[0].replace("-empirical", "").replace("-sampled", "")
    print(f"# {name}: {acc:.2f}", file=sys.stderr)
    if acc > best.get(family, ("", -1))[1]:
        best[family] = (name, acc)
for family, (name, acc) in best.items():
    print(name)
PY
cat "$WORK/best.txt"
stamp "2. the full budget: 3 seeds of the best of each family"
grep -F -f "$WORK/best.txt" "$WORK/screen.txt" | while IFS= read -r entry; do
  for seed in 0 1 2; do echo "${entry%%|*}_s$seed|${entry#*|} --seed $seed"; done
done > "$WORK/full.txt"
FULL_LEFT=$((BUDGET - (SECONDS - START) - 20))
stamp "$(wc -l < "$WORK/full.txt") runs, $FULL_LEFT s"
SIZE=(); [ "$TRAIN_SIZE" != 0 ] && SIZE=(--train-size "$TRAIN_SIZE")
ngd=$(grep -F -f "$WORK/best.txt" "$WORK/screen.txt" | grep '^ngd-[es]' | head -1)
if [ -n "$ngd" ]; then  # beside them: the best ngd's screen run again, with its step log (scripts/ngd_step_log.py)
  timeout -s TERM "$FULL_LEFT" $PY scripts/ngd_step_log.py --out "$WORK/full/ngd_step_log.csv" --every 25 -- \
      "${COMMON[@]}" --train-size "$SCREEN_SIZE" --val-split "$SCREEN_VAL" --epochs "$SCREEN_EPOCHS" --seed 0 \
      ${ngd#*|} --save-dir "$WORK/full/ngd_step_log" > "$WORK/full/ngd_step_log.log" 2>&1 &
fi
xargs -P 12 -d '\n' -I{} bash -c 'name=${1%%|*}; flags=${1#*|}; timeout -s TERM '"$FULL_LEFT"' '"$PY"' train.py \
    "${@:2}" --val-split '"$FULL_VAL"' --epochs '"$FULL_EPOCHS"' $flags --save-dir '"$WORK"'/full/$name \
    > '"$WORK"'/full/$name.log 2>&1; echo "  $name: exit $?"' _ {} "${COMMON[@]}" "${SIZE[@]}" < "$WORK/full.txt"
wait
stamp "done"
for f in "$WORK"/full/*/history.csv; do echo "$f: $(tail -1 "$f" | cut -d, -f1-6)"; done
} 2>&1 | tee "$OUT/log.txt"
