#!/usr/bin/env bash
# Install the real components the tests and benchmarks start on loopback. Each step in
# scripts/setup.d/ is idempotent and quick once its component is there (cached under
# ${VLLM_CANARY_CACHE:-~/.cache/vllm-canary}).
set -euo pipefail
cd "$(dirname "$0")/.."
for step in scripts/setup.d/*.sh; do
  [ -e "$step" ] || continue
  echo "==> $(basename "$step")"
  bash "$step"
done
