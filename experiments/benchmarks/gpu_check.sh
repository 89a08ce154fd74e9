#!/usr/bin/env bash
# The RAM's GPU checks, as one prepared run for a lent GPU machine (device tool).
#
# Here, once:   make gpu-wheels        (zarr and its needs for the GPU machine's Python 3.12)
# Device tool:  run  command="bash experiments/benchmarks/gpu_check.sh"  carry=[".whl"]
#               timeout_s=540 (not run yet: adjust once its duration is known)
#
# It runs tests/tiers/test_ram_cuda.py (the RAM on CUDA against the CPU, float64), then the
# scaling benchmark on the GPU with fresh and with filled memories, then the dense RAM beside
# the `dnc` package (issue 15's GPU column; the dnc wheel comes from .whl/). It leaves 8 files
# under $OUT (the device tool brings back 8 at most), or experiments/results/ when OUT is
# unset: gpu_check.log (GPU, torch, test and benchmark output),
# sparse_ram_scaling_cuda{,_prefill1}.{md,csv,png} and dense_ram_throughput_cuda.md. The GPU machine has torch and Lightning
# but no zarr and no network; the wheels from .whl/ go to /tmp/site. It has no FAISS either:
# the GPU column is the exact backend (FAISS's IVF lists live on the CPU anyway).
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-experiments/results}
log="$out/gpu_check.log"
mkdir -p "$out"
: >"$log"
if ls .whl/*.whl >/dev/null 2>&1; then
    # Everything but the dnc package, which the dense benchmark installs into its own folder.
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site $(ls .whl/*.whl | grep -v '/dnc-') 2>&1 | tee -a "$log" || exit 1
fi
# The checkout itself (not installed): a script run by path does not see the current folder.
export PYTHONPATH="/tmp/site:$PWD"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$log"
python3 -c "import torch, tiered.tiers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" \
    2>&1 | tee -a "$log" || exit 1
status=0
python3 -m pytest -q -p no:cacheprovider -rs tests/tiers/test_ram_cuda.py 2>&1 | tee -a "$log" \
    || status=1
python3 experiments/benchmarks/sparse_ram_scaling.py --device cuda --out "$out" 2>&1 \
    | tee -a "$log" || status=1
python3 experiments/benchmarks/sparse_ram_scaling.py --device cuda --prefill 1 --dense-slots \
    --out "$out" 2>&1 | tee -a "$log" || status=1
python3 experiments/benchmarks/dense_ram_throughput.py --device cuda --slots 256 1024 \
    --rounds 1 --sides dnc tiered --dnc-dir /tmp/dnc --find-links .whl --out "$out" 2>&1 \
    | tee -a "$log" || status=1
exit $status
