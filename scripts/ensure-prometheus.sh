#!/usr/bin/env bash
# `make up`: the stack's Prometheus (the console's curves come from it). Installs the Debian
# package when root; otherwise says in one line how, and the stack starts without it.
set -uo pipefail
command -v prometheus >/dev/null && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "no prometheus: install it ('sudo apt-get install -y prometheus') for the console's curves; starting without it" >&2
  exit 0
fi
echo "installing prometheus (Debian package) ..." >&2
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
       apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }; then
  echo "could not install prometheus (see apt-get's message above); starting without it" >&2
fi
exit 0
