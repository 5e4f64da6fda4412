#!/usr/bin/env bash
# One-shot AGF speed check on a machine with a CUDA GPU (about 4 minutes): the CUDA table, then the CPU
# table with 2 threads, for ResNet-50, VGG-19 and AlexNet. Needs torch + torchvision only (no faiss,
# captum, wandb or lightning). Usage, from anywhere: bash benchmarks/device_check.sh
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PYEOF' || exit 2
import torch, torchvision
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA available: {torch.cuda.is_available()}",
      f"({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")
PYEOF
echo "== CUDA =="
timeout 100 "$PY" benchmarks/agf_speed.py --device cuda --models resnet50,vgg19,alexnet --rounds 5 \
  || echo "(CUDA run stopped: exit status $?)"
echo "== CPU, 2 threads =="
timeout 130 "$PY" benchmarks/agf_speed.py --device cpu --threads 2 --models resnet50,vgg19,alexnet --rounds 2 \
  || echo "(CPU run stopped: exit status $?)"
