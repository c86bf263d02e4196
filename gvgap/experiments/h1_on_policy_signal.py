"""H1 — do on-policy samples carry information absent from D? (docs/theory.md §3, §4, §6.7)

**Mechanism.** H1 says that sampling the current policy creates information: labelled
on-policy pairs teach the learner something the data set D does not. Two things ride along
with every relabelled on-policy pair and must be told apart: *where* the pair lies (on-policy
sampling) and *who* labels it (the labeller's class). A labeller from a simpler class than
the policy's local rewards (a global linear RM) transfers its inductive bias whatever pairs
it labels: that is H6's mechanism, not H1's. With a labeller r̂ ∈ R(Π) (DPO's own implicit
reward) exact relabelling returns the offline optimum — a theorem, checked by
``gvgap verify`` (item 7, ``relabel_no_information``), not evidence here.

**Design.** One instance and one data set D of n pairs from μ = π_ref with true BT labels;
offline DPO over the tabular class Π (shared λ protocol, converged) gives π_off. A budget of
B = ``budget`` × n further pairs is labelled by one labeller with its exact BT probabilities
(each pair twice, weights σ(r(ξ) − r(ξ')) and its complement), added to D, and DPO is refitted
(λ fixed at π_off's selected λ, warm-started), so the label budget, the labeller and the
fitting are identical across the arms and only the sampling differs:

- *on-policy* (``on_*``): ``rounds`` rounds, each drawing B/``rounds`` pairs
  (ξ, ξ') ~ the current policy (π_off first), labelling them, adding them and refitting —
  the samples follow the policy as it moves, as in an online loop;
- *off-policy* (``off_*``): the B pairs drawn at once from μ, the distribution D came from.

Two labellers: ``*_rm``, the linear R_sim RM fitted on D (shared λ protocol) — a labeller
whose information is a function of D — and ``*_true``, r* itself — a labeller with
information absent from D.

**Test.** ``on_rm − off_rm`` in J (a difference in J is minus the difference in regret
J(π*) − J(π)): with the labeller fixed, does sampling on-policy add anything? H1 predicts
``greater``. An outcome ``equivalent`` or ``less`` is against H1: whatever relabelling adds
comes from the labeller, not from where the pairs were sampled.

**Positive control** (the same mechanism): ``on_true − off_true``, the same contrast with
the labeller that does carry new information — where on-policy placement of informative
labels is worth something the test can see it (expected ``greater``).

Reported beside (not evidence): each arm against offline DPO (the labeller's class shows in
``on_rm − dpo`` and ``off_rm − dpo`` alike), RLHF with the same RM and exact soft RL
(``rlhf``), and the paper's online DPO round (``online_dpo_round``: N = 25 samples per prompt
at T = 0.1, best vs worst by the R_sim RM, DPO against π_ref, n prompts per round) from π_ref
(``round_sft``) and from π_off (``round_dpo``), with J and win rate. TOST margin ``MARGIN``
in J units, Holm across the cells present, seeds from the power plan (:data:`PILOT`,
:func:`plan_seeds`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gvgap.data import Preferences, sample_leaves, sample_prompts, soft_labels
from gvgap.experiments import common, hypothesis, hypothesis_plots
from gvgap.experiments.base import Verdict
from gvgap.learners import dpo, online_dpo_round

if TYPE_CHECKING:  # pandas is needed only by verdict/plot code, imported there
    import pandas as pd

ID = "h1_on_policy_signal"
HYPOTHESIS = "H1: on-policy samples carry information absent from D."
PREDICTION = (
    "With one labeller (the R_sim RM fitted on D) and one label budget, pairs sampled from the "
    "offline policy raise J more than pairs sampled from μ: on_rm − off_rm greater than 0."
)
CLAIM = (
    "With the labeller held fixed, on-policy pairs add no more than off-policy pairs: what "
    "relabelling adds comes from the labeller's class, not from sampling on-policy."
)
NOTES = "H1"
DESIGN_NOTE = __doc__
#: What the paper concludes about H1, and the verdict on the hypothesis that agrees with it.
PAPER_POSITION = (
    "against: relabelling on-policy samples with an RM fitted on D cannot add information "
    "(the theorem with isomorphic classes, and data processing)"
)
PAPER_EXPECTS = "against"

#: Equivalence margin δ of the TOST, in J units (≈ 1 % of J(π*) − J(π_ref) ≈ 1.5–2 here).
MARGIN = 0.02
#: The outcome H1 predicts for the test, and the one the positive control must show.
PREDICTED = "greater"
CONTROL_EXPECTED = "greater"
#: The headline cell, fixed before reading results.
HEADLINE = {"vocab": 3, "horizon": 4, "n_pairs": 16}
TEST = hypothesis.Contrast("on-policy − off-policy pairs, R_sim RM labels", "on_rm", "off_rm")
CONTROL = hypothesis.Contrast("on-policy − off-policy pairs, true labels", "on_true", "off_true")
#: Reported beside the verdict (not evidence).
REPORTED = [
    hypothesis.Contrast("on-policy, R_sim RM labels − dpo", "on_rm", "dpo"),
    hypothesis.Contrast("off-policy, R_sim RM labels − dpo", "off_rm", "dpo"),
    hypothesis.Contrast("on-policy, true labels − dpo", "on_true", "dpo"),
    hypothesis.Contrast("rlhf (same RM) − dpo", "rlhf", "dpo"),
    hypothesis.Contrast("online DPO round from SFT − dpo", "round_sft", "dpo"),
    hypothesis.Contrast("online DPO round from DPO − dpo", "round_dpo", "dpo"),
    hypothesis.Contrast("online DPO round from DPO − dpo", "round_dpo", "dpo", "win_rate"),
    hypothesis.Contrast("on-policy − off-policy, R_sim RM labels", "on_rm", "off_rm", "win_rate"),
]


@dataclass(frozen=True)
class Config(common.ProblemConfig):
    """One h1_on_policy_signal setting.

    Shared problem fields: :class:`common.ProblemConfig`.

    Attributes:
        horizon: H (default 4 here).
        n_pairs: |D| (default 16 here).
        budget: B / n, pairs added per pair of D (the same for every arm).
        rounds: on-policy rounds the B pairs are spread over (each drawn from the current
            policy).
        round_samples: N of the online DPO round (paper: 25).
        temperature: T of the online DPO round (paper: 0.1).
    """

    horizon: int = 4
    n_pairs: int = 16
    budget: float = 4.0
    rounds: int = 4
    round_samples: int = 25
    temperature: float = 0.1

    def validate(self) -> None:
        """Raise UserError naming the first bad field."""
        super().validate()
        common.check_range("budget", self.budget, 0.0, 100.0, lo_open=True)
        common.check_range("rounds", self.rounds, 1, 100)
        common.check_range("round_samples", self.round_samples, 2)
        common.check_range("temperature", self.temperature, 0.0, lo_open=True)


SMOKE = Config(vocab=2, horizon=3, n_pairs=12, lam_grid="short", round_samples=5)
#: The full sweep, the confirmatory sweep of ``gvgap reproduce --quick`` (its seeds replaced by
#: the power plan), its power pilot (the headline cell on its own seed block) and the overrides
#: under which the verdict is re-checked (another V, H; β; random π_ref).
SETTINGS, QUICK, PILOT, ROBUSTNESS = hypothesis.sweeps(HEADLINE)

build_env = common.build_env


def plan_seeds(pilot: pd.DataFrame) -> dict:
    """Seeds of the confirmatory sweep and of each re-check (:func:`hypothesis.plan_seeds`)."""
    return hypothesis.plan_seeds(sys.modules[__name__], pilot)


def pair_draw(logp, rho, n: int, rng: np.random.Generator):
    """``n`` unlabelled pairs: x ~ ρ, ξ, ξ' ~ P(·|x) i.i.d. (P given by leaf log-probs)."""
    x = sample_prompts(rho, n, rng)
    return x, sample_leaves(logp, x, rng), sample_leaves(logp, x, rng)


def on_policy_loop(pol, env, data, off, r: np.ndarray, budget: int, rounds: int, rng):
    """``rounds`` rounds of: draw budget/rounds pairs from the current policy, label them with
    ``r`` (exact BT probabilities), add them to the pairs so far, refit DPO (λ of π_off,
    warm-started). Starts at π_off; returns the last fit."""
    res, pairs = off, [data]
    for t in range(rounds):
        k = budget // rounds + (t < budget % rounds)
        x, a, b = pair_draw(res.logp, env.rho, max(k, 1), rng)
        pairs.append(soft_labels(x, a, b, r))
        res = dpo(pol, env, Preferences.concat(pairs), lam=off.lam, theta0=res.params)
    return res


def run(
    cfg: Config, *, rng: np.random.Generator, instance_rng: np.random.Generator
) -> dict[str, float]:
    """π_off; on- and off-policy pairs labelled by the R_sim RM and by r*; RLHF; rounds."""
    env, data, grid, split_seed = common.prepare(cfg, rng, instance_rng)
    pol = common.tabular_policy(env)
    off = common.fit_dpo(env, data, grid, split_seed)
    rsim = common.fit_rlhf(env, data, "linear", grid, split_seed)
    out = {**hypothesis.metric_rows("dpo", env, off), **hypothesis.metric_rows("rlhf", env, rsim)}
    b = max(1, round(cfg.budget * cfg.n_pairs))
    for who, r in (("rm", rsim.r_hat), ("true", env.r_star)):
        x, a, bb = pair_draw(env.logp_ref, env.rho, b, rng)
        res = dpo(pol, env, Preferences.concat([data, soft_labels(x, a, bb, r)]), lam=off.lam,
                  theta0=off.params)  # fmt: skip
        out.update(hypothesis.metric_rows(f"off_{who}", env, res))
        on = on_policy_loop(pol, env, data, off, r, b, cfg.rounds, rng)
        out.update(hypothesis.metric_rows(f"on_{who}", env, on))
    kw = {
        "lam": off.lam,
        "n_prompts": cfg.n_pairs,
        "n_samples": cfg.round_samples,
        "temperature": cfg.temperature,
    }
    rounds = {
        "round_sft": online_dpo_round(pol, env, rsim.r_hat, **kw),
        "round_dpo": online_dpo_round(pol, env, rsim.r_hat, theta0=off.params, **kw),
    }
    for name, res in rounds.items():
        out.update(hypothesis.metric_rows(name, env, res))
    out["max_grad_norm"] = max(v for k, v in out.items() if k.endswith("/grad_norm"))
    return out


def verdict(df: pd.DataFrame) -> Verdict:
    """:func:`hypothesis.module_verdict`: test on_rm − off_rm (J, predicted ``greater``),
    positive control on_true − off_true (J, expected ``greater``), margin ``MARGIN``."""
    return hypothesis.module_verdict(
        sys.modules[__name__],
        df,
        predicted=PREDICTED,
        control_expected=CONTROL_EXPECTED,
        by=["vocab", "horizon", "n_pairs", "budget"],
        extra="Exact relabelling by r̂ ∈ R(Π) is the theorem (gvgap verify: "
        "relabel_no_information), not evidence.",
    )


def plot(df: pd.DataFrame, ax=None):
    """The test (on- − off-policy pairs, R_sim RM labels), its positive control (the same
    with true labels) and the reported contrasts against offline DPO, in J (mean paired
    difference, 95% bootstrap CI) at the headline cell."""
    return hypothesis_plots.plot_contrasts(
        hypothesis.headline_rows(df, HEADLINE), TEST, CONTROL, REPORTED, title=TITLE, ax=ax
    )


#: Title of the figures.
TITLE = "H1: on- vs off-policy pairs, one labeller"


def extra_figures(df: pd.DataFrame) -> list[tuple]:
    """The reported contrasts in metrics other than J, one figure per metric."""
    return hypothesis_plots.contrast_figures(sys.modules[__name__], df, title=TITLE)
