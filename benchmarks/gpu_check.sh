#!/usr/bin/env bash
# The GPU checks, in one go, on a machine where torch sees CUDA:
#   bash benchmarks/gpu_check.sh [OUTDIR]
# 1. tests/test_gpu.py: placement (cuda, auto, [cuda, cpu]), the MLP on CUDA against the CPU,
#    a real CUDA out-of-memory error halved and the working batch size lowered;
# 2. the MLP benchmark with the model on cuda (servd against the same model called in-process);
# 3. the same OOM test with the failed call's traceback kept alive, to show why servd drops it.
set -u
out=${1:-benchmarks/results}
PYTHON=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1  # only the plugins named below
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$out/gpu.txt"

timeout 240 "$PYTHON" -m pytest -p pytest_asyncio.plugin -p pytest_timeout -p no:cacheprovider -W ignore::DeprecationWarning -q -rA tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.txt"

timeout 240 "$PYTHON" -m benchmarks.mlp --device cuda --clients 1,64,256 --warmup 1 --duration 3 2>&1 \
  | tee "$out/gpu_mlp.txt"

cp servd/workers.py /tmp/workers.py.orig
sed -i 's/^        error.__traceback__ = None$/        pass  # traceback kept (experiment)/' servd/workers.py
timeout 120 "$PYTHON" -m pytest -p pytest_asyncio.plugin -p pytest_timeout -p no:cacheprovider -W ignore::DeprecationWarning -q tests/test_gpu.py -k out_of_memory 2>&1 \
  | tail -n 15 | tee "$out/gpu_oom_traceback_kept.txt"
cp /tmp/workers.py.orig servd/workers.py
