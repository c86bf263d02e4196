"""Frozen configuration of the LLM-scale pipeline (docs/theory.md §5, §7; docs/design.md §4, §5).

:class:`LLMConfig` is the ``Config`` of the sweep experiment ``llm``
(:mod:`gvgap.experiments.llm`): ``gvgap llm run`` and ``gvgap sweep`` read the same sweep file
(docs/design.md §5), validated by the same code, before torch or transformers are loaded and before
anything is written::

    [sweep]
    experiment = "llm"
    seeds = 5
    instance_seed = 1
    [fixed]                      # any LLMConfig field
    model = "tiny"
    [grid]                       # one run per cell and seed
    task = ["count", "short", "rouge"]

Every numeric field is typed, finite and bounded (:data:`LIMITS`); :meth:`LLMConfig.validate`
adds the cross-field checks (distinct prompts must exist, the best-of-N sizes, the memory a
run needs) and names the field on one line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gvgap.errors import UserError, check_choice, check_range

#: Policies the pipeline evaluates, in the order of the paper's table (best-of-N arms are
#: added by the evaluation and appended by the report).
POLICIES = (
    "sft",
    "dpo",
    "dpo_extra",
    "online_dpo_sft",
    "online_dpo_dpo",
    "online_dpo_local",
    "online_dpo_gold",
)
#: Labellers of on-policy pairs: the learned global RM, the local RM, DPO's implicit reward,
#: the gold reward r* (docs/theory.md §5).
LABELLERS = ("global", "local", "dpo", "gold")
TASKS = ("readout", "short", "rouge", "count", "sum")
#: Share of the (x₁, x₂) cells of ``count`` held out for evaluation (``holdout_cells``).
EVAL_CELL_SHARE = 0.25


@dataclass(frozen=True)
class ModelPreset:
    """A GPT-NeoX (Pythia) architecture; ``vocab`` None means the task's vocabulary."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int | None = None


#: Presets. ``tiny``/``small`` are for CPU tests; ``m20``/``m70`` for a GPU end-to-end run;
#: ``pythia-410m``/``pythia-1.4b`` are the published Pythia shapes (vocab 50304) for benchmarks.
PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(hidden=32, layers=2, heads=2, ffn=128),
    "small": ModelPreset(hidden=64, layers=2, heads=4, ffn=256),
    "m20": ModelPreset(hidden=384, layers=10, heads=6, ffn=1536),
    "m70": ModelPreset(hidden=512, layers=6, heads=8, ffn=2048, vocab=50304),
    "pythia-410m": ModelPreset(hidden=1024, layers=24, heads=16, ffn=4096, vocab=50304),
    "pythia-1.4b": ModelPreset(hidden=2048, layers=24, heads=16, ffn=8192, vocab=50304),
}


@dataclass(frozen=True)
class LLMConfig:
    """One run of the LLM pipeline: a task, the models and every stage's knobs.

    Attributes:
        task: ``readout`` (the gap task: one token read out at the end of a long
            completion), ``short`` (control: the same reward on ``short_len`` tokens — the
            paper's two-word summaries), ``rouge`` (control: LCS with a hidden per-prompt
            reference — the paper's ROUGE-L), ``count`` and ``sum`` (harder targets for the
            GPU presets). See :mod:`gvgap.llm.tasks`.
        vocab: content tokens 0..vocab-1 (two more ids are SEP and BOS).
        prompt_len: prompt tokens P.
        completion_len: completion tokens H of every task but ``short``.
        short_len: completion tokens of ``short`` (1 or 2).
        reward_scale: gold reward r* lies in [0, reward_scale]; BT(gold) uses it as is.
        demo_skill: the demonstrator's skill (task-specific: the chance a token or a row
            follows the reward; the rest is its own style).
        demo_style: chance a demonstrator token continues its style chain (a hidden
            permutation of the previous token) instead of a uniform draw.
        holdout_cells: hold the (x₁, x₂) cells that decide the reward of ``count`` out of
            the training prompts (evaluation on unseen cells; the other tasks do not allow it).
        n_train_prompts: distinct prompts for SFT, pairs and online DPO.
        n_eval_prompts: distinct held-out prompts for every evaluation (never trained on).
        demos_per_prompt: SFT demonstrations per training prompt.
        pairs_per_prompt: preference pairs (π_ref samples, BT(gold) labels) per prompt.
        val_fraction: share of the training prompts whose pairs form the validation split
            that early-stops the two RMs (no stage trains on them).
        model: the policy: a key of PRESETS, or a local checkpoint directory.
        rm_model: the global RM's backbone: ``sft`` (the SFT model, as in the paper) or a
            PRESETS key (its own SFT on the same demonstrations first).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (gvgap.nn.device).
        dtype: ``float32``, ``bfloat16`` (autocast) or ``float64``.
        lr: AdamW learning rate of SFT.
        pref_lr: AdamW learning rate of the preference stages (RMs, DPO, online DPO).
        batch_size: global batch (sequences or pairs) of every stage.
        grad_accum: micro-batches per optimiser step (accelerate's gradient accumulation).
        grad_checkpointing: recompute activations in the backward pass (memory for time).
        sft_steps: optimiser steps of SFT.
        rm_steps: most optimiser steps of each RM (they stop early on the validation split).
        dpo_steps: optimiser steps of offline DPO (and of its extra pass).
        online_steps: optimiser steps of each online DPO arm.
        eval_every: steps between two validation checks of an RM (early stopping).
        checkpoint_every: steps between two mid-stage checkpoints (0: stage ends only).
        beta: KL strength β of DPO, online DPO and the local RM (the paper: 0.05).
        online_samples: N samples per prompt in online DPO (the paper: 25).
        online_temperature: sampling temperature T of online DPO (the paper: 0.1).
        bon_n: the N of the best-of-N curve, comma-separated (the paper: 1,2,5,10,25).
        eval_samples: samples per eval prompt for gold reward, win rates and KL.
        frontier: checkpoints (evenly spaced in steps) on each DPO run's KL frontier.
    """

    task: str = "readout"
    vocab: int = 8
    prompt_len: int = 4
    completion_len: int = 12
    short_len: int = 2
    reward_scale: float = 8.0
    demo_skill: float = 0.5
    demo_style: float = 0.3
    holdout_cells: bool = True
    n_train_prompts: int = 512
    n_eval_prompts: int = 64
    demos_per_prompt: int = 4
    pairs_per_prompt: int = 2
    val_fraction: float = 0.2
    model: str = "tiny"
    rm_model: str = "sft"
    device: str = "cpu"
    dtype: str = "float32"
    lr: float = 3e-3
    pref_lr: float = 3e-3
    batch_size: int = 64
    grad_accum: int = 1
    grad_checkpointing: bool = False
    sft_steps: int = 300
    rm_steps: int = 400
    dpo_steps: int = 200
    online_steps: int = 200
    eval_every: int = 50
    checkpoint_every: int = 0
    beta: float = 0.1
    online_samples: int = 8
    online_temperature: float = 1.0
    bon_n: str = "1,2,4,8"
    eval_samples: int = 8
    frontier: int = 4

    @property
    def H(self) -> int:
        """Completion length of this task."""
        return self.short_len if self.task == "short" else self.completion_len

    @property
    def bon_sizes(self) -> tuple[int, ...]:
        """The best-of-N sizes, sorted (:attr:`bon_n` parsed)."""
        return parse_bon(self.bon_n)

    def validate(self) -> None:
        """Ranges (:data:`LIMITS`) and cross-field checks; UserError naming the field."""
        for name, rule in LIMITS.items():
            if isinstance(rule[0], str):
                check_choice(name, getattr(self, name), rule)
            else:
                check_range(name, getattr(self, name), *rule)
        check_model(self.model, "model")
        if self.rm_model != "sft":
            check_model(self.rm_model, "rm_model")
        check_device(self.device)
        self.bon_sizes  # noqa: B018 - parses, UserError on a bad list
        if max(self.bon_sizes) > 256:
            raise UserError(f"bon_n: at most 256, got {self.bon_n!r}")
        if self.task == "count" and self.prompt_len < 2:
            raise UserError(f"prompt_len: task {self.task} needs >= 2, got {self.prompt_len}")
        n = self.n_train_prompts + self.n_eval_prompts
        if self.prompt_len * math.log2(self.vocab) < math.log2(4 * n):
            raise UserError(
                f"n_train_prompts + n_eval_prompts = {n} distinct prompts need vocab**prompt_len"
                f" >= 4x that; got {self.vocab}**{self.prompt_len}"
            )
        if self.holdout_cells and self.task == "count":
            cells = self.vocab**2
            held = max(1, round(EVAL_CELL_SHARE * cells))
            per_cell = float(self.vocab) ** (self.prompt_len - 2)
            if (
                self.n_eval_prompts > held * per_cell / 2
                or self.n_train_prompts > (cells - held) * per_cell / 2
            ):
                raise UserError(
                    f"holdout_cells: {held} held-out (x1, x2) cells leave too few distinct "
                    "prompts for n_train_prompts / n_eval_prompts; raise prompt_len or vocab, "
                    "or set holdout_cells = false"
                )
        if round(self.val_fraction * self.n_train_prompts) < 2:
            raise UserError(
                f"val_fraction: {self.val_fraction} of {self.n_train_prompts} training prompts "
                "leaves fewer than 2 validation prompts"
            )
        if self.batch_size % self.grad_accum:
            raise UserError(
                f"grad_accum must divide batch_size; got {self.grad_accum} and {self.batch_size}"
            )
        need = estimate_bytes(self)
        if need > MAX_BYTES:
            raise UserError(
                f"n_train_prompts x (demos + pairs + online_samples) x row length needs about "
                f"{need / 2**30:.1f} GiB of token rows > {MAX_BYTES / 2**30:.0f} GiB; "
                "lower n_train_prompts, online_samples or completion_len"
            )


#: Allowed values: (lo, hi) closed for numbers, a tuple of strings for choices. The upper
#: bounds keep one run's work bounded; the memory of its token rows is checked on top.
LIMITS: dict[str, tuple] = {
    "task": TASKS,
    "vocab": (2, 4096),
    "prompt_len": (1, 512),
    "completion_len": (1, 1024),
    "short_len": (1, 2),
    "reward_scale": (1e-3, 1e3),
    "demo_skill": (0.0, 1.0),
    "demo_style": (0.0, 1.0),
    "n_train_prompts": (8, 1_000_000),
    "n_eval_prompts": (2, 100_000),
    "demos_per_prompt": (1, 1000),
    "pairs_per_prompt": (1, 1000),
    "val_fraction": (0.01, 0.5),
    "dtype": ("float32", "bfloat16", "float64"),
    "lr": (1e-8, 1.0),
    "pref_lr": (1e-8, 1.0),
    "batch_size": (1, 65_536),
    "grad_accum": (1, 1024),
    "sft_steps": (0, 1_000_000),
    "rm_steps": (0, 1_000_000),
    "dpo_steps": (0, 1_000_000),
    "online_steps": (0, 1_000_000),
    "eval_every": (1, 1_000_000),
    "checkpoint_every": (0, 1_000_000),
    "beta": (1e-3, 1e3),
    "online_samples": (2, 256),
    "online_temperature": (0.01, 100.0),
    "eval_samples": (1, 1000),
    "frontier": (1, 64),
}
#: Most bytes of token rows one run may hold (int64 rows of every stage's data).
MAX_BYTES = 4 * 2**30


def estimate_bytes(cfg: LLMConfig) -> float:
    """Bytes of the int64 token rows a run holds at once: demonstrations, pairs (chosen +
    rejected), one round of online samples and the evaluation samples."""
    row = 8.0 * (cfg.prompt_len + 2 + cfg.H)
    per_prompt = cfg.demos_per_prompt + 2 * cfg.pairs_per_prompt + cfg.online_samples
    evals = cfg.n_eval_prompts * cfg.eval_samples * (2 + max(parse_bon(cfg.bon_n)))
    return row * (cfg.n_train_prompts * per_prompt + evals)


def parse_bon(text: str) -> tuple[int, ...]:
    """``"1,2,5"`` → ``(1, 2, 5)`` (sorted, distinct, each in [1, 256]).

    Raises:
        UserError: naming ``bon_n``.
    """
    try:
        sizes = tuple(sorted({int(t) for t in str(text).split(",")}))
    except ValueError:
        sizes = ()
    if not sizes or len(str(text)) > 200 or sizes[0] < 1 or sizes[-1] > 256:
        raise UserError(f"bon_n must list integers in [1, 256], e.g. '1,2,4,8'; got {text!r}")
    return sizes


def check_model(model: str, name: str) -> None:
    """A PRESETS key or a local checkpoint directory whose config.json reads as JSON."""
    import json

    if model in PRESETS:
        return
    path = Path(model) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        cfg = None
    if not isinstance(cfg, dict) or cfg.get("model_type") != "gpt_neox":
        raise UserError(
            f"{name}: one of {', '.join(PRESETS)} or a local GPT-NeoX checkpoint directory "
            f"with a readable config.json; got {model[:80]!r}"
        )


def check_device(device: str) -> None:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (availability is checked at run time)."""
    base, _, index = device.partition(":")
    if base not in ("cpu", "cuda", "auto") or (index and (base != "cuda" or not index.isdigit())):
        raise UserError(f"device: one of cpu, cuda, cuda:N, auto; got {device[:40]!r}")


def config_fields() -> dict[str, Any]:
    """Field name → default (the ``gvgap show llm`` table)."""
    import dataclasses

    return {f.name: f.default for f in dataclasses.fields(LLMConfig)}
