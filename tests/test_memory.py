"""The memory estimate covers what a run allocates (issue 19): the estimate of
``base.estimate_memory`` against the peak RSS of the same run in a fresh process, on a grid
of sizes and protocols (h6_gap, whose ladder, kernels and window features grow fastest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gvgap.experiments import h6_gap
from gvgap.experiments.base import estimate_memory, make_config

# The peak is read from /proc/self/status (VmHWM, this address space's high-water mark):
# getrusage's ru_maxrss survives exec, so after a fork of a large test process it reports the
# parent's size, not the run's.
PROBE = """
import json, sys
import numpy as np
from gvgap.experiments import h6_gap
from gvgap.experiments.base import make_config
cfg = make_config(h6_gap.Config, json.loads(sys.argv[1]))
h6_gap.run(cfg, rng=np.random.default_rng(0), instance_rng=np.random.default_rng(1))
kb = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM"))
print(kb * 1024)
"""

GRID = [
    {"generator": "dense", "vocab": 3, "horizon": 7, "protocol": "learned", "n_pairs": 256},
    {"generator": "dense", "vocab": 4, "horizon": 5, "protocol": "well_specified", "n_pairs": 64},
    {"generator": "sum_mod", "vocab": 2, "horizon": 14, "protocol": "gift", "n_pairs": 512},
    {"generator": "dense", "vocab": 3, "horizon": 9, "protocol": "gift_tabular", "n_pairs": 256},
    {
        "generator": "additive_full",
        "vocab": 2,
        "horizon": 6,
        "n_prompts": 4,
        "protocol": "learned",
        "n_pairs": 256,
    },
]


@pytest.mark.parametrize(
    "overrides", GRID, ids=lambda o: f"{o['protocol']}-{o['vocab']}x{o['horizon']}"
)
def test_estimate_covers_the_measured_peak(overrides):
    cfg = make_config(h6_gap.Config, {**overrides, "lam_grid": "short"})
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps({**overrides, "lam_grid": "short"})],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    peak = int(out.stdout.strip().splitlines()[-1])
    need = estimate_memory(cfg)
    assert peak <= need, (peak / 2**20, need / 2**20)
    assert need <= 64 * peak  # an estimate, not a bound so loose it refuses what would fit


def test_huge_window_ladders_are_refused_before_anything_runs():
    """V = 1000, H = 2 under the learned protocol: window0 alone is 10⁶ leaves × 1998 dense
    columns — refused on one line naming the sizes (it used to be estimated at 1 GiB and
    then allocate 15 GiB). The gift protocol, which fits no window rung, fits."""
    from gvgap.errors import UserError

    with pytest.raises(UserError, match="GiB per run"):
        make_config(h6_gap.Config, {"vocab": 1000, "horizon": 2})
    make_config(h6_gap.Config, {"vocab": 1000, "horizon": 2, "protocol": "gift"})
