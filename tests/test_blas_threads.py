"""BLAS thread limits hold however gvgap is imported (issue 8: a script importing numpy first
kept a multi-threaded OpenBLAS and one RM fit took 29x the CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = (
    "import numpy, scipy.linalg\n"
    "import gvgap\n"
    "from threadpoolctl import threadpool_info\n"
    "print(sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}))\n"
)


def _blas_threads(extra_env: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env |= {"PYTHONPATH": str(ROOT), **extra_env}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.mark.skipif(os.cpu_count() == 1, reason="one core: BLAS is single-threaded anyway")
def test_numpy_imported_first_still_single_threaded():
    """numpy (and scipy's BLAS) loaded before gvgap: limited to 1 thread in place."""
    assert _blas_threads({}) == "[1]"


def test_user_setting_is_respected():
    """An explicit OPENBLAS_NUM_THREADS set before import wins."""
    assert _blas_threads({"OPENBLAS_NUM_THREADS": "2"}) == "[2]"
