#!/usr/bin/env bash
# Check a GPU machine in one command: attention kernels per dtype, training smoke runs with
# host syncs counted, step time and memory with and without --use_checkpoint, clips/s, a
# 2-GPU kill and resume. Prints one Markdown table; exit 1 if a check failed.
#   bash scripts/gpu_check.sh               # GPU machine (about 1 minute on one H100)
#   bash scripts/gpu_check.sh --device cpu  # the same checks, shrunk, on a CPU
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/gpu_check.py "$@"
