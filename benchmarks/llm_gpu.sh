#!/usr/bin/env bash
# LLM-scale GPU benchmark of gvgap (issue 11), <= 8 minutes on one H100/H200:
#  1. tokens/s, samples/s and MFU of gvgap's DPO step on Pythia-410M and 1.4B shapes
#     (batch 8 pairs, 256 prompt + 256 completion tokens, bf16 autocast), beside a plain
#     PyTorch DPO loop measured in the same run and TRL's DPOTrainer when `trl` imports;
#     reference numbers (H200, measured elsewhere): TRL 55 / 37 samples/s, plain loop 86 / 38.5.
#  2. one end-to-end `gvgap llm run` (sims/llm_gpu.toml, ~18M-parameter model, all tasks),
#     printing the paper's table (win rate vs pi_ref under the gold BT model, +- SE).
# usage (repo root, CUDA machine): benchmarks/llm_gpu.sh [OUT_DIR]   (default runs/llm_gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
OUT=${1:-runs/llm_gpu}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
start=$(date +%s)
timeout 210 "$PY" benchmarks/llm_gpu.py --steps 10 || echo "throughput benchmark: exit $?"
echo "throughput part: $(( $(date +%s) - start )) s"
left=$(( 470 - ($(date +%s) - start) ))
timeout "$left" "$PY" -m gvgap.cli llm run sims/llm_gpu.toml --out "$OUT" \
  || echo "end-to-end run stopped (exit $?); rerun this line to resume from its checkpoints"
echo "total: $(( $(date +%s) - start )) s"
