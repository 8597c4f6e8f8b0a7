#!/usr/bin/env bash
# Install the project into .venv and start the IOC with the built-in detector simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/pimega-ioc --sim "$@"
