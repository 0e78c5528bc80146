#!/usr/bin/env bash
# Rebuild src/aptune/assets/demo_backbone.safetensors (+ demo_backbone.md) from scratch:
#   1. unlabelled synthetic motion videos (aptune.data.synthetic.make_clip, all 10 motions,
#      one random seed per video), written as real .mp4 (h264) files;
#   2. `aptune pretrain` (VideoMAE tube masking, raw-pixel loss, mask 0.75) with a fixed seed;
#   3. export of the encoder (keys encoder.*) and the model card.
# Sized for 2 CPU cores (~12 min). Override with env vars, e.g. EPOCHS=2 N_VIDEOS=100 for
# a smoke run, WORK=/somewhere to keep the videos and run folder.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
WORK="${WORK:-${TMPDIR:-/tmp}/aptune_demo_backbone}"
ASSETS="${ASSETS:-$REPO/src/aptune/assets}"
SEED="${SEED:-0}"
N_VIDEOS="${N_VIDEOS:-2000}"
EPOCHS="${EPOCHS:-60}"
WARMUP="${WARMUP:-3}"
BATCH="${BATCH:-32}"
WORKERS="${WORKERS:-2}"
VIDEO_FRAMES=16
VIDEO_SIZE=64

start=$(date +%s)
rm -rf "$WORK"
mkdir -p "$WORK/videos" "$ASSETS"

echo "[1/3] writing $N_VIDEOS synthetic videos to $WORK/videos"
"$PY" - "$WORK/videos" "$N_VIDEOS" "$SEED" "$VIDEO_FRAMES" "$VIDEO_SIZE" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from aptune.data.synthetic import MOTION_CLASSES, make_clip, write_video

out, n, seed, frames, size = Path(sys.argv[1]), *map(int, sys.argv[2:])
for i in range(n):
    rng = np.random.default_rng([seed, i])  # one independent stream per video
    motion = i % len(MOTION_CLASSES)  # all motions equally often; the label is not kept
    write_video(out / f"{i:05d}.mp4", make_clip(motion, frames, (size, size), rng))
EOF

PRETRAIN_FLAGS=(
  --model vit_micro_patch16_224 --decoder_dim 64 --decoder_depth 2 --decoder_num_heads 2
  --mask_type tube --mask_ratio 0.75 --no_norm_pix_loss --num_frames 8 --sampling_rate 2 --input_size 64
  --batch_size "$BATCH" --epochs "$EPOCHS" --warmup_epochs "$WARMUP"
  --lr 8e-3 --min_lr 1e-4 --min_crop_scale 0.8 --weight_decay 0.05 --opt_betas 0.9 0.95
  --seed "$SEED" --num_workers "$WORKERS" --save_ckpt_freq 5 --no_progress
)
echo "[2/3] aptune pretrain ${PRETRAIN_FLAGS[*]}"
"$PY" -m aptune.cli pretrain --data_path "$WORK/videos" --output_dir "$WORK/run" \
  "${PRETRAIN_FLAGS[@]}"

elapsed=$(( $(date +%s) - start ))
echo "[3/3] exporting the encoder to $ASSETS (build took ${elapsed}s)"
DATA=$(printf '{"videos": %d, "generator": "aptune.data.synthetic.make_clip, all 10 MOTION_CLASSES in turn, rng default_rng([%d, i]) per video", "frames_per_video": %d, "size": "%dx%d", "container": "mp4 (h264, 25 fps)", "labels": "none used"}' \
  "$N_VIDEOS" "$SEED" "$VIDEO_FRAMES" "$VIDEO_SIZE" "$VIDEO_SIZE")
"$PY" -m aptune.pretrain.export "$WORK/run" "$ASSETS/demo_backbone.safetensors" \
  --card "$ASSETS/demo_backbone.md" --data "$DATA" --build_time_s "$elapsed" \
  --machine "$(nproc) CPU cores ($(uname -m))" \
  --command "SEED=$SEED N_VIDEOS=$N_VIDEOS EPOCHS=$EPOCHS bash scripts/make_demo_backbone.sh"
echo "done: $ASSETS/demo_backbone.safetensors, $ASSETS/demo_backbone.md"
