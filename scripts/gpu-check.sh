#!/usr/bin/env bash
# The device check, for a session lent a GPU machine: `pimega bench --backend gpu --json` (as
# `python -m pimega.cli.bench_gpu --json`: the `pimega` command imports the whole IOC stack,
# which that machine lacks), then the `gpu` and `gpusim` tests. Under 6 minutes.
#
# That machine is offline, with Python 3.12, CuPy, numba, numba-cuda, h5py and scikit-image;
# its numpy (2.5) is too new for numba-cuda 0.30 (np.row_stack is gone) and it lacks
# bitshuffle (the writer's BSLZ4), tqdm (`pimega recon`) and hdf5plugin (optional: the GPU tests write plain HDF5).
# It takes what is missing as wheels in .whl/ (git-ignored, 28 MB), made here with
#   .venv/bin/pip download --only-binary=:all: --python-version 3.12 --no-deps -d .whl \
#       "numpy<2.5" bitshuffle tqdm pytest pytest-timeout iniconfig pluggy packaging
# and carried with the tree (the run tool's carry: [".whl"]). The project runs from ioc/
# (PYTHONPATH), not installed. Writes gpu-check.log and gpu-bench.json into $OUT when set
# (else into a new temporary folder); exits non-zero when the tests or the bench fail.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$(mktemp -d)}"
mkdir -p "$out"
exec > >(tee "$out/gpu-check.log") 2>&1
python="${PYTHON:-python3}"

wanted=()
"$python" -c "import pytest, pytest_timeout" 2>/dev/null || wanted+=(pytest pytest-timeout)
"$python" -c "import bitshuffle" 2>/dev/null || wanted+=(bitshuffle)
"$python" -c "import tqdm" 2>/dev/null || wanted+=(tqdm)
"$python" -c "import numpy, sys; sys.exit(tuple(map(int, numpy.__version__.split('.')[:2])) >= (2, 5))" \
    2>/dev/null || wanted+=("numpy<2.5")
if ((${#wanted[@]})); then
    deps="$(mktemp -d)"
    "$python" -m pip install --quiet --no-index --no-deps --find-links .whl --target "$deps" \
        "${wanted[@]}" $( [[ " ${wanted[*]} " == *" pytest "* ]] && echo iniconfig pluggy packaging )
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
# the figures first: they come back even if the tests later run out of time
timeout 100 "$python" -m pimega.cli.bench_gpu --json > "$out/gpu-bench.json" || status=$?
cat "$out/gpu-bench.json"
mapfile -t files < <(grep -lE 'pytest\.mark\.gpu(sim)?\b' tests/test_*.py)
# the conftest needs the Channel Access client stack; these tests do not
timeout 240 "$python" -m pytest -m "gpu or gpusim" --noconftest -p no:cacheprovider \
    "${files[@]}" || status=$?
echo "gpu-check: exit status $status; log and bench JSON in $out"
exit "$status"
