#!/usr/bin/env bash
# One prepared GPU check for the torch path (issue 10). Never required by CI.
#
#   bash benchmarks/gpu_check.sh            # on a machine with one CUDA device (H100/H200)
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#   DEVICE=cpu LOG2_LEAVES=20 bash benchmarks/gpu_check.sh   # dry run of the same steps
#
# Needs only torch and the project (run from anywhere; it cd's to the repo root). Budget
# ≤ 8 min on one H100/H200: every step has its own timeout, and a failed step does not stop
# the others (the exit status is that of the first failure). Steps:
#   1. the torch tests (tests/test_nn_*.py) on the device (GVGAP_TEST_DEVICE), float64;
#   2. the soft-VI ratio: benchmarks/bench_softvi_torch.py at 2^30 leaves (float32, 4 GiB);
#   3. one neural H6 cell (h6_neural, linear family, V=3 H=4 n=64, 8 seeds, on the device),
#      its verdict and figure;
# everything printed and saved under $OUT (default: a fresh temporary directory).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python}
DEVICE=${DEVICE:-cuda}
LOG2_LEAVES=${LOG2_LEAVES:-30}
SEEDS=${SEEDS:-8}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
status=0
step() {  # step NAME TIMEOUT_S CMD...: run, tee to $OUT/NAME.txt, remember the first failure
    local name=$1 limit=$2
    shift 2
    echo "=== $name (timeout ${limit}s) ==="
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: rc=$rc in $((SECONDS - t0))s ==="
    [ "$rc" -ne 0 ] && [ "$status" -eq 0 ] && status=$rc
    return 0
}

step device 30 "$PY" -c "
import torch
from gvgap.nn.device import resolve
p = resolve('$DEVICE')
print('torch', torch.__version__, 'device', p.device, p.dtype,
      torch.cuda.get_device_name() if p.is_cuda else 'cpu')"

export GVGAP_TEST_DEVICE=$DEVICE
step tests 120 "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_nn_parity.py tests/test_nn_classes.py tests/test_nn_train.py \
    tests/test_nn_bigtree.py tests/test_nn_device.py

step softvi 90 "$PY" benchmarks/bench_softvi_torch.py --device "$DEVICE" \
    --log2-leaves "$LOG2_LEAVES" --repeat 5

cat > "$OUT/h6_neural_cell.toml" <<TOML
[sweep]
experiment = "h6_neural"
seeds = $SEEDS

[fixed]
family = "linear"
vocab = 3
horizon = 4
n_pairs = 64
lam_grid = "short"
device = "$DEVICE"

[grid]
arch = ["transformer"]
TOML
step h6_cell 180 "$PY" -m gvgap.cli sweep "$OUT/h6_neural_cell.toml" --out "$OUT/h6_neural" \
    --workers 1
step h6_verdict 45 "$PY" - "$OUT/h6_neural" <<'PYEOF'
import json, sys
from pathlib import Path

from gvgap.experiments import h6_neural as E
from gvgap.sweep.store import RunStore

run_dir = Path(sys.argv[1])
df = RunStore(run_dir).consolidate("h6_neural")
print(df[df["metric"].isin(["J", "regret", "acc_in", "acc_out", "grad_norm"])]
      .groupby(["pipeline", "metric"])["value"].describe()[["count", "mean", "50%", "min", "max"]]
      .to_string())
v = E.verdict(df)
print(json.dumps(v.to_json(), indent=1))
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(6, 4))
E.plot(df, ax=ax)
fig.savefig(run_dir.parent / "h6_neural_cell.png", dpi=120, bbox_inches="tight")
print("figure:", run_dir.parent / "h6_neural_cell.png")
PYEOF

echo "gpu_check: outputs in $OUT; status $status"
exit "$status"
