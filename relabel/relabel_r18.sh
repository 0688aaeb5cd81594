#!/usr/bin/env bash
# PRISM's ImageNet-1k relabel command for a ResNet-18 student, flag for flag as in
# relabel/README.md of PRISM (Brian-Moser/prism) and its relabel_r18.sh
# (teachers resnet18, mobilenet_v2, alexnet, shufflenet_v2_x0_5; normmean ensemble; the cluster's srun wrapper left out).
# Teachers as PRISM's pretrained=True: torchvision's IMAGENET1K_V1 weights, run in float32
# (--teacher-weights and --amp to choose otherwise; see docs/relabel.md).
# Point it at your data with the variables, and pass anything else on:
#   DATA=/data/syn_data/full_r18_10 FKD_PATH=/data/FKD_prism_r18 bash relabel/relabel_r18.sh
#   GPUS=8 bash relabel/relabel_r18.sh              # one process per GPU through torchrun
#   bash relabel/relabel_r18.sh --evaluate --val-dir /data/imagenet/val
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${DATA:-/path/to/recover/syn_data/full_r18_10}
FKD_PATH=${FKD_PATH:-FKD_prism_r18}
GPUS=${GPUS:-1}
PY=python; [ -x .venv/bin/python ] && PY=.venv/bin/python
if [ "$GPUS" -gt 1 ]; then RUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS"); else RUN=("$PY"); fi

"${RUN[@]}" relabel/generate_soft_label_r18.py \
    -b 50 \
    -j 8 \
    --epochs 300 \
    --fkd-seed 42 \
    --input-size 224 \
    --min-scale-crops 0.25 \
    --max-scale-crops 1 \
    --use-fp16 --candidate-number 4 \
    --fkd-path "$FKD_PATH" \
    --mode 'fkd_save' \
    --mix-type 'cutmix' \
    --data "$DATA" \
    "$@"
