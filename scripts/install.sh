#!/usr/bin/env bash
# Install the project into .venv, with the extras named as arguments (e.g. `gpu`, `test`).
# Keeps a copy of the pyproject.toml it installed, so that start.sh knows the venv is current.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=$(IFS=,; echo "$*")
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
cp pyproject.toml .venv/pimega-installed.toml
