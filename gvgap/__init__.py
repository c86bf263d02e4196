"""gvgap — exact, numerical and experimental tests of why RL beats maximum likelihood in
fine-tuning: tree problems with a tunable generation–verification gap, offline and online
learners, theorem checks, hypothesis experiments, sweeps, figures and reports."""

import os as _os

# gvgap parallelises over runs (process pool / Ray), never inside BLAS: its matrices are small,
# and multi-threaded BLAS on them is several times slower (measured 6x on 2 cores). Set these
# variables yourself before importing numpy to override.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    _os.environ.setdefault(_var, "1")

__version__ = "0.1.0"

from gvgap.envs.tree_env import TreeEnv, make_env  # noqa: E402 (after the BLAS setting)
from gvgap.errors import UserError  # noqa: E402
from gvgap.theory import soft_value_iteration  # noqa: E402

__all__ = ["TreeEnv", "UserError", "__version__", "make_env", "soft_value_iteration"]
