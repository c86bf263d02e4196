"""The paper's table (docs/theory.md §7) and the LLM figures from the ``llm`` rows of a results
table:
pure functions (tables, Markdown rows, plots that return axes); the report writes the files.

Standard errors: with S ≥ 2 seeds, the SE of the mean over seeds of the per-seed values
(s/√S: training and evaluation noise together); with one seed, the within-run SE over
evaluation prompts (evaluation noise only) — each table says which.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from gvgap.llm.config import POLICIES, LLMConfig

#: The paper's table: SFT, DPO, DPO + an extra pass, online DPO from SFT / from DPO, the
#: local-RM-labelled and the gold-labelled (positive control) online arms; best-of-N at the
#: largest N is appended per labeller.
TABLE_PIPELINES = POLICIES
TASK_ORDER = ("readout", "short", "rouge", "count", "sum")
LABELLER_ORDER = ("gold", "global", "local", "dpo", "sft", "demo")
#: (online arm, labeller it uses): the points of the accuracy-vs-advantage figure.
LABELLED_ARMS = (("online_dpo_sft", "global"), ("online_dpo_local", "local"))


#: Joins the task and the other varying fields in a cell's label.
CELL_SEP = " · "


#: Run fields besides the config that split a table into cells (two instance blocks in one
#: directory, e.g. a sweep ``--append``-ed with another block, are never averaged together).
RUN_FIELDS = ("instance_seed",)


def varying_fields(df: pd.DataFrame) -> list[str]:
    """Config fields, then :data:`RUN_FIELDS`, with more than one value in the table (``task``
    first)."""
    names = [*(f.name for f in dataclasses.fields(LLMConfig)), *RUN_FIELDS]
    return [n for n in names if n in df.columns and df[n].nunique(dropna=True) > 1]


def with_cells(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with every grid cell apart: the ``task`` column becomes the cell's label — the
    task, then each other varying field (``readout · pairs_per_prompt=8``;
    :func:`varying_fields`) — and the task itself moves to ``cell_task``. Tables and figures
    group by it, so no axis of the grid (pairs, RM size, instance block, …) is averaged over
    unseen. Idempotent."""
    if "cell_task" in df.columns or "task" not in df.columns:
        return df
    label = df["task"].astype(str)
    for name in varying_fields(df):
        if name != "task":
            label = label + f"{CELL_SEP}{name}=" + df[name].astype(str)
    return df.assign(cell_task=df["task"], task=label)


def config_cells(cfgs: list[LLMConfig], instance_seeds: list[int]) -> list[str]:
    """The cell label of each run (config, instance seed) among them, by :func:`with_cells`
    on one row per run — for scripts that hold runs, not result rows."""
    rows = [{**dataclasses.asdict(c), "instance_seed": i} for c, i in zip(cfgs, instance_seeds)]
    return list(with_cells(pd.DataFrame(rows))["task"]) if rows else []


def _cell_key(label: str) -> tuple:
    base, *rest = label.split(CELL_SEP)
    order = TASK_ORDER.index(base) if base in TASK_ORDER else len(TASK_ORDER)
    values = []
    for part in rest:
        value = part.split("=", 1)[-1]
        try:
            values.append((0, float(value), ""))
        except ValueError:
            values.append((1, 0.0, value))
    return (order, base, tuple(values))


def tasks_of(df: pd.DataFrame) -> list[str]:
    """Cells present (:func:`with_cells`): tasks in :data:`TASK_ORDER`, then the other varying
    fields' values in order."""
    present = set(with_cells(df)["task"]) if "task" in df else set()
    return sorted(present, key=_cell_key)


def cell_slug(cell: str) -> str:
    """A file-name form of a cell label: ``readout__pairs_per_prompt-8``."""
    return cell.replace(CELL_SEP, "__").replace("=", "-").replace(" ", "")


def per_seed(df: pd.DataFrame, pipeline: str, metric: str, task: str) -> pd.Series:
    """The value of ``pipeline/metric`` per seed in the cell ``task`` (:func:`with_cells`)."""
    df = with_cells(df)
    sel = df[(df.pipeline == pipeline) & (df.metric == metric) & (df.task == task)]
    if sel["seed"].duplicated().any():  # a run per seed and cell: never averaged over
        raise ValueError(f"{pipeline}/{metric} in cell {task!r}: several runs per seed")
    return sel.set_index("seed")["value"]


def mean_se(values: pd.Series, within: float = float("nan")) -> tuple[float, float, str]:
    """Mean, SE and its kind: over seeds (S ≥ 2), else the within-run SE ``within``."""
    v = values.dropna()
    if len(v) >= 2:
        return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))), "seeds"
    return (float(v.mean()) if len(v) else float("nan")), within, "prompts"


def bon_sizes(df: pd.DataFrame) -> list[int]:
    """The best-of-N sizes present."""
    names = [p for p in df["pipeline"].unique() if str(p).startswith("bon_")]
    return sorted({int(str(p).rsplit("_n", 1)[1]) for p in names})


def table(df: pd.DataFrame, metric: str = "win_rate") -> pd.DataFrame:
    """Rows (pipeline, task): ``mean``, ``se``, ``n_seeds``, ``se_kind`` of ``metric``."""
    sizes = bon_sizes(df)
    bon = [f"bon_{rm}_n{sizes[-1]}" for rm in ("global", "local", "dpo")] if sizes else []
    rows = []
    for pipe in [*TABLE_PIPELINES, *bon]:
        for task in tasks_of(df):
            vals = per_seed(df, pipe, metric, task)
            if vals.empty:
                continue
            within = per_seed(df, pipe, f"{metric}_se", task)
            m, se, kind = mean_se(vals, float(within.iloc[0]) if len(within) else float("nan"))
            rows.append([pipe, task, m, se, len(vals), kind])
    return pd.DataFrame(rows, columns=["pipeline", "task", "mean", "se", "n_seeds", "se_kind"])


def labeller_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per task and labeller: validation likelihood and accuracy on held-out BT(gold) pairs,
    and label accuracy / ties / pairs kept on on-policy pairs, each mean and SE."""
    rows = []
    metrics = ("val_likelihood", "val_accuracy", "label_accuracy", "label_ties", "pairs_kept")
    for task in tasks_of(df):
        for lab in LABELLER_ORDER:
            rec: dict[str, Any] = {"task": task, "labeller": lab}
            for m in metrics:
                vals = per_seed(df, f"rm_{lab}", m, task)
                within = per_seed(df, f"rm_{lab}", f"{m}_se", task)
                rec[m], rec[f"{m}_se"], _ = mean_se(
                    vals, float(within.iloc[0]) if len(within) else float("nan")
                )
            rows.append(rec)
    return pd.DataFrame(rows)


def fmt(mean: float, se: float) -> str:
    """``mean ± se`` (three decimals; the SE left out when not finite)."""
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3f} ± {se:.3f}" if np.isfinite(se) else f"{mean:.3f}"


def markdown_table(tab: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a pipeline × task table of 'mean ± SE' strings."""
    tasks = list(dict.fromkeys(tab["task"]))
    rows = []
    for pipe in dict.fromkeys(tab["pipeline"]):
        t = tab[tab.pipeline == pipe].set_index("task")
        rows.append(
            [pipe, *(fmt(t.at[k, "mean"], t.at[k, "se"]) if k in t.index else "–" for k in tasks)]
        )
    return ["pipeline", *tasks], rows


def plot_table(df: pd.DataFrame, ax: Any = None, metric: str = "win_rate") -> Any:
    """Grouped bars: pipeline × task of ``metric`` (mean over seeds ± 1 SE); returns the axes."""
    import matplotlib.pyplot as plt

    ax = ax if ax is not None else plt.figure(figsize=(10, 4)).add_subplot()
    tab = table(df, metric)
    pipes = list(dict.fromkeys(tab["pipeline"]))
    tasks = list(dict.fromkeys(tab["task"]))
    width = 0.8 / max(len(tasks), 1)
    for j, task in enumerate(tasks):
        t = tab[tab.task == task].set_index("pipeline").reindex(pipes)
        x = np.arange(len(pipes)) + (j - (len(tasks) - 1) / 2) * width
        n = int(t["n_seeds"].max()) if t["n_seeds"].notna().any() else 0
        ax.bar(x, t["mean"], width, yerr=t["se"], capsize=2, label=f"{task} ({n} seeds)")
    ax.set_xticks(np.arange(len(pipes)), pipes, rotation=30, ha="right")
    ax.set_ylabel(f"{metric} vs π_ref samples (gold BT)" if metric == "win_rate" else metric)
    if metric == "win_rate":
        ax.axhline(0.5, color="0.5", lw=0.8, ls="--")
    ax.legend(title="task (mean ± SE over seeds)", fontsize=8)
    return ax


def plot_bon(df: pd.DataFrame, ax: Any = None, task: str | None = None) -> Any:
    """Best-of-N curve: win rate vs N per labeller (mean over seeds ± SE), one task."""
    import matplotlib.pyplot as plt

    ax = ax if ax is not None else plt.figure().add_subplot()
    task = task or tasks_of(df)[0]
    sizes = bon_sizes(df)
    for lab in ("gold", "global", "local", "dpo"):
        pts = [mean_se(per_seed(df, f"bon_{lab}_n{n}", "win_rate", task))[:2] for n in sizes]
        if pts and np.isfinite(pts[0][0]):
            m, se = np.array(pts).T
            ax.errorbar(sizes, m, yerr=se, marker="o", capsize=2, label=lab)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (best of N π_ref samples)")
    ax.set_ylabel("win rate vs π_ref samples")
    ax.set_title(f"best-of-N, {task}")
    ax.legend(title="reranked by", fontsize=8)
    return ax


def plot_frontier(df: pd.DataFrame, ax: Any = None, task: str | None = None) -> Any:
    """KL frontier: win rate vs k1 KL(π‖π_ref) at evenly spaced steps of each DPO run (mean
    over seeds at each step index; the matched-KL comparison reads these curves)."""
    import matplotlib.pyplot as plt

    ax = ax if ax is not None else plt.figure().add_subplot()
    df = with_cells(df)
    task = task or tasks_of(df)[0]
    sub = df[df.task == task]
    for pipe in ("dpo", "online_dpo_sft", "online_dpo_local", "online_dpo_gold"):
        i, kl, wr = 0, [], []
        while not (k := per_seed(sub, pipe, f"frontier{i}_kl", task)).empty:
            kl.append(k.mean())
            wr.append(per_seed(sub, pipe, f"frontier{i}_win_rate", task).mean())
            i += 1
        if kl:
            ax.plot(kl, wr, marker="o", label=pipe)
    ax.set_xlabel("k1 KL(π‖π_ref), mean over seeds")
    ax.set_ylabel("win rate vs π_ref samples")
    ax.set_title(f"KL frontier (steps 0 … end), {task}")
    ax.legend(fontsize=8)
    return ax


def plot_labellers(df: pd.DataFrame, ax: Any = None) -> Any:
    """Online − offline win rate at matched KL against the labeller's on-policy label
    accuracy: one point per run, arm (marker) and task (colour)."""
    import matplotlib.pyplot as plt

    ax = ax if ax is not None else plt.figure().add_subplot()
    for c, task in enumerate(tasks_of(df)):
        for arm, lab in (*LABELLED_ARMS, ("online_dpo_gold", "gold")):
            acc = per_seed(df, f"rm_{lab}", "label_accuracy", task)
            d = per_seed(df, arm, "win_rate_matched", task) - per_seed(
                df, arm, "offline_win_rate_matched", task
            )
            both = pd.concat([acc, d], axis=1).dropna()
            marker = {"global": "o", "local": "s", "gold": "*"}[lab]
            ax.scatter(both.iloc[:, 0], both.iloc[:, 1], color=f"C{c}", marker=marker, s=25)
        ax.scatter([], [], color=f"C{c}", label=task)
    for lab, marker in (("global RM", "o"), ("local RM", "s"), ("gold", "*")):
        ax.scatter([], [], color="0.4", marker=marker, label=lab)
    ax.axhline(0.0, color="0.5", lw=0.8)
    ax.set_xlabel("labeller's on-policy label accuracy (chosen strictly better by r*)")
    ax.set_ylabel("online − DPO win rate at matched KL")
    ax.legend(fontsize=7, ncol=2)
    return ax


def robustness_rows(cells: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a verdict's other cells: setting, verdict, effect [CI], positive
    control, label accuracy of the global RM, seeds, power."""
    rows = []
    for c in cells:
        pc = c.get("positive_control") or {}
        setting = ", ".join(f"{k}={v}" for k, v in (c.get("setting") or {}).items())
        rows.append(
            [
                setting,
                str(c.get("verdict")),
                _effect_ci(c),
                _effect_ci(pc),
                f"{_num(c, 'label_accuracy'):.3f}",
                str(c.get("seeds")),
                f"{_num(c, 'power'):.2f}",
            ]
        )
    head = ["cell", "verdict", "effect [95 % CI]", "positive control", "global label acc.",
            "seeds", "power"]  # fmt: skip
    return head, rows


def _effect_ci(record: dict) -> str:
    """``+e [+lo, +hi]`` of a record's ``effect``, ``ci_low``, ``ci_high``."""
    e, lo, hi = (_num(record, k) for k in ("effect", "ci_low", "ci_high"))
    return f"{e:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def _num(record: dict, key: str) -> float:
    """``record[key]`` as a float; NaN where it is absent or null (a verdict without a power
    plan stores ``"power": null``)."""
    value = record.get(key)
    return float("nan") if value is None else float(value)


def section(
    doc: Any, df: pd.DataFrame, verdicts: dict[str, Any], figures: list[tuple[Any, str]]
) -> None:
    """Append the LLM section to a :class:`gvgap.report_doc.Doc`: figures (``(png, caption)``),
    the paper's table, the labellers, the per-task verdicts."""
    doc.heading(2, "LLM-scale pipeline (gold reward known)")
    doc.para(
        "GPT-NeoX models trained from scratch on synthetic languages (docs/theory.md §5): "
        "`readout` has a generation–verification gap (one token read out at the end of a long "
        "completion); "
        "`short` (the same reward on 2 tokens) and `rouge` (LCS with a hidden reference) are "
        "the paper's two controls. Win rates are against π_ref samples (and the "
        "demonstrator's) under the gold Bradley–Terry model; ± one standard error."
    )
    for png, caption in figures:
        doc.figure(png, caption)
    for metric in ("win_rate", "win_demo", "reward", "kl_k1", "kl_k3"):
        tab = table(df, metric)
        if tab.empty:
            continue
        kinds = ", ".join(sorted(set(tab["se_kind"])))
        doc.heading(3, f"{metric} (mean ± SE over {kinds})")
        doc.table(*markdown_table(tab))
    lab = labeller_table(df)
    if not lab.empty:
        doc.heading(3, "Labellers (paper at 1.4B: DPO 0.526 < local 0.567 < global 0.593)")
        doc.table(
            ["task", "labeller", "val likelihood", "val accuracy", "label accuracy", "ties"],
            [
                [
                    r.task,
                    r.labeller,
                    fmt(r.val_likelihood, r.val_likelihood_se),
                    fmt(r.val_accuracy, r.val_accuracy_se),
                    fmt(r.label_accuracy, r.label_accuracy_se),
                    fmt(r.label_ties, r.label_ties_se),
                ]
                for r in lab.itertuples()
            ],
        )
        doc.note(
            "val likelihood = mean σ(r̂(y_c) − r̂(y_r)) on held-out BT(gold) pairs from π_ref "
            "(evaluation prompts); label accuracy = share of on-policy best-vs-worst pairs "
            "(N π_ref samples at the online temperature) whose chosen side has strictly higher "
            "gold reward, ties (equal gold reward) apart; `sft` = β log π_ref, untrained; "
            "`demo` = β log p_demo, the exact demonstrator's likelihood (readout, short, sum). The "
            "local RM is DPO's implicit reward plus β log π_ref, so it can beat DPO only by "
            "what `sft` (and, exactly, `demo`) knows about r*."
        )
    if verdicts:
        doc.heading(3, "Verdicts per task (online − offline win rate at matched KL)")
        for key, v in verdicts.items():
            pc = v.get("positive_control") or {}
            doc.para(
                f"**{key}: {v.get('verdict')}** (prediction held: {v.get('prediction_held')}); "
                f"effect {_num(v, 'effect'):+.4f} "
                f"[{_num(v, 'ci_low'):+.4f}, {_num(v, 'ci_high'):+.4f}]"
                f", positive control {_num(pc, 'effect'):+.4f} "
                f"[{_num(pc, 'ci_low'):+.4f}, {_num(pc, 'ci_high'):+.4f}]"
                f", {v.get('seeds')} seeds, power {_num(v, 'power'):.2f}. "
                f"{v.get('detail', '')}"
            )
            cells = [c for c in v.get("robustness") or [] if isinstance(c, dict)]
            if cells:
                doc.para(f"Other cells of {key} (same rule, one Holm family):")
                doc.table(*robustness_rows(cells))
