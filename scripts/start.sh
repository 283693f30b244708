#!/usr/bin/env bash
# Install the app into .venv and start it on http://127.0.0.1:7860 (the README's start command).
# With network, CIFAR-10 downloads in the background (the examples and the fine-tune tab), as
# on a Space; without, the app says what is missing and starts with what it has.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
echo "Installing the requirements into .venv (the first time takes a few minutes)..."
pip install -q -r requirements.txt
export VIT_DEMO_DOWNLOAD_DATA="${VIT_DEMO_DOWNLOAD_DATA:-1}"
exec python app.py
