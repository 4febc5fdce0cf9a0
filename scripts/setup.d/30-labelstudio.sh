#!/usr/bin/env bash
# Label Studio 1.23 + label-studio-sdk 2.x in their own venv (≈1 GB, so kept out of .venv),
# for the data-loop tests that push to and pull from a real server. Idempotent: a venv whose
# `label-studio` already reports 1.23 is left alone.
set -euo pipefail
CACHE="${VLLM_CANARY_CACHE:-$HOME/.cache/vllm-canary}"
VENV="$CACHE/venv-labelstudio"
PYTHON="${PYTHON:-python3}"
if [ -x "$VENV/bin/label-studio" ] && "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m
assert m.version("label-studio").startswith("1.23.")
assert m.version("label-studio-sdk").startswith("2.")
PY
then
  echo "label-studio $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))') in $VENV"
  exit 0
fi
mkdir -p "$CACHE"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q "label-studio>=1.23,<1.24" "label-studio-sdk>=2,<3" 2>&1 \
  | { grep -v "^WARNING: Location" || true; }
echo "label-studio $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))') installed in $VENV"
