#!/usr/bin/env bash
# The device check, for a session lent a GPU machine: the `gpu` and `gpusim` tests, then
# `pimega bench --backend gpu --json` (as `python -m pimega.cli.bench_gpu --json`: the
# `pimega` command imports the whole IOC stack, which that machine lacks). Under 8 minutes.
#
# That machine is offline, with Python 3.12, CuPy, numba, numba-cuda, h5py and scikit-image.
# It takes pytest and pytest-timeout as wheels in .whl/ (git-ignored), made here with
#   .venv/bin/pip download --only-binary=:all: --python-version 3.12 -d .whl pytest pytest-timeout
# and carried with the tree (the run tool's carry: [".whl"]). The project runs from ioc/
# (PYTHONPATH), not installed. Writes gpu-check.log and gpu-bench.json into $OUT when set
# (else into a new temporary folder); exits non-zero when the tests or the bench fail.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
exec > >(tee "$out/gpu-check.log") 2>&1
python="${PYTHON:-python3}"

if ! "$python" -c "import pytest, pytest_timeout" 2>/dev/null; then
    deps="$(mktemp -d)"
    "$python" -m pip install --quiet --no-index --find-links .whl --target "$deps" \
        pytest pytest-timeout
    export PYTHONPATH="$deps${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/ioc${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$python" - <<'EOF'
import importlib.metadata as m
for name in ("numpy", "numba", "numba-cuda", "cuda-bindings"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "missing")
try:
    import cupy
    print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion())
except Exception as exc:  # the tests say the same, as a skip reason
    print("cupy unusable:", exc)
EOF

status=0
mapfile -t files < <(grep -lE 'pytest\.mark\.gpu(sim)?\b' tests/test_*.py)
# the conftest needs the Channel Access client stack; these tests do not
timeout 330 "$python" -m pytest -m "gpu or gpusim" --noconftest -p no:cacheprovider \
    "${files[@]}" || status=$?
timeout 120 "$python" -m pimega.cli.bench_gpu --json > "$out/gpu-bench.json" || status=$?
cat "$out/gpu-bench.json"
echo "gpu-check: exit status $status; log and bench JSON in $out"
exit "$status"
