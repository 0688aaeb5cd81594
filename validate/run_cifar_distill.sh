#!/usr/bin/env bash
# RepDistiller's scripts/run_cifar_distill.sh (HobbitLong/RepDistiller), command for command: every
# method distilling resnet32x4 into resnet8x4 on CIFAR-100 with train_student.py's recipe (SGD 0.05,
# momentum 0.9, weight decay 5e-4, batch 64, 240 epochs, x0.1 at 150/180/210), through
# validate/train_student.py. As upstream, the teacher is ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth
# (RepDistiller's published file, or one of train_teacher.py's) and CIFAR-100 is torchvision's
# cifar-100-python/ in ./data. Anything after the script's name is passed to every command, e.g.
#   bash validate/run_cifar_distill.sh --resume auto            # a killed run continues where it stopped
#   bash validate/run_cifar_distill.sh --device cuda:1 --wandb-mode offline
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=python; [ -x .venv/bin/python ] && PY=.venv/bin/python
T=./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth

# kd
"$PY" validate/train_student.py --path_t "$T" --distill kd --model_s resnet8x4 -r 0.1 -a 0.9 -b 0 --trial 1 "$@"
# FitNet
"$PY" validate/train_student.py --path_t "$T" --distill hint --model_s resnet8x4 -a 0 -b 100 --trial 1 "$@"
# AT
"$PY" validate/train_student.py --path_t "$T" --distill attention --model_s resnet8x4 -a 0 -b 1000 --trial 1 "$@"
# SP
"$PY" validate/train_student.py --path_t "$T" --distill similarity --model_s resnet8x4 -a 0 -b 3000 --trial 1 "$@"
# CC
"$PY" validate/train_student.py --path_t "$T" --distill correlation --model_s resnet8x4 -a 0 -b 0.02 --trial 1 "$@"
# VID
"$PY" validate/train_student.py --path_t "$T" --distill vid --model_s resnet8x4 -a 0 -b 1 --trial 1 "$@"
# RKD
"$PY" validate/train_student.py --path_t "$T" --distill rkd --model_s resnet8x4 -a 0 -b 1 --trial 1 "$@"
# PKT
"$PY" validate/train_student.py --path_t "$T" --distill pkt --model_s resnet8x4 -a 0 -b 30000 --trial 1 "$@"
# AB
"$PY" validate/train_student.py --path_t "$T" --distill abound --model_s resnet8x4 -a 0 -b 1 --trial 1 "$@"
# FT
"$PY" validate/train_student.py --path_t "$T" --distill factor --model_s resnet8x4 -a 0 -b 200 --trial 1 "$@"
# FSP
"$PY" validate/train_student.py --path_t "$T" --distill fsp --model_s resnet8x4 -a 0 -b 50 --trial 1 "$@"
# NST
"$PY" validate/train_student.py --path_t "$T" --distill nst --model_s resnet8x4 -a 0 -b 50 --trial 1 "$@"
# CRD
"$PY" validate/train_student.py --path_t "$T" --distill crd --model_s resnet8x4 -a 0 -b 0.8 --trial 1 "$@"

# CRD+KD
"$PY" validate/train_student.py --path_t "$T" --distill crd --model_s resnet8x4 -a 1 -b 0.8 --trial 1 "$@"
