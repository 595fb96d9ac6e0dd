#!/usr/bin/env bash
# The GPU check (issue 12): `pytest -m gpu`, then short CIFAR-10 ResNet-20 runs of fp32, bnn and
# qat_uint8 on one GPU (trainer=gpu), printing step time and accuracy; one JSON summary in OUT/summary.json.
#   scripts/gpu_check.sh --data-root /tmp/cifar10 [--out gpu_check] [--epochs 2]
#   scripts/gpu_check.sh --dry-run [--out DIR]     # CPU only: what CI runs (tests/test_gpu_check.py)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python scripts/gpu_check.py "$@"
