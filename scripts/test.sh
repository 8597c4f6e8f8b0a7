#!/usr/bin/env bash
# Install the project with its test tools into .venv, then run the checks and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test
.venv/bin/ruff check ioc tests
.venv/bin/lint-imports
.venv/bin/pyright
.venv/bin/python -m pytest "$@"
