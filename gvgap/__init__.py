"""gvgap — exact, numerical and experimental tests of why RL beats maximum likelihood in
fine-tuning: tree problems with a tunable generation–verification gap, offline and online
learners, theorem checks, hypothesis experiments, sweeps, figures and reports."""

import os as _os
import sys as _sys

# gvgap parallelises over runs (process pool / Ray), never inside BLAS: its matrices are small,
# and multi-threaded BLAS on them is several times slower (measured 6x on 2 cores, and 10-100x
# per small LAPACK call on a busy box). Set OPENBLAS_NUM_THREADS / OMP_NUM_THREADS /
# MKL_NUM_THREADS yourself before importing gvgap to override (the first one set is used).
_USER_THREADS = next(
    (
        _os.environ[v]
        for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
        if v in _os.environ
    ),
    None,
)
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")


def _limit_loaded_blas() -> None:
    """The variables above only reach BLAS libraries loaded *after* this import; a script that
    imported numpy first already runs a multi-threaded pool, so limit it in place
    (threadpoolctl; the limit holds for the life of the process)."""
    if "numpy" not in _sys.modules:
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return
    try:
        limit = int(_USER_THREADS) if _USER_THREADS is not None else 1
    except ValueError:
        limit = 1
    threadpool_limits(limits=max(limit, 1), user_api="blas")


_limit_loaded_blas()

__version__ = "0.1.0"

from gvgap.envs.tree_env import TreeEnv, make_env  # noqa: E402 (after the BLAS setting)
from gvgap.errors import UserError  # noqa: E402
from gvgap.theory import soft_value_iteration  # noqa: E402

__all__ = ["TreeEnv", "UserError", "__version__", "make_env", "soft_value_iteration"]
