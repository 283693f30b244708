#!/usr/bin/env bash
# Install everything the tests need into .venv and run them (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
# The end-to-end browser test drives a system chromium (Debian's package, or $VIT_DEMO_CHROMIUM).
if [ -z "${VIT_DEMO_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "no chromium: install it, or set VIT_DEMO_CHROMIUM to a Chrome/Chromium binary" >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q -r requirements-dev.txt
python -m pytest "$@"
