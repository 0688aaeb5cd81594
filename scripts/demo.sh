#!/usr/bin/env bash
# The whole toolkit on the embedded demo, on CPU, in about ten minutes:
#   demo data (scikit-learn's digits as 32x32 PNGs) -> teacher trained on the full train split
#   -> relabel the IPC2 "distilled" subset (20 images, 1000 epochs of crops)
#   -> one student from the soft labels, one from hard labels -> a table of top-1 on val.
# Set DEMO_DIR to put the outputs elsewhere (default: demo/ in the repository).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/venv.sh"
cd "$root"
py=.venv/bin/python
out="${DEMO_DIR:-demo}"
data="$out/data"
runs="$out/runs"
rm -rf "$runs"   # a fresh teacher needs a fresh store (relabel refuses to mix teachers)
mkdir -p "$runs"

echo "== 1/5 demo data"
$py scripts/make_demo_data.py --out "$data" --ipc 2

echo "== 2/5 teacher: democnn on the full train split (hard labels)"
$py validate/train_FKD_parallel.py --train-dir "$data/train" --val-dir "$data/val" \
    --model democnn --input-size 32 --min-scale-crops 0.5 --crop-pct 1.0 \
    -b 64 --epochs 20 --lr-schedule cosine --eval-interval 5 --output-dir "$runs/teacher"

echo "== 3/5 relabel IPC2 with the teacher: 1000 epochs x 1 batch of 20"
$py relabel/generate_soft_label.py --data "$data/ipc2" --teacher-path "$runs/teacher/checkpoint.pth" \
    --fkd-path "$runs/store_ipc2" --epochs 1000 -b 20 --input-size 32 --min-scale-crops 0.5 \
    --use-fp16 --print-freq 100

echo "== 4/5 student from the soft labels (KL, T=4)"
$py validate/train_FKD_parallel.py --train-dir "$data/ipc2" --val-dir "$data/val" \
    --fkd-path "$runs/store_ipc2" --model democnn --loss-type kl -T 4 --lr-schedule cosine --crop-pct 1.0 \
    --eval-interval 100 --save-interval 100 --output-dir "$runs/student_soft"

echo "== 5/5 student from hard labels (same crops policy, same steps)"
$py validate/train_FKD_parallel.py --train-dir "$data/ipc2" --val-dir "$data/val" \
    --model democnn --input-size 32 --min-scale-crops 0.5 --crop-pct 1.0 \
    -b 20 --epochs 1000 --lr-schedule cosine --eval-interval 100 --save-interval 100 \
    --output-dir "$runs/student_hard"

$py scripts/plot_metrics.py "$runs/student_soft" "$runs/student_hard" --labels "soft labels,hard labels" \
    --out "$out/curves.png"
echo
echo "Top-1 on the held-out split ($data/val, 450 images):"
$py scripts/summarize_runs.py "$runs/teacher" "$runs/student_soft" "$runs/student_hard"
