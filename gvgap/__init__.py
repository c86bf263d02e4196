"""gvgap — exact, numerical and experimental tests of why RL beats maximum likelihood in
fine-tuning: tree problems with a tunable generation–verification gap, offline and online
learners, theorem checks, hypothesis experiments, sweeps, figures and reports."""

import os as _os
import sys as _sys

#: The line and exit code of an interrupted CLI (also printed by gvgap.cli.main).
INTERRUPTED = "gvgap: interrupted (run the same command again to resume)"
EXIT_INTERRUPTED = 130


def _cli_startup_sigint(signum, frame):  # pragma: no cover - exercised in a subprocess
    """Ctrl-C while ``gvgap …`` is still importing (before ``cli.main`` runs): nothing has been
    written and no child started, so end with the CLI's one line instead of a traceback."""
    _os.write(2, (INTERRUPTED + "\n").encode())
    _os._exit(EXIT_INTERRUPTED)


def _guard_cli_startup() -> None:
    """Install :func:`_cli_startup_sigint` when this process is the ``gvgap`` command (the
    console script, or ``python -m gvgap…``) and SIGINT still has Python's default handler;
    ``cli.main`` restores the default as its first step (issue 19: a Ctrl-C 0.4 s after start
    printed a KeyboardInterrupt traceback from the imports). Library users are unaffected."""
    import contextlib
    import signal

    argv = getattr(_sys, "orig_argv", None) or []
    script = _os.path.basename(_sys.argv[0]) if getattr(_sys, "argv", None) else ""
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else ""
    if script != "gvgap" and not module.startswith("gvgap"):
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        with contextlib.suppress(ValueError):  # not the main thread: leave it
            signal.signal(signal.SIGINT, _cli_startup_sigint)


_guard_cli_startup()

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
