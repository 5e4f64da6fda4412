#!/usr/bin/env bash
# One-shot AGF speed check on a machine with a CUDA GPU (about 6 minutes): the CUDA table, then the CPU
# table with 2 threads, for ResNet-50, VGG-19 and AlexNet. Needs torch + torchvision only (no faiss,
# captum, wandb or lightning). With a checkout of the authors' AGFVisualization at $REF (default
# .ref/AGFVisualization, git-ignored) their code is timed beside ours at batch 1.
# Usage, from anywhere: [REF=path] bash benchmarks/device_check.sh
set -u
cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PYEOF' || exit 2
import torch, torchvision
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA available: {torch.cuda.is_available()}",
      f"({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")
PYEOF
REF=${REF:-.ref/AGFVisualization}
REF_ARGS=()
[ -d "$REF/modules" ] && REF_ARGS=(--reference "$REF")
echo "== CUDA =="
timeout 150 "$PY" benchmarks/agf_speed.py --device cuda --models resnet50,vgg19,alexnet --rounds 5 "${REF_ARGS[@]}" \
  || echo "(CUDA run stopped: exit status $?)"
echo "== CPU, 2 threads =="
timeout 330 "$PY" benchmarks/agf_speed.py --device cpu --threads 2 --models resnet50,vgg19,alexnet --rounds 3 "${REF_ARGS[@]}" \
  || echo "(CPU run stopped: exit status $?)"
