#!/usr/bin/env bash
# Install the project with its test tools into .venv, then run the checks and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/ruff check ioc tests
.venv/bin/lint-imports
.venv/bin/pyright
.venv/bin/python -m pytest "$@"
