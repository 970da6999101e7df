#!/usr/bin/env bash
# The real-size benchmarks on CUDA with AMP and channels_last, within 10 minutes on one GPU:
# the gate on 2,000 JPEGs at 224 px (resnet50, vit_b_16) against bare passes, peak memory at
# 2,000 vs 20,000 images, and one recipe (train_speed.py's). Without CUDA it runs the same on CPU
# at a small size, to check the script itself. Prints the ratios; run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
if python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  python -c "import torch; print('GPU:', torch.cuda.get_device_name(0))"
  timeout 480 python benchmarks/gate_speed.py --device cuda --amp --channels-last \
    --n 2000 --memory-sizes 2000,20000 --batch-size 128 --workers 8
  timeout 110 python benchmarks/train_speed.py
else
  echo "no CUDA device: CPU check of the script at a small size"
  python benchmarks/gate_speed.py --device cpu --n 16 --memory-sizes 16,48 --arch resnet18 \
    --size 64 --batch-size 8
fi
