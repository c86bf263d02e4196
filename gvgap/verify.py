"""``gvgap verify``: the theorems of docs/theory.md §6 (items 1–8) checked numerically.

Each check runs on ``instances`` random problems (random V, H, m, β, π_ref, r*, datasets from
a handful of pairs to full coverage) and reports the maximum error against its tolerance.
The control check must *detect* a difference when the classes are not isomorphic, which
shows the suite is able to fail: its statistic is the fraction of instances where the two
pipelines agree to within ``CONTROL_MIN_DIFF`` (must be at most ``CONTROL_MAX_AGREE``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gvgap import verify_checks
from gvgap.atomic import atomic_write
from gvgap.errors import UserError, check_int
from gvgap.inference import IDENTITY_TOL, within_tolerance
from gvgap.sweep.executors import sigint_here_only, terminate_pool

#: Tolerance of every exact identity (float64 round-off in closed forms).
TOL_IDENTITY = IDENTITY_TOL
#: Tolerance where two converged optimisers are compared (‖∇‖ ≤ 1e-9 at both ends).
TOL_OPTIMUM = 1e-6
#: Control: two pipelines "agree" on an instance when max |ΔP| is below this.
CONTROL_MIN_DIFF = 1e-3
#: Control: at most this fraction of instances may agree.
CONTROL_MAX_AGREE = 0.1


@dataclass(frozen=True)
class Check:
    """A named numerical check of one docs/theory.md §6 item."""

    name: str
    item: str
    fn: Callable[[np.random.Generator], float]
    tolerance: float
    control: bool = False


CHECKS: tuple[Check, ...] = (
    Check("gibbs_softvi_kl", "1", verify_checks.check_gibbs, TOL_IDENTITY),
    Check("local_rm_normalisation", "2", verify_checks.check_local_normalisation, TOL_IDENTITY),
    Check(
        "isomorphic_reference_free", "3", verify_checks.check_isomorphic_reference_free, TOL_OPTIMUM
    ),
    Check("isomorphic_kl_ref", "4", verify_checks.check_isomorphic_kl_ref, TOL_OPTIMUM),
    Check("sft_maxent_irl", "5", verify_checks.check_sft_irl, TOL_OPTIMUM),
    Check("spin_fixed_point", "6", verify_checks.check_spin_fixed_point, TOL_OPTIMUM),
    Check("relabel_no_information", "7", verify_checks.check_relabel, TOL_OPTIMUM),
    Check("rsim_online_eq_restricted_mle", "8", verify_checks.check_rsim, TOL_OPTIMUM),
    Check(
        "control_non_isomorphic_differ",
        "control",
        verify_checks.check_control_non_isomorphic,
        CONTROL_MAX_AGREE,
        control=True,
    ),
)


#: Identities that the hypothesis experiments used to report as evidence and now only
#: cross-reference (a theorem cannot come out otherwise, so it is checked here, not in a
#: verdict): check name → the experiments (and the identity) that rely on it.
HYPOTHESIS_IDENTITIES: dict[str, tuple[str, ...]] = {
    "relabel_no_information": (
        "h1_on_policy_signal (exact BT relabelling by r̂ ∈ R(Π): fixed point = offline optimum)",
        "h3_optimisation (local-RM labeller in the exact online loop from π_ref = DPO)",
    ),
    "isomorphic_reference_free": (
        "h5_rm_generalisation (tabular global RM = local RM: the same BT problem)",
    ),
    "isomorphic_kl_ref": ("h5_rm_generalisation (tabular global RM = local RM with KL to π_ref)",),
}


def _instance(args: tuple[int, int, int]) -> float:
    check_idx, seed, i = args
    rng = np.random.default_rng(np.random.SeedSequence([seed, check_idx, i]))
    return float(CHECKS[check_idx].fn(rng))


def evaluate(check_idx: int, errors: list[float]) -> dict:
    """The JSON record of one check from its per-instance errors."""
    check = CHECKS[check_idx]
    errs = np.asarray(errors)
    if check.control:
        stat = float(np.mean(errs < CONTROL_MIN_DIFF))
        detail = f"median |ΔP| = {np.median(errs):.3g}; agree-fraction"
        passed = bool(stat <= check.tolerance)
    else:
        passed, stat = within_tolerance(errs, check.tolerance)
        detail = "max error"
    return {
        "name": check.name,
        "item": check.item,
        "instances": int(errs.size),
        "max_error": stat,
        "tolerance": check.tolerance,
        "passed": passed,
        "statistic": detail,
        "used_by": list(HYPOTHESIS_IDENTITIES.get(check.name, ())),
    }


def run_checks(instances: int, seed: int, workers: int | None = None) -> list[dict]:
    """Run every check on ``instances`` random problems; deterministic given ``seed``."""
    jobs = [(c, seed, i) for c in range(len(CHECKS)) for i in range(instances)]
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        errs = [_instance(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            try:
                with sigint_here_only():  # map submits every job: the workers start here
                    done = pool.map(_instance, jobs, chunksize=max(1, len(jobs) // (8 * workers)))
                errs = list(done)
            except BaseException:  # Ctrl-C (the workers ignore it) or a failed check
                terminate_pool(pool)
                raise
    return [evaluate(c, errs[c * instances : (c + 1) * instances]) for c in range(len(CHECKS))]


def format_table(records: list[dict]) -> str:
    """The human-readable table printed by ``gvgap verify``."""
    lines = [f"{'item':<8}{'check':<34}{'instances':>9}{'max error':>12}{'tolerance':>11}  result"]
    for r in records:
        lines.append(
            f"{r['item']:<8}{r['name']:<34}{r['instances']:>9}{r['max_error']:>12.2e}"
            f"{r['tolerance']:>11.0e}  {'PASS' if r['passed'] else 'FAIL'}"
        )
    refs = [(r["name"], u) for r in records for u in r.get("used_by", ())]
    if refs:
        lines.append("identities behind the hypothesis experiments (not used as evidence):")
        lines.extend(f"  {name}: {u}" for name, u in refs)
    return "\n".join(lines)


def run_verify(
    instances: int = 200, seed: int = 0, json_path: str | None = None, workers: int | None = None
) -> int:
    """CLI entry: print the table, optionally write JSON; exit code 0 iff all pass."""
    check_int("--instances", instances, 1)
    if json_path is not None:
        check_json_target(json_path)
    t0 = time.perf_counter()
    records = run_checks(instances, seed, workers)
    print(format_table(records))
    n_fail = sum(not r["passed"] for r in records)
    print(
        f"{len(records) - n_fail} passed, {n_fail} failed "
        f"({instances} instances each, seed {seed}, {time.perf_counter() - t0:.1f} s)"
    )
    if json_path is not None:
        atomic_write(json_path, json.dumps(records, indent=2))
    return 0 if n_fail == 0 else 1


def check_json_target(json_path: str) -> None:
    """Refuse, before any check runs, a ``--json`` path that cannot be written: a probe file
    is created and removed beside it (``os.access`` says yes to root even on /proc), and an
    existing target must be a regular file (os.replace would swap out a device or FIFO).

    Raises:
        UserError: naming --json and the reason.
    """
    path = Path(json_path)
    if path.exists() and not path.is_file():
        raise UserError(f"--json {json_path}: exists and is not a regular file")
    probe = path.with_name(f".{path.name}.{os.getpid()}.probe")
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"--json {json_path}: cannot write there ({reason})") from None
