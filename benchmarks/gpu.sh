#!/usr/bin/env bash
# The GPU benchmark in one command (a few minutes at most on an H100/H200):
#   bash benchmarks/gpu.sh [--out DIR] [--batch-size N] [--peak-tflops T] [...]   (see benchmarks/gpu_step.py)
# bf16 VideoLLM pretraining steps at the smol preset: tokens/s, MFU, and peak memory unsharded vs
# FSDP2. Prints a table and writes DIR/gpu_step.json (DIR: --out, else $VIDDF_BENCH_OUT, else
# runs/bench_gpu). Uses .venv/bin/python when the project's venv exists, else $PYTHON or python3.
# Without CUDA it falls back to a tiny CPU dry run and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=${PYTHON:-python3}; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# a hard stop well inside a 10-minute slot, so a stuck run still returns what it printed
exec timeout --signal=TERM --kill-after=15 540 "$PY" benchmarks/gpu_step.py "$@"
