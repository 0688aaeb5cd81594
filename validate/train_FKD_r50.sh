#!/usr/bin/env bash
# FKD's ImageNet-1k training command for a ResNet-50 student on FKD's own soft labels (the files of
# FKD_SLG, e.g. its published "Marginal Smoothing Top-5 (500-crop)"), flag for flag as in the README
# of FKD (szq0214/FKD, FKD/README.md, "FKD Training on CNNs"), with our trainer in place of its
# FKD/train_FKD.py: --softlabel_path brings train_FKD.py's recipe (SGD lr 0.1, momentum 0.9, weight
# decay 1e-4 on every parameter, its cosine, 300 epochs counted as it counts them: docs/per-image.md),
# plus --save_checkpoint_path (its default folder) and --resume auto (a killed run continues where it
# stopped when the script is run again).
# Point it at your data with the variables, and pass anything else on:
#   DATA=/data/imagenet SOFTLABEL_PATH=/data/FKD_soft_label_500_crops_marginal_smoothing_k_5/imagenet bash validate/train_FKD_r50.sh
#   GPUS=8 bash validate/train_FKD_r50.sh          # one process per GPU through torchrun
#   bash validate/train_FKD_r50.sh --mixup_cutmix --amp bf16
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${DATA:-/path/to/imagenet/}   # holds train/ and val/, as train_FKD.py's DATA
SOFTLABEL_PATH=${SOFTLABEL_PATH:-/path/to/FKD_soft_label_500_crops_marginal_smoothing_k_5/imagenet/}
OUTPUT_DIR=${OUTPUT_DIR:-./FKD_checkpoints_output/}
GPUS=${GPUS:-1}
PY=python; [ -x .venv/bin/python ] && PY=.venv/bin/python
if [ "$GPUS" -gt 1 ]; then RUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS"); else RUN=("$PY"); fi

"${RUN[@]}" validate/train_FKD_parallel.py \
    -a resnet50 --lr 0.1 --num_crops 4 -b 1024 --cos --temp 1.0 \
    --softlabel_path "$SOFTLABEL_PATH" \
    "$DATA" \
    --save_checkpoint_path "$OUTPUT_DIR" \
    --resume auto \
    "$@"
