#!/usr/bin/env bash
# Start the IOC with the built-in detector simulator; arguments go on to pimega-ioc.
# Installs into .venv first unless it holds an install of this pyproject.toml already
# (so a container that installed at build time starts offline).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cmp -s pyproject.toml .venv/pimega-installed.toml; then
    bash scripts/install.sh
fi
exec .venv/bin/pimega-ioc --sim "$@"
