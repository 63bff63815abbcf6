#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md in one go, for a machine with one CUDA GPU:
#   1. a smoke run on synthetic data (stops here if the CUDA path fails);
#   2. bf16 against fp32 accuracy parity: 3 seeds x 3 BN-only epochs each (the CPU protocol), run side by side;
#   3. bench.py --device cuda: the classic DataLoader recipe against train.py's GPU-resident pipeline;
#   4. the plain 160-epoch BN-only ResNet-32 run, timed (cut off at the time budget, if one is given).
#
#   scripts/bench_gpu.sh DATA_DIR OUT_DIR [BUDGET_SECONDS]
#
# DATA_DIR holds train/<class>/*.jpg (the JPEG CIFAR-10 of ../shared/data). OUT_DIR receives log.txt,
# bench.txt and runs.tar.gz (each run's config.json, history.csv and summary.json).
set -uo pipefail
DATA=${1:?usage: scripts/bench_gpu.sh DATA_DIR OUT_DIR [BUDGET_SECONDS]}
OUT=${2:?usage: scripts/bench_gpu.sh DATA_DIR OUT_DIR [BUDGET_SECONDS]}
BUDGET=${3:-0}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
RUNS=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
COMMON=(--dataset imagefolder --data-dir "$DATA" --val-split 5000 --device cuda --no-progress)

stamp() { echo "[$(date +%T), ${SECONDS} s] $*"; }

{
stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__,
'cudnn', torch.backends.cudnn.version(), 'tf32 conv', torch.backends.cudnn.allow_tf32,
'tf32 matmul', torch.backends.cuda.matmul.allow_tf32, 'cpus', __import__('os').cpu_count())"

stamp "1. smoke: synthetic data, 2 epochs"
if ! $PY train.py --dataset synthetic --train-size 1024 --epochs 2 -t bn --device cuda --no-progress \
        --save-dir "$RUNS/smoke"; then
    stamp "the CUDA smoke run failed: stopping"
    exit 1
fi

stamp "2. parity: seed 0 fp32 alone first (it decodes the JPEGs into the cache), then the other five side by side"
$PY train.py "${COMMON[@]}" -t bn --epochs 3 --seed 0 --precision fp32 --save-dir "$RUNS/parity_fp32_s0"
for run in fp32:1 fp32:2 bf16:0 bf16:1 bf16:2; do
    p=${run%:*} s=${run#*:}
    $PY train.py "${COMMON[@]}" -t bn --epochs 3 --seed "$s" --precision "$p" --save-dir "$RUNS/parity_${p}_s$s" \
        > "$RUNS/parity_${p}_s$s.log" 2>&1 &
done
wait
for p in fp32 bf16; do
    for s in 0 1 2; do
        echo "parity $p seed $s: $(tail -n 1 "$RUNS/parity_${p}_s$s/history.csv" 2>/dev/null || echo 'no history')"
    done
done

stamp "3. bench.py --device cuda"
$PY bench.py --data-dir "$DATA" --device cuda --lbfgs-train-size 0 | tee "$OUT/bench.txt"

stamp "4. the plain 160-epoch BN-only run"
limit=()
if [ "$BUDGET" -gt 0 ]; then limit=(timeout $((BUDGET - SECONDS - 20))); fi
start=$(date +%s.%N)
"${limit[@]}" $PY train.py "${COMMON[@]}" -t bn --epochs 160 --seed 0 --save-dir "$RUNS/bn_160_s0" \
    | awk 'NR <= 3 || NR % 20 == 0'
status=$?
wall=$($PY -c "import time; print(round(time.time() - $start, 1))")
stamp "160-epoch run ended (exit $status) after $wall s wall (start-up, data, training, evaluation);" \
      "epochs done: $(($(wc -l < "$RUNS/bn_160_s0/history.csv") - 1))"
tail -n 2 "$RUNS/bn_160_s0/history.csv"
} 2>&1 | tee "$OUT/log.txt"

find "$RUNS" -name checkpoint.pt -delete
tar -czf "$OUT/runs.tar.gz" -C "$RUNS" .
