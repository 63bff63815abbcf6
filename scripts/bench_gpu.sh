#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md in one go, for a machine with one CUDA GPU:
#   1. a smoke run on synthetic data (stops here if the CUDA path fails);
#   2. bf16 against fp32 accuracy parity: 3 seeds x 3 BN-only epochs each (the CPU protocol), run side by side;
#   3. bench.py --device cuda: the classic DataLoader recipe against train.py's GPU-resident pipeline;
#   4. the same 3 epochs (seed 0, fp32) with --compile true --compile-mode reduce-overhead (CUDA graphs);
#   5. the 160-epoch BN-only ResNet-32 run, timed (cut off at the time budget, if one is given): the plain
#      command, or the compiled one where step 4 kept seed 0's val accuracy within 0.5 point and its last
#      epoch took under 0.8x the plain one's.
#
#   scripts/bench_gpu.sh DATA_DIR OUT_DIR [BUDGET_SECONDS]
#
# DATA_DIR holds train/<class>/*.jpg (the JPEG CIFAR-10 of ../shared/data). OUT_DIR receives log.txt,
# bench.txt and runs.tar.gz (each run's config.json, history.csv and summary.json). With a budget,
# step 4 gets at most a third of what is left (skipped under 2 minutes) and step 5 the rest.
set -uo pipefail
usage="usage: scripts/bench_gpu.sh DATA_DIR OUT_DIR [BUDGET_SECONDS]"
DATA=$(realpath "${1:?$usage}") || exit 2
OUT=$(realpath -m "${2:?$usage}") || exit 2
BUDGET=${3:-0}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.." || exit 2
RUNS=$(mktemp -d)
mkdir -p "$OUT" || exit 2
export PYTHONUNBUFFERED=1
COMMON=(--dataset imagefolder --data-dir "$DATA" --val-split 5000 --device cuda --no-progress)

stamp() { echo "[$(date +%T), ${SECONDS} s] $*"; }
left() { if [ "$BUDGET" -gt 0 ]; then echo $((BUDGET - SECONDS - 20)); else echo 86400; fi; }

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

EXTRA=()
cap=$(( $(left) / 3 < 240 ? $(left) / 3 : 240 ))
if [ "$cap" -lt 40 ]; then
    stamp "4. skipped: too little of the budget left"
else
    stamp "4. torch.compile, mode reduce-overhead: 3 epochs, seed 0 (epoch 1 includes the compilation; cut at $cap s)"
    COMPILED=(--compile true --compile-mode reduce-overhead)
    timeout "$cap" $PY train.py "${COMMON[@]}" -t bn --epochs 3 --seed 0 --precision fp32 "${COMPILED[@]}" \
        --save-dir "$RUNS/compiled_fp32_s0"
    if $PY - "$RUNS/parity_fp32_s0/history.csv" "$RUNS/compiled_fp32_s0/history.csv" <<'PYEOF'
import csv, os, sys
plain, compiled = (list(csv.DictReader(open(path))) if os.path.exists(path) else [] for path in sys.argv[1:])
if len(plain) < 3:
    sys.exit("the plain seed-0 run (step 2) did not finish: nothing to compare with; the 160-epoch run stays eager")
if len(compiled) < 3:
    sys.exit("the compiled run did not finish: the 160-epoch run stays eager")
seconds = [float(rows[-1]["epoch_seconds"]) for rows in (plain, compiled)]
accs = [float(rows[-1]["val_acc"]) for rows in (plain, compiled)]
print(f"last epoch: eager {seconds[0]:.2f} s, compiled {seconds[1]:.2f} s; val acc {accs[0]:.2f} vs {accs[1]:.2f}")
sys.exit(0 if seconds[1] < 0.8 * seconds[0] and abs(accs[1] - accs[0]) <= 0.5 else 1)
PYEOF
    then EXTRA=("${COMPILED[@]}"); fi
fi

cap=$(left)
if [ "$cap" -lt 30 ]; then
    stamp "5. skipped: too little of the budget left"
else
    stamp "5. the 160-epoch BN-only run ${EXTRA[*]:-(plain command)}, cut at $cap s"
    start=$(date +%s.%N)
    # every 20th epoch line, and every line that is not an epoch line (the header, errors)
    timeout "$cap" $PY train.py "${COMMON[@]}" -t bn --epochs 160 --seed 0 ${EXTRA[@]+"${EXTRA[@]}"} \
        --save-dir "$RUNS/bn_160_s0" 2>&1 | awk '/^epoch/ { n = $2 + 0 } !/^epoch/ || n <= 2 || n % 20 == 0 { print; fflush() }'
    status=$?
    wall=$($PY -c "import time; print(round(time.time() - $start, 1))")
    history="$RUNS/bn_160_s0/history.csv"
    done_epochs=$([ -f "$history" ] && echo $(($(wc -l < "$history") - 1)) || echo 0)
    stamp "160-epoch run ended (exit $status) after $wall s wall (start-up, data, training, evaluation);" \
          "epochs done: $done_epochs"
    [ -f "$history" ] && tail -n 2 "$history"
fi
} 2>&1 | tee "$OUT/log.txt"
status=${PIPESTATUS[0]}

find "$RUNS" -name checkpoint.pt -delete
tar -czf "$OUT/runs.tar.gz" -C "$RUNS" .
exit "$status"
