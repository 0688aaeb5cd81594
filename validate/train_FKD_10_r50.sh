#!/usr/bin/env bash
# Train a resnet50 student on an IPC10 distilled ImageNet-1k from the soft-label store written by
# relabel/relabel_r50.sh (the upstream train_FKD command: batch 1024, 300 epochs, cosine,
# cutmix replayed from the store). Edit the paths, or set them:
#   TRAIN_DIR=/data/distilled_ipc10 VAL_DIR=/data/imagenet/val FKD_PATH=/data/FKD_r50 bash validate/train_FKD_10_r50.sh
#   GPUS=8 bash validate/train_FKD_10_r50.sh          # one process per GPU through torchrun
# Extra arguments are passed on, e.g. --loss-type mse_gt --ce-weight 0.1, --amp bf16, --resume auto,
# --wandb-mode offline (the key, if any, comes from WANDB_API_KEY).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TRAIN_DIR=${TRAIN_DIR:-/path/to/distilled/imagenet_ipc10}
VAL_DIR=${VAL_DIR:-/path/to/imagenet/val}
FKD_PATH=${FKD_PATH:-./FKD_cutmix_fp16_r50}
OUTPUT_DIR=${OUTPUT_DIR:-./save/val_r50_fkd_ipc10}
GPUS=${GPUS:-1}
PY=python; [ -x .venv/bin/python ] && PY=.venv/bin/python
if [ "$GPUS" -gt 1 ]; then RUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS"); else RUN=("$PY"); fi

"${RUN[@]}" validate/train_FKD_parallel.py \
    --wandb-project val_r50_fkd \
    --batch-size 1024 \
    --gradient-accumulation-steps 4 \
    --model resnet50 \
    --epochs 300 \
    --cos \
    -j 4 \
    --loss-type kl -T 20 \
    --mix-type cutmix \
    --output-dir "$OUTPUT_DIR" \
    --train-dir "$TRAIN_DIR" \
    --val-dir "$VAL_DIR" \
    --fkd-path "$FKD_PATH" \
    --resume auto \
    "$@"
