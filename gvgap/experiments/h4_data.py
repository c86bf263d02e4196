"""H4 — is the online advantage just the RM seeing more data? (THEORY §4 H4, §6 item 14).

Design: one problem instance and a base dataset D of n pairs from π_ref (true BT labels).
``dpo``: offline DPO over Π on D. ``rlhf_same``: the RM (``rm_class``, R_sim by default) is
fitted on exactly the pairs DPO sees, with the same λ protocol and split, and soft RL is run
only on the prompts that occur in D (elsewhere the policy stays π_ref, which is also where
DPO stays: its loss and λ term have zero gradient on unseen prompts). So reward model and
policy see identical pairs *and* identical prompts; only the hypothesis space differs
(Π(R_sim) vs Π). ``rlhf_extra``: the RM gets D ∪ D_extra (``extra_factor`` × n further pairs
from π_ref; λ selected on the union with the same split seed) while DPO keeps D, and soft RL
still uses D's prompts: this isolates *extra labelled pairs*. ``rlhf_prompts``: the RM on D,
soft RL on every prompt under ρ: this isolates *extra unlabelled prompts* (exact soft RL is
the limit of infinitely many unlabelled on-policy prompts); it equals ``rlhf_same`` whenever
every prompt occurs in D, in particular for ``n_prompts = 1``. H4 says the advantage is data:
then ``rlhf_same`` − ``dpo`` would vanish and only the data-enriched variants would win. An
identical-data advantage with CI above ``MIN_ADVANTAGE`` is evidence against H4. The detail
reports the share of the data-enriched advantage that the extra pairs add,
(J_extra − J_same)/(J_extra − J_dpo), from the means. Bare metrics per run:
``advantage_same``, ``advantage_extra``, ``advantage_prompts`` (J_norm differences vs DPO)
and ``prompt_coverage`` (ρ-mass of the prompts in D).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from gvgap.data import Preferences
from gvgap.envs.tree_env import TreeEnv
from gvgap.experiments import analysis as A
from gvgap.experiments import common as C
from gvgap.experiments.base import Verdict
from gvgap.learners import Result

if TYPE_CHECKING:
    from matplotlib.axes import Axes

ID = "h4_data"
CLAIM = (
    "The online advantage persists when the RM and the policy see exactly the same pairs "
    "(and prompts): it is not explained by the RM seeing more data (H4 against)."
)
NOTES = "H4"
DESIGN_NOTE = __doc__

#: "against" H4 iff the identical-data advantage (J_norm) has CI low end above this.
MIN_ADVANTAGE = 0.02
#: Pipelines compared with ``dpo``, in plotting order.
VARIANTS = ("rlhf_same", "rlhf_extra", "rlhf_prompts")


@dataclass(frozen=True)
class Config(C.ProblemConfig):
    """One h4_data setting.

    Shared problem fields: :class:`common.ProblemConfig`.

    Attributes:
        extra_factor: |D_extra| / |D|: extra pairs from π_ref given only to ``rlhf_extra``'s RM.
        rm_class: linear (R_sim), tabular or local (isomorphic controls).
    """

    extra_factor: float = 4.0
    rm_class: str = "linear"

    def validate(self) -> None:
        """Raise UserError naming the first bad field."""
        super().validate()
        C.check_range("extra_factor", self.extra_factor, 0.0, 1000.0)


SMOKE = Config(vocab=2, horizon=3, n_prompts=2, n_pairs=12, extra_factor=2.0, lam_grid="short")
SETTINGS = {
    "seeds": 20,
    "fixed": {"vocab": 3, "k": 3, "horizon": 4},
    "grid": {"n_pairs": [10, 30, 100, 300], "n_prompts": [1, 16], "extra_factor": [1.0, 4.0]},
}
QUICK = {
    "seeds": 6,
    "fixed": {"vocab": 3, "k": 3, "horizon": 4, "lam_grid": "short", "extra_factor": 4.0},
    "grid": {"n_pairs": [16, 64], "n_prompts": [1, 16]},
}
#: Config overrides under which the verdict is re-checked (``gvgap reproduce``).
ROBUSTNESS: list[dict] = C.robustness((4, 3), (2, 6))


#: The problem instance (drawn only from ``instance_rng``).
build_env = C.build_env


def restrict_to_prompts(res: Result, env: TreeEnv, seen: np.ndarray) -> Result:
    """The pipeline's policy on the prompts in ``seen`` (bool ``(m,)``), π_ref elsewhere."""
    logp = np.where(seen[:, None], res.logp, env.logp_ref)
    return dataclasses.replace(res, logp=logp)


def run(
    cfg: Config, *, rng: np.random.Generator, instance_rng: np.random.Generator
) -> dict[str, float]:
    """DPO vs RLHF with identical data, extra RM pairs, and extra unlabelled prompts."""
    env, data, grid, split_seed = C.prepare(cfg, rng, instance_rng)
    n_extra = round(cfg.extra_factor * cfg.n_pairs)
    extra = C.draw_pairs(env, n_extra, rng) if n_extra > 0 else None
    seen = np.bincount(data.prompt, minlength=env.n_prompts) > 0

    off = C.fit_dpo(env, data, grid, split_seed)
    on = C.fit_rlhf(env, data, cfg.rm_class, grid, split_seed)
    both = data if extra is None else Preferences.concat([data, extra])
    on_extra = on if extra is None else C.fit_rlhf(env, both, cfg.rm_class, grid, split_seed)
    out = {
        **C.metric_row("dpo", env, off),
        **C.metric_row("rlhf_same", env, restrict_to_prompts(on, env, seen)),
        **C.metric_row("rlhf_extra", env, restrict_to_prompts(on_extra, env, seen)),
        **C.metric_row("rlhf_prompts", env, on),
    }
    for name in VARIANTS:
        out[f"advantage_{name.removeprefix('rlhf_')}"] = out[f"{name}/J_norm"] - out["dpo/J_norm"]
    out["prompt_coverage"] = float(env.rho[seen].sum())
    out["n_extra"] = float(n_extra)
    return out


def _by(df: pd.DataFrame) -> list[str]:
    return [
        b
        for b in ("horizon", "n_prompts", "n_pairs", "extra_factor", "rm_class")
        if b in df.columns
    ]


def advantages(df: pd.DataFrame, *, rng: np.random.Generator) -> pd.DataFrame:
    """Paired J_norm(variant) − J_norm(dpo) per setting and variant, with 95% bootstrap CIs."""
    return A.paired_vs(df, VARIANTS, by=_by(df), rng=rng, column="variant")


def _headline(adv: pd.DataFrame) -> pd.DataFrame:
    """Largest H, smallest m (strictest prompt coverage is a variant, not the headline),
    smallest n, largest extra factor, linear RM."""
    h = adv[adv["rm_class"] == "linear"] if "rm_class" in adv.columns else adv
    return A.pick_setting(
        h, (("horizon", max), ("n_prompts", min), ("n_pairs", min), ("extra_factor", max))
    )


def verdict(df: pd.DataFrame) -> Verdict:
    """Against H4 iff the identical-data advantage at the headline setting has CI low end above
    MIN_ADVANTAGE; supported iff that CI covers 0 while the extra-pairs advantage's CI is above
    0; else inconclusive."""
    adv = advantages(df, rng=np.random.default_rng(0))
    head = _headline(adv) if not adv.empty else adv
    same = head[head["variant"] == "rlhf_same"] if not head.empty else head
    if same.empty:
        return A.inconclusive(CLAIM, "no linear-RM runs")
    s = same.iloc[0]
    ext = head[head["variant"] == "rlhf_extra"].iloc[0]
    if s["ci_low"] > MIN_ADVANTAGE:
        label = "against"
    elif s["ci_low"] <= 0.0 <= s["ci_high"] and ext["ci_low"] > 0.0:
        label = "supported"
    else:
        label = "inconclusive"
    denom = ext["mean"]
    share = (ext["mean"] - s["mean"]) / denom if abs(denom) > 1e-12 else float("nan")
    where = ", ".join(f"{b}={A.fmt(s[b])}" for b in _by(df) if b in s.index)
    detail = (
        f"headline {where}: identical-data advantage {s['mean']:.3g} "
        f"[{s['ci_low']:.3g}, {s['ci_high']:.3g}]; with extra RM pairs {ext['mean']:.3g} "
        f"[{ext['ci_low']:.3g}, {ext['ci_high']:.3g}]; share added by extra pairs "
        f"{share:.3g}"
    )
    if "n_prompts" in adv.columns and adv["n_prompts"].max() > 1:
        many = _headline(adv[adv["n_prompts"] == adv["n_prompts"].max()]).set_index("variant")
        ci = {v: A.ci_text(r) for v, r in many.iterrows()}
        detail += (
            f"; at m={A.fmt(adv['n_prompts'].max())} prompts: identical data "
            f"{ci.get('rlhf_same')}, with all prompts unlabelled for RL {ci.get('rlhf_prompts')}"
        )
    return A.verdict_at(CLAIM, label, s, df, detail)


def plot(df: pd.DataFrame, ax: Axes | None = None) -> Axes:
    """Online − offline J_norm vs n for identical data, extra RM pairs, unlabelled prompts:
    colour = variant, line style = the other varied settings (e.g. m)."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    adv = advantages(df, rng=np.random.default_rng(0))
    group = [b for b in _by(df) if b != "n_pairs" and df[b].nunique() > 1]
    colors = dict(zip(VARIANTS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    settings = adv[group].drop_duplicates().sort_values(group) if group else adv.iloc[:1][[]]
    styles = ("-", "--", ":", "-.")
    for i, (_, setting) in enumerate(settings.iterrows()):
        mask = np.ones(len(adv), bool)
        for b in group:
            mask &= (adv[b] == setting[b]).to_numpy()
        where = ", ".join(f"{b}={A.fmt(setting[b])}" for b in group)
        for name in VARIANTS:
            g = adv[mask & (adv["variant"] == name).to_numpy()].sort_values("n_pairs")
            if g.empty or (name == "rlhf_prompts" and setting.get("n_prompts", 2) == 1):
                continue  # with one prompt it is rlhf_same
            A.errorbar_ci(
                ax,
                g["n_pairs"],
                g,
                ls=styles[i % len(styles)],
                marker="o",
                color=colors[name],
                label=f"{name} {where}".strip(),
            )
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ns = sorted(adv["n_pairs"].unique()) if "n_pairs" in adv.columns else []
    ax.set_xticks(ns, [f"{n:g}" for n in ns])
    ax.minorticks_off()
    ax.set_xlabel("base preference pairs n (shared by DPO and the RM)")
    ax.set_ylabel("online − offline  J_norm  (95% CI)")
    ax.set_title("H4: is the online advantage data?")
    ax.legend(fontsize=7)
    return ax
