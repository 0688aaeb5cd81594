#!/usr/bin/env bash
# WSLD's ImageNet-1k recipe (Zhou et al., ICLR 2021; its README): a ResNet-18 student
# trained from scratch with online weighted soft-label distillation from torchvision's ResNet-34,
# every value read from WSLD's source (bellymonster/Weighted-Soft-Label-Distillation):
#   teacher resnet34 (torchvision, pretrained), student resnet18     train_with_distillation.py
#   loss CE + 2.5 x T^2 x weighted soft CE, T = 2                    knowledge_distiller.py (T, alpha)
#   SGD lr 0.1, momentum 0.9, Nesterov, weight decay 1e-4 on every parameter   train_with_distillation.py
#   lr x 0.1 every 30 epochs; epochs 0..100 (its loop runs to epochs + 1)      adjust_learning_rate, imagenet_train_cfg.py
#   batch 256, RandomResizedCrop 224 (scale 0.08-1) + flip, no label smoothing imagenet_train_cfg.py
#   an epoch's last partial batch left out (--drop-last)                       dataset/imagenet_data.py (drop_last=True)
#   the teacher labels in train mode: batch norm on each batch's statistics,   train_with_distillation.py
#   its running statistics updated (and restored on resume)                    (t_net.train(), train_state_dict)
# Differences: WSLD reads ImageNet from LMDB (ours: the image folders); its batch 256 is split by
# DataParallel over 8 GPUs (ours: -b 256 across the torchrun ranks, the same global batch; the
# teacher's batch norm sees each GPU's 32 images in both).
# The teacher: WSLD's models/ResNet.py loads resnet34-333f7ec4.pth (torchvision's first ResNet-34
# file); ours loads torchvision's IMAGENET1K_V1 ResNet-34, resnet34-b627a593.pth, from the torch
# hub cache ($TORCH_HOME/hub/checkpoints; nothing is downloaded), in float32 as WSLD's. For the
# older file itself: --teacher-path /path/to/resnet34-333f7ec4.pth. Seed's table: teacher 73.19, student alone 69.75, WSLD 71.6 (top-1, 8 x V100).
#   TRAIN_DIR=/data/imagenet/train VAL_DIR=/data/imagenet/val GPUS=8 bash validate/train_wsld_r34_r18.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TRAIN_DIR=${TRAIN_DIR:-/path/to/imagenet/train}
VAL_DIR=${VAL_DIR:-/path/to/imagenet/val}
OUTPUT_DIR=${OUTPUT_DIR:-./save/wsld_r34_r18}
GPUS=${GPUS:-1}
PY=python; [ -x .venv/bin/python ] && PY=.venv/bin/python
if [ "$GPUS" -gt 1 ]; then RUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node "$GPUS"); else RUN=("$PY"); fi

"${RUN[@]}" validate/train_FKD_parallel.py \
    --teacher resnet34 --teacher-source torchvision --teacher-weights IMAGENET1K_V1 --teacher-mode train \
    --model resnet18 \
    --loss-type wsld -T 2 --alpha 2.5 \
    --sgd -lr 0.1 --momentum 0.9 --nesterov --weight-decay 1e-4 --weight-decay-norms \
    --lr-schedule step --lr-step-size 30 --lr-gamma 0.1 \
    --epochs 101 -b 256 --drop-last \
    --input-size 224 --min-scale-crops 0.08 --max-scale-crops 1 --mix-type none \
    -j 8 --eval-interval 1 \
    --train-dir "$TRAIN_DIR" --val-dir "$VAL_DIR" --output-dir "$OUTPUT_DIR" \
    --resume auto \
    "$@"
