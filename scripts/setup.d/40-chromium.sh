#!/usr/bin/env bash
# Debian's Chromium for the console's browser tests (driven by Playwright for Python through
# executable_path=/usr/bin/chromium; downloading a browser build is not possible here).
set -euo pipefail
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing chromium: run 'sudo apt-get install -y --no-install-recommends chromium'" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
chromium --version 2>/dev/null | head -n 1
