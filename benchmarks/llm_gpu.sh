#!/usr/bin/env bash
# LLM-scale GPU benchmark of gvgap (issue 16), sized for a few device-minutes on one H100/H200:
#  1. gvgap's DPO step vs a plain PyTorch loop vs TRL's DPOTrainer at the Pythia-410M shape
#     (batch 8 pairs, 256 prompt + 256 completion tokens, bf16 autocast), one run, with the
#     ratio gvgap/TRL (goal >= 1.5x); and gvgap's KV-cache sampler (256-token completions),
#     which dominates online DPO.
#     Reference numbers (H200, measured elsewhere at issue 11): TRL 55.1 samples/s, plain 85.9.
#  2. one end-to-end `gvgap llm run` (sims/llm_gpu.toml: ~18M-parameter model, three tasks, two
#     seeds, checkpointed: rerun the same line to resume), printing the paper's table and the
#     per-task verdict records.
# usage (repo root, CUDA machine): benchmarks/llm_gpu.sh [OUT_DIR]   (default runs/llm_gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
OUT=${1:-runs/llm_gpu}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
"$PY" -c "import torch, transformers, accelerate, trl; print('torch', torch.__version__, 'trl', trl.__version__)" \
  || echo "missing packages: pip install -e '.[hf]'"
start=$(date +%s)
timeout 240 "$PY" benchmarks/llm_gpu.py --presets pythia-410m --steps 10 || echo "throughput benchmark: exit $?"
echo "throughput part: $(( $(date +%s) - start )) s"
left=$(( 540 - ($(date +%s) - start) ))
timeout "$left" "$PY" -m gvgap.cli llm run sims/llm_gpu.toml --out "$OUT" \
  || echo "end-to-end run stopped (exit $?); rerun this line to resume from its checkpoints"
echo "total: $(( $(date +%s) - start )) s"
