#!/usr/bin/env bash
# PRISM's ImageNet-1k training command for a ResNet-18 student on the IPC10 store of
# relabel/relabel_r18.sh, flag for flag as in
# validate/README.md of PRISM (Brian-Moser/prism) and its train_FKD_10_r18.sh,
# plus --resume auto (a killed run continues where it stopped when the script is run again).
# Point it at your data with the variables, and pass anything else on:
#   TRAIN_DIR=/data/syn_data/full_r18 VAL_DIR=/data/imagenet/val FKD_PATH=/data/FKD_prism_r18 bash validate/train_FKD_10_r18.sh
#   GPUS=8 bash validate/train_FKD_10_r18.sh          # one process per GPU through torchrun
#   bash validate/train_FKD_10_r18.sh --wandb-mode offline --amp bf16
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TRAIN_DIR=${TRAIN_DIR:-/path/to/recover/syn_data/full_r18/}
VAL_DIR=${VAL_DIR:-/path/to/imagenet/val/}
FKD_PATH=${FKD_PATH:-/path/to/relabel/FKD_prism_r18/}
OUTPUT_DIR=${OUTPUT_DIR:-./save/val_rn18_imnet_10/}
GPUS=${GPUS:-1}
PY=python; [ -x .venv/bin/python ] && PY=.venv/bin/python
if [ "$GPUS" -gt 1 ]; then RUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS"); else RUN=("$PY"); fi

"${RUN[@]}" validate/train_FKD_parallel.py \
    --wandb-project 'val_rn18_imnet_10' \
    --batch-size 50 \
    --gradient-accumulation-steps 2 \
    --model resnet18 \
    --cos --loss-type "mse_gt" --ce-weight 0.1 \
    -j 4 \
    -T 20 \
    --mix-type 'cutmix' \
    --output-dir "$OUTPUT_DIR" \
    --train-dir "$TRAIN_DIR" \
    --val-dir "$VAL_DIR" \
    --fkd-path "$FKD_PATH" \
    --resume auto \
    "$@"
