"""H6's design, fixed in code before the confirmatory sweep: instance-seed blocks, named
cells, sample sizes, margins, regimes, the sweeps (SETTINGS, QUICK, PILOT) and the headline.
The rule that reads them: :mod:`gvgap.experiments.h6_rule` (docs/theory.md §10)."""

from __future__ import annotations

from typing import Any

#: Instance-seed blocks. DEV: every sweep run while developing (seeds from 0). PILOT: the
#: power pilot. CONFIRM: the confirmatory sweep of the verdict (``gvgap reproduce``), never
#: run before the rule below was fixed. STABILITY: the headline effect re-measured on two
#: more independent blocks.
DEV_BLOCK = 0
PILOT_BLOCK = 1_000_000
CONFIRM_BLOCK = 2_000_000
STABILITY_BLOCKS = (3_000_000, 4_000_000)

#: Named design cells (Config overrides). Uniform π_ref and m = 1 unless named: the gap of
#: the verifier class (dense, planning, additive r*), of β (planning at β = 0.1, 3), of π_ref
#: (additive r* with a Dirichlet π_ref: π* inherits π_ref's dependence on the whole prefix),
#: of pooling (m = 4 prompts sharing r*), and cells with ΔC* = 0 (r* in the window span that
#: also holds π*: the same class on both sides).
CELLS: dict[str, dict[str, Any]] = {
    "dense_2x4": {"generator": "dense", "tree": "2x4"},
    "dense7_2x4": {"generator": "dense", "tree": "2x4", "k": 7},
    "dense_3x3": {"generator": "dense", "tree": "3x3"},
    "dense_3x5": {"generator": "dense", "tree": "3x5"},
    "sum_mod_2x4": {"generator": "sum_mod", "tree": "2x4"},
    "sum_mod_2x4_b0.1": {"generator": "sum_mod", "tree": "2x4", "beta": 0.1},
    "sum_mod_2x4_b3": {"generator": "sum_mod", "tree": "2x4", "beta": 3.0},
    "sum_mod_2x12": {"generator": "sum_mod", "tree": "2x12"},
    "additive_2x4": {"generator": "additive", "tree": "2x4"},
    "last_first_3x3": {"generator": "last_first", "tree": "3x3"},
    "additive_3x3_dir1": {
        "generator": "additive",
        "tree": "3x3",
        "ref": "random",
        "ref_concentration": 1.0,
    },
    "additive_3x3_dir0.1": {
        "generator": "additive",
        "tree": "3x3",
        "ref": "random",
        "ref_concentration": 0.1,
    },
    "additive_full_2x4_m4": {"generator": "additive_full", "tree": "2x4", "n_prompts": 4},
    "dense_2x4_m4_own": {
        "generator": "dense",
        "tree": "2x4",
        "n_prompts": 4,
        "shared_reward": False,
    },
    "additive_full_2x4": {"generator": "additive_full", "tree": "2x4"},
    "window1_full_3x3": {"generator": "window1_full", "tree": "3x3"},
    "additive_full_2x4_m4_own": {
        "generator": "additive_full",
        "tree": "2x4",
        "n_prompts": 4,
        "shared_reward": False,
    },
}
#: The cells of the verdict (QUICK). The full SETTINGS add dense r* with k = 7, additive r*
#: with a Dirichlet(0.1) π_ref (never in the asymptotic regime at n ≤ 4096: its rarest leaves
#: have μ ≈ 1e-6) and the 4096-leaf planning cell (``sims/h6_big.toml``: C ≈ 7e3, so the law
#: needs n ≳ 10⁵ there).
VERDICT_CELLS = tuple(
    c for c in CELLS if c not in ("dense7_2x4", "additive_3x3_dir0.1", "sum_mod_2x12")
)
#: Law cells × n the dev block (seeds 0–15) had in P1 and in P2 (for the power plan's counts).
PLANNED_P1_CELLS = 11
PLANNED_P2_CELLS = 8
#: Sample sizes of P1/P2 (the asymptotic regime) and of P3 (small n).
DOSE_N = (1024, 4096)
RANK_N = (16, 64)
#: P1 holds when the slope's 95 % interval lies inside this band.
SLOPE_BAND = (0.67, 1.5)
#: P2's equivalence margin on the law residual n·d − ΔC, as a fraction of the cell's mean
#: offline constant (the same ±1/3 relative tolerance as P1's band).
P2_REL = 1.0 / 3.0
#: A side whose mean n·regret grows by more than this factor over DOSE_N (and significantly)
#: is misspecified.
GROWTH = 1.5
#: A cell with more than this share of runs on a class that misses its target is misspecified.
MISSPEC_SHARE = 0.2
#: Asymptotic regime of the law cells: max(C_off, C_on)/n at most this (nats) ...
REGIME_C = 0.05
#: ... and the rarest (prompt, leaf) expected at least this many times among D's 2n draws.
REGIME_COUNT = 5.0
#: ΔC* (and a cell's mean ΔC) counts as 0 below this, relative to the largest C of the cell:
#: isomorphic classes give ΔC at the rounding level (≈ 1e-15 C).
ZERO_DC = 1e-9
HEADLINE_PROTOCOL = "learned"
CONTROL_PROTOCOL = "gift"
#: The small-n headline effect (d at this cell), reported with its stability across blocks.
HEADLINE = {"cell": "dense_2x4", "n_pairs": 16, "protocol": HEADLINE_PROTOCOL}
#: Seeds of the pilot block, and bounds of the powered seed count (at least 20: P1 weights
#: cells by standard errors estimated from their seeds, and its interval is a percentile
#: bootstrap over them — both unreliable with fewer runs per cell).
PILOT_SEEDS = 12
SEED_BOUNDS = (20, 40)
#: Bootstrap resamples of the slope and rank-correlation intervals.
N_BOOT = 2000

_GRID = {"cell": list(VERDICT_CELLS), "n_pairs": [*RANK_N, *DOSE_N]}
SETTINGS = {
    "seeds": 20,
    "seed_start": CONFIRM_BLOCK,
    "fixed": {"lam_grid": "short"},
    "grid": {
        "cell": [c for c in CELLS if c != "sum_mod_2x12"],
        "n_pairs": [16, 64, 256, 1024, 4096],
        "protocol": ["learned", "well_specified", "gift"],
    },
}
#: The confirmatory sweep of ``gvgap reproduce --quick`` (its seeds replaced by the power
#: plan there; ``gvgap sweep h6_gap --quick`` runs it with these seeds on the same block).
QUICK = {
    "seeds": 20,
    "seed_start": CONFIRM_BLOCK,
    "fixed": {"lam_grid": "short"},
    "grid": {**_GRID, "protocol": [HEADLINE_PROTOCOL, CONTROL_PROTOCOL]},
}
#: The pilot of the power computation: two gap cells (the noisiest and a quiet one) and a
#: ΔC* = 0 cell, at the smallest n of P1, under both protocols the rule reads.
PILOT = {
    "seeds": PILOT_SEEDS,
    "seed_start": PILOT_BLOCK,
    "fixed": {"lam_grid": "short"},
    "grid": {
        "cell": ["dense_2x4", "sum_mod_2x4", "additive_full_2x4"],
        "n_pairs": [DOSE_N[0]],
        "protocol": [HEADLINE_PROTOCOL, CONTROL_PROTOCOL],
    },
}
#: h6's re-checks are the stability blocks of the headline cell (the grid itself spans β,
#: π_ref, m and sharing).
ROBUSTNESS: list[dict] = []
ROBUST_SEEDS = 20
