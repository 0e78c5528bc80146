#!/usr/bin/env bash
# APT on UCF101 with ViT-base (the reference recipe: 1 prompt token(s) in blocks 0-11,
# prompt dropout 0.1, reparam, AdamW lr 0.05 per 256 samples, wd 1e-5, 100 epochs, 10 warmup,
# 8 clips per GPU, 2 repeated augmentations, test 5x3 views).
# Override the paths and process count with environment variables, e.g.
#   DATA_PATH=lists/ MODEL_PATH=checkpoint.pth NPROC=2 bash scripts/ucf101/vit_base/finetune.sh
set -euo pipefail
OUTPUT_DIR=${OUTPUT_DIR:-'experiments/APT/UCF101/k400_videomae_pretrain_base_patch16_224_frame_16x4_tube_mask_ratio_0.9_e1600/adam_wd1e-5_lr0.05_pl1_ps0_pe11_drop10'}
DATA_PATH=${DATA_PATH:-'datasets/ucf101/lists/'}
MODEL_PATH=${MODEL_PATH:-'experiments/pretrain/k400_videomae_pretrain_base_patch16_224_frame_16x4_tube_mask_ratio_0.9_e1600/checkpoint.pth'}
NPROC=${NPROC:-8}

NCCL_P2P_DISABLE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python -m torch.distributed.launch --nproc_per_node=${NPROC} \
    run_class_apt.py \
    --model vit_base_patch16_224 \
    --transfer_type prompt \
    --prompt_start 0 \
    --prompt_end 11 \
    --prompt_num_tokens 1 \
    --prompt_dropout 0.1 \
    --data_set UCF101 \
    --nb_classes 101 \
    --data_path ${DATA_PATH} \
    --finetune ${MODEL_PATH} \
    --log_dir ${OUTPUT_DIR} \
    --output_dir ${OUTPUT_DIR} \
    --batch_size 8 \
    --batch_size_val 8 \
    --num_sample 2 \
    --input_size 224 \
    --short_side_size 224 \
    --save_ckpt_freq 10 \
    --num_frames 16 \
    --sampling_rate 4 \
    --opt adamw \
    --lr 0.05 \
    --weight_decay 0.00001 \
    --epochs 100 \
    --warmup_epochs 10 \
    --test_num_segment 5 \
    --test_num_crop 3 \
    --dist_eval \
    --pin_mem \
    --enable_deepspeed \
    --prompt_reparam \
    --is_aa \
    --aa rand-m4-n2-mstd0.2-inc1 \
    "$@"
