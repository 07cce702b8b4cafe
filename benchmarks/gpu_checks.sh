#!/bin/bash
# Everything to check on a CUDA machine, in one go (the lent device machines are short-lived):
#   benchmarks/gpu_checks.sh [OUT_DIR]
# Expects python3 with numpy, scipy, h5py, torch (CUDA), cupy, threadpoolctl and pytest. Requirements
# missing there (a machine without a package index) go as wheels in .whl/, made beforehand with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl extra-data extra-geom dask ...
#   pip wheel --no-deps -w .whl .          # this package, for its entry points
# and the classifier's agreement frames in .gpudata/realistic512.npz (benchmarks/bench_gpu.py
# --make-classifier-frames); PyNX's best-start files in .gpudata/pynx/ add a recipe sweep (last step).
# Writes logs and bench_gpu.json under OUT_DIR (docs/benchmarks.md, "GPU").
set -u -o pipefail
export PYTHONUNBUFFERED=1
out=${1:-${OUT:-gpu-out}}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$out/env.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=$PWD:/tmp/site
else
    export PYTHONPATH=$PWD
fi
python3 -c "import sys, numpy, scipy, numba, cupy, torch; print(sys.version.split()[0], 'numpy', numpy.__version__, 'scipy', scipy.__version__, 'numba', numba.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$out/env.txt"
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log under $out, report the exit status
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
    tail -n 25 "$out/$name.log"
}
frames=()
[ -f .gpudata/realistic512.npz ] && frames=(--classifier-frames .gpudata/realistic512.npz)
step pytest_gpu 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests
step bench 240 python3 benchmarks/bench_gpu.py --json "$out/bench_gpu.json" --markdown "$out/bench_gpu.md" "${frames[@]}"
step pytest_phasing 60 python3 -m pytest -q -p no:cacheprovider tests/test_phasing_stage.py tests/test_phasing_engine.py
step spi_mock 90 python3 benchmarks/spi_phasing_mock.py /tmp/spi-mock   # spi-phasing.toml (positivity), device auto
cp /tmp/spi-mock/*.md /tmp/spi-mock/*.png "$out/" 2>/dev/null   # the report, not the mock run (hundreds of MB)
cat > /tmp/show_results.py <<'PY'
import sys, h5py
with h5py.File(sys.argv[1], "r") as f:
    f.visititems(lambda name, obj: print(name, obj.shape) if isinstance(obj, h5py.Dataset) and "INSTRUMENT" in name else None)
    runs = []
    f["RUN"].visititems(lambda name, obj: runs.append(obj[()]) if isinstance(obj, h5py.Dataset) else None)
    print("stage devices:", [s for s in ("\"device\": \"cuda\"", "\"device\": \"cpu\"") if any(s in str(v) for v in runs)])
PY
step phasing_chain 100 bash -c "python3 -m xfel_dl_plugins.cli simulate xfel_dl_plugins/simulation/configs/pr772.toml --output /tmp/p.cxi --n 32 --quiet --overwrite && python3 -m xfel_dl_plugins.cli run manifests/cdi-phasing.toml --input /tmp/p.cxi --output /tmp/phased.h5 --quiet --overwrite && python3 /tmp/show_results.py /tmp/phased.h5"
# Recipe variants against PyNX's best start, 6 draws per pattern, where PyNX's best-start files are at
# hand (.gpudata/pynx: selection_trials.py pynx-best / gap_quality.py caches); SWEEP_VARIANTS: which.
if ls .gpudata/pynx/pynx_best_*.npy >/dev/null 2>&1; then
    step sweep 300 python3 benchmarks/recipe_sweep.py --pynx .gpudata/pynx --replicas 6 --device cuda \
        --variants ${SWEEP_VARIANTS:-nogrow base runs2} --json "$out/sweep.json"
fi
cat "$out/summary.txt"
