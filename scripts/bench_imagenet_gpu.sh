#!/usr/bin/env bash
# Issue 28's GPU measurements in one go, for a machine with one CUDA GPU (none has run it yet):
#   1. a smoke run: 1 epoch of --dataset imagenet on generated JPEGs, torchvision ResNet-18, BN-only, bf16;
#   2. the step: BN-only torchvision ResNet-50 at 224 px, fp32 and bf16, channels-last, batch 256;
#   3. the loader at -j = the machine's cores and at half of them: images/s of the training pipeline, and
#      so how many cores the step of 2 needs (bench_imagenet.py's last column);
#   4. one streamed epoch of BN-only ResNet-50 on the 20,000 generated images at -j = cores, bf16: the
#      pipeline and the step together, timed.
#
#   scripts/bench_imagenet_gpu.sh DATA_DIR OUT_DIR
#
# DATA_DIR receives the generated folders (bench_imagenet.py --make-data: 2,000 and 20,000 JPEGs at
# 500 x 375, about 1.5 GB, some minutes on one core; kept between calls). OUT_DIR receives log.txt.
set -uo pipefail
usage="usage: scripts/bench_imagenet_gpu.sh DATA_DIR OUT_DIR"
DATA=$(realpath -m "${1:?$usage}") || exit 2
OUT=$(realpath -m "${2:?$usage}") || exit 2
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.." || exit 2
RUNS=$(mktemp -d)
mkdir -p "$OUT" "$DATA" || exit 2
export PYTHONUNBUFFERED=1
CORES=$(nproc)

stamp() { echo "[$(date +%T), ${SECONDS} s] $*"; }

{
stamp "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cpus', $CORES)"

stamp "0. the generated JPEG folders"
$PY -c "from bnonly.benchmarks.imagenet_bench import make_folders; make_folders('$DATA')" || exit 1

stamp "1. smoke: 1 epoch of torchvision:resnet18 on 2,000 images, bf16"
if ! $PY train.py --dataset imagenet --data-dir "$DATA/n2000" -a torchvision:resnet18 -t bn --epochs 1 \
        --val-split 200 --precision bf16 --device cuda -j "$CORES" --no-progress --save-dir "$RUNS/smoke"; then
    stamp "the CUDA smoke run failed: stopping"
    exit 1
fi

stamp "2 and 3. the step (fp32, bf16, batch 256) and the loader at -j $CORES"
$PY bench_imagenet.py --data-dir "$DATA" --only step --device cuda --precisions fp32,bf16 --batch 256
$PY bench_imagenet.py --data-dir "$DATA" --only pipeline --workers "$((CORES / 2)),$CORES" --images 4096 --rounds 2

stamp "4. one streamed epoch of BN-only torchvision:resnet50 on 20,000 images, bf16, -j $CORES"
$PY train.py --dataset imagenet --data-dir "$DATA/n20000" -a torchvision:resnet50 -t bn --epochs 1 \
    --precision bf16 --device cuda -j "$CORES" --no-progress --save-dir "$RUNS/epoch"
cat "$RUNS/epoch/history.csv"
stamp "done"
} 2>&1 | tee "$OUT/log.txt"
