#!/usr/bin/env bash
# Install the app into .venv and start it on http://127.0.0.1:7860 (the README's start command).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q -r requirements.txt
exec python app.py
