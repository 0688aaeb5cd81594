#!/usr/bin/env bash
# PRISM's ImageNet-1k relabel command for a ResNet-101 student (teachers resnet101, mobilenet_v2,
# alexnet, shufflenet_v2_x0_5; primary-weighted ensemble). Edit DATA and FKD_PATH, or set them:
#   DATA=/data/distilled FKD_PATH=/data/FKD_r101 bash relabel/relabel_r101.sh
#   GPUS=8 bash relabel/relabel_r101.sh            # one process per GPU through torchrun
# Extra arguments are passed on, e.g. --candidate-number 2 or --evaluate --val-dir /data/imagenet/val
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${DATA:-/path/to/distilled/imagenet}
FKD_PATH=${FKD_PATH:-./FKD_cutmix_fp16_r101}
GPUS=${GPUS:-1}
PY=python; [ -x .venv/bin/python ] && PY=.venv/bin/python
if [ "$GPUS" -gt 1 ]; then RUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS"); else RUN=("$PY"); fi

"${RUN[@]}" relabel/generate_soft_label_r101.py \
    -a resnet101 \
    --data "$DATA" \
    --fkd-path "$FKD_PATH" \
    --mode fkd_save \
    -b 1024 -j 8 \
    --epochs 300 \
    --input-size 224 \
    --min-scale-crops 0.08 --max-scale-crops 1 \
    --mix-type cutmix \
    --use-fp16 \
    --fkd-seed 42 \
    --candidate-number 4 \
    "$@"
