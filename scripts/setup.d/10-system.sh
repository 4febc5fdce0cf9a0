#!/usr/bin/env bash
# Debian packages: Prometheus (+ promtool) for metric tests, nginx as a benchmark peer, jq for
# the README's curl examples.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v jq >/dev/null || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing ${need[*]}: run 'sudo apt-get install -y ${need[*]}'" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
prometheus --version 2>&1 | head -n 1
