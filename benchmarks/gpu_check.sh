#!/usr/bin/env bash
# One prepared GPU check for the torch path (issues 10, 18). Never required by CI.
#
#   bash benchmarks/gpu_check.sh            # on a machine with one CUDA device (H100/H200)
#   OUT=/some/dir bash benchmarks/gpu_check.sh
#   DEVICE=cpu LOG2_LEAVES=20 H6_VOCAB=4 H6_HORIZON=5 bash benchmarks/gpu_check.sh  # dry run
#
# Needs only torch and the project (run from anywhere; it cd's to the repo root). Budget
# ≤ 8 min on one H100/H200: every step has its own timeout, and a failed step does not stop
# the others (the exit status is that of the first failure). With DEVICE=cuda and no CUDA
# device it prints "SKIPPED: no CUDA device" and exits 0 without running anything. Steps:
#   1. device: torch version, device name, dtype the project picks (float32 on CUDA);
#   2. tests: the torch tests (tests/test_nn_*.py) on the device (GVGAP_TEST_DEVICE), float64;
#   3. softvi: big-tree soft VI vs one exp pass, bench_softvi_torch.py at 2^LOG2_LEAVES
#      leaves (default 2^30, float32, 4 GiB);
#   4. forward: one forward + backward of the tree transformer policy and RM at
#      H6_VOCAB^H6_HORIZON leaves (default 4^8 = 65,536), float32 and float64, ms;
#   5. h6_run: one h6_neural run at that size on the device (float32), timed, with both
#      capacity residuals and the capacity measurement's share of the run;
#   6. dtype: float32 vs float64 on the device (same parameters; same run trained in both)
#      at 4^6 leaves;
# everything printed and saved under $OUT (default: a fresh temporary directory).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-python}
DEVICE=${DEVICE:-cuda}
LOG2_LEAVES=${LOG2_LEAVES:-30}
H6_VOCAB=${H6_VOCAB:-4}
H6_HORIZON=${H6_HORIZON:-8}
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

if [ "${DEVICE%%:*}" = "cuda" ] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "SKIPPED: no CUDA device (DEVICE=$DEVICE); dry-run on CPU with DEVICE=cpu"
    exit 0
fi

step device 60 "$PY" -c "
import torch
from gvgap.nn.device import resolve
p = resolve('$DEVICE', 'auto')
print('torch', torch.__version__, 'device', p.device, p.dtype,
      torch.cuda.get_device_name() if p.is_cuda else 'cpu')"

export GVGAP_TEST_DEVICE=$DEVICE
step tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_nn_parity.py \
    tests/test_nn_classes.py tests/test_nn_train.py tests/test_nn_bigtree.py \
    tests/test_nn_device.py tests/test_nn_stacked.py tests/test_nn_capacity.py

step softvi 90 "$PY" benchmarks/bench_softvi_torch.py --device "$DEVICE" \
    --log2-leaves "$LOG2_LEAVES" --repeat 5

step forward 60 "$PY" benchmarks/bench_neural.py --part forward --device "$DEVICE" \
    --vocab "$H6_VOCAB" --horizon "$H6_HORIZON"

step h6_run 240 "$PY" benchmarks/bench_neural.py --part run --device "$DEVICE" \
    --vocab "$H6_VOCAB" --horizon "$H6_HORIZON"

step dtype 150 "$PY" benchmarks/bench_neural.py --part dtype --device "$DEVICE" \
    --vocab 4 --horizon 6

echo "gpu_check: outputs in $OUT; status $status"
exit "$status"
