"""Frozen configuration of the LLM-scale pipeline (THEORY §5, DESIGN §4 ``gvgap llm run``).

Imports nothing heavy: the CLI validates a TOML file with this module alone, before torch or
transformers are loaded and before anything is written.

TOML layout (``sims/llm_tiny.toml``)::

    [llm]
    tasks = ["sum", "short", "rouge"]   # one run per task and seed
    seeds = 2                           # seeds 0 .. seeds-1 (data and learners)
    instance_seed = 0                   # draws the task (prompt sets, hidden references)

    [fixed]                             # any LLMConfig field
    model = "tiny"
    sft_steps = 300
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gvgap.errors import UserError

#: Policies the pipeline evaluates, in the order of the paper's table (best-of-N arms are
#: added by the pipeline and appended by the report).
POLICIES = (
    "sft",
    "dpo",
    "dpo_extra",
    "online_dpo_sft",
    "online_dpo_dpo",
    "online_dpo_iter",
    "online_dpo_gold",
)

TASKS = ("sum", "count", "short", "rouge")


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
    "small": ModelPreset(hidden=128, layers=4, heads=4, ffn=512),
    "m20": ModelPreset(hidden=384, layers=10, heads=6, ffn=1536),
    "m70": ModelPreset(hidden=512, layers=6, heads=8, ffn=2048, vocab=50304),
    "pythia-410m": ModelPreset(hidden=1024, layers=24, heads=16, ffn=4096, vocab=50304),
    "pythia-1.4b": ModelPreset(hidden=2048, layers=24, heads=16, ffn=8192, vocab=50304),
}


@dataclass(frozen=True)
class LLMConfig:
    """One run of the pipeline: a task, a model and every stage's knobs.

    Attributes:
        task: ``sum`` (gap: completion digits must sum to a prompt-set target mod V — the last
            tokens must plan for the earlier ones), ``count`` (gap: exactly c(x) copies of a
            prompt-set keyword — the tokens must coordinate), ``short`` (control: the count
            reward on a ``short_len``-token completion, the paper's two-word summaries),
            ``rouge`` (control: reward = LCS overlap with a hidden per-prompt reference, the
            paper's ROUGE-L). See :mod:`gvgap.llm.tasks`.
        vocab: content tokens 0..vocab-1 (two more ids are SEP and BOS).
        prompt_len: prompt tokens P.
        completion_len: completion tokens H of ``sum`` and ``rouge``.
        short_len: completion tokens of ``short`` (1 or 2).
        reward_scale: gold reward r* lies in [0, reward_scale]; BT(gold) uses it as is.
        demo_skill: probability the demonstrator plans (sum/short: the last token hits the
            target; rouge: a token copies the reference) — the rest is uniform noise.
        n_train_prompts: prompts for SFT, pairs and online DPO.
        n_eval_prompts: held-out prompts for every evaluation.
        demos_per_prompt: SFT demonstrations per training prompt.
        pairs_per_prompt: preference pairs (π_ref samples, BT(gold) labels) per prompt.
        model: a key of PRESETS, or a local checkpoint directory (HF ``save_pretrained``).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (gvgap.nn.device).
        dtype: ``float32``, ``bfloat16`` (autocast) or ``float64``.
        lr: AdamW learning rate of SFT.
        pref_lr: AdamW learning rate of the preference stages (RMs, DPO, online DPO).
        batch_size: global batch (sequences or pairs) of every stage.
        sft_steps, rm_steps, dpo_steps, online_steps: optimiser steps per stage (online: per
            round).
        beta: KL strength β of DPO, online DPO and the local RM (the paper: 0.05).
        online_samples: N samples per prompt in online DPO (the paper: 25).
        online_temperature: sampling temperature T of online DPO (the paper: 0.1).
        online_rounds: rounds of the iterated online DPO (the one-round arms use 1).
        bon_n: the N of best-of-N (the paper: 1, 2, 5, 10, 25).
        eval_samples: samples per eval prompt for gold reward, win rate and KL.
    """

    task: str = "sum"
    vocab: int = 8
    prompt_len: int = 4
    completion_len: int = 6
    short_len: int = 2
    reward_scale: float = 4.0
    demo_skill: float = 0.3
    n_train_prompts: int = 128
    n_eval_prompts: int = 32
    demos_per_prompt: int = 4
    pairs_per_prompt: int = 2
    model: str = "tiny"
    device: str = "cpu"
    dtype: str = "float32"
    lr: float = 3e-3
    pref_lr: float = 1e-3
    batch_size: int = 32
    sft_steps: int = 200
    rm_steps: int = 100
    dpo_steps: int = 100
    online_steps: int = 100
    beta: float = 0.1
    online_samples: int = 8
    online_temperature: float = 0.7
    online_rounds: int = 2
    bon_n: tuple[int, ...] = field(default=(1, 2, 4, 8))
    eval_samples: int = 4

    @property
    def horizon(self) -> int:
        """Completion length of this task."""
        return self.short_len if self.task == "short" else self.completion_len


#: (lower bound, inclusive upper bound or None) of the numeric fields.
_RANGES: dict[str, tuple[float, float | None]] = {
    "vocab": (2, 4096),
    "prompt_len": (1, 4096),
    "completion_len": (1, 4096),
    "short_len": (1, 2),
    "reward_scale": (1e-6, None),
    "demo_skill": (0.0, 1.0),
    "n_train_prompts": (2, None),
    "n_eval_prompts": (2, None),
    "demos_per_prompt": (1, None),
    "pairs_per_prompt": (1, None),
    "lr": (1e-12, None),
    "pref_lr": (1e-12, None),
    "batch_size": (1, None),
    "sft_steps": (0, None),
    "rm_steps": (0, None),
    "dpo_steps": (0, None),
    "online_steps": (0, None),
    "beta": (1e-9, None),
    "online_samples": (2, None),
    "online_temperature": (1e-3, None),
    "online_rounds": (1, None),
    "eval_samples": (1, None),
}


def _check_field(name: str, value: Any, default: Any) -> Any:
    where = f"[fixed] {name}"
    if isinstance(default, bool) or isinstance(value, bool):
        raise UserError(f"{where}: expected a {type(default).__name__}, got {value!r}")
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or not value:
            raise UserError(f"{where}: expected a non-empty list of integers >= 1, got {value!r}")
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in value):
            raise UserError(f"{where}: expected integers >= 1, got {value!r}")
        return tuple(sorted(set(value)))
    if isinstance(default, float) and isinstance(value, int):
        value = float(value)
    if type(value) is not type(default):
        raise UserError(f"{where}: expected a {type(default).__name__}, got {value!r}")
    if name in _RANGES:
        lo, hi = _RANGES[name]
        if value < lo or (hi is not None and value > hi):
            bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise UserError(f"{where}: must be {bound}, got {value!r}")
    return value


def check_config(cfg: LLMConfig) -> LLMConfig:
    """Cross-field checks; return ``cfg``.

    Raises:
        UserError: naming the field.
    """
    if cfg.task not in TASKS:
        raise UserError(f"task must be one of {', '.join(TASKS)}; got {cfg.task!r}")
    if cfg.task in ("count", "short") and cfg.prompt_len < 2:
        raise UserError(f"[fixed] prompt_len: task {cfg.task} needs >= 2, got {cfg.prompt_len}")
    if cfg.model not in PRESETS and not (Path(cfg.model) / "config.json").is_file():
        raise UserError(
            f"[fixed] model: one of {', '.join(PRESETS)} or a local checkpoint directory "
            f"with config.json; got {cfg.model!r}"
        )
    if cfg.device.split(":", 1)[0] not in ("cpu", "cuda", "auto"):
        raise UserError(f"[fixed] device: one of cpu, cuda, cuda:N, auto; got {cfg.device!r}")
    if cfg.dtype not in ("float32", "bfloat16", "float64"):
        raise UserError(f"[fixed] dtype: one of float32, bfloat16, float64; got {cfg.dtype!r}")
    if max(cfg.bon_n) > cfg.online_samples * 64:
        raise UserError(f"[fixed] bon_n: at most {cfg.online_samples * 64}, got {cfg.bon_n}")
    return cfg


def make_config(fixed: dict[str, Any], task: str) -> LLMConfig:
    """An LLMConfig from a ``[fixed]`` table and a task name, every field checked."""
    defaults = {f.name: f.default for f in dataclasses.fields(LLMConfig)}
    defaults["bon_n"] = LLMConfig().bon_n
    kwargs: dict[str, Any] = {}
    for name, value in fixed.items():
        if name == "task":
            raise UserError("[fixed] task: set tasks in [llm] tasks = [...], not in [fixed]")
        if name not in defaults:
            raise UserError(f"[fixed] {name}: unknown field; allowed: {', '.join(defaults)}")
        kwargs[name] = _check_field(name, value, defaults[name])
    return check_config(LLMConfig(task=task, **kwargs))


@dataclass(frozen=True)
class LLMSpec:
    """A parsed ``gvgap llm run`` file: the runs (config, seed) and the instance seed."""

    configs: tuple[LLMConfig, ...]
    seeds: tuple[int, ...]
    instance_seed: int
    source: str

    def runs(self) -> list[tuple[LLMConfig, int]]:
        """Every (config, seed), tasks outer."""
        return [(c, s) for c in self.configs for s in self.seeds]


def _int(where: str, value: Any, lo: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise UserError(f"{where}: expected an integer >= {lo}, got {value!r}")
    return value


def spec_from_data(data: dict[str, Any], source: str) -> LLMSpec:
    """Validate a parsed TOML document (module docstring); raise UserError naming the field."""
    unknown = set(data) - {"llm", "fixed"}
    if unknown:
        raise UserError(f"{source}: unknown table [{sorted(unknown)[0]}]; allowed: llm, fixed")
    head = data.get("llm", {})
    fixed = data.get("fixed", {})
    if not isinstance(head, dict) or not isinstance(fixed, dict):
        raise UserError(f"{source}: [llm] and [fixed] must be tables")
    extra = set(head) - {"tasks", "seeds", "instance_seed"}
    if extra:
        raise UserError(
            f"[llm] {sorted(extra)[0]}: unknown key; allowed: tasks, seeds, instance_seed"
        )
    tasks = head.get("tasks", list(TASKS))
    if not isinstance(tasks, list) or not tasks or any(t not in TASKS for t in tasks):
        raise UserError(f"[llm] tasks: a non-empty list from {', '.join(TASKS)}; got {tasks!r}")
    seeds = _int("[llm] seeds", head.get("seeds", 1), 1)
    instance_seed = _int("[llm] instance_seed", head.get("instance_seed", 0), 0)
    configs = tuple(make_config(fixed, t) for t in dict.fromkeys(tasks))
    return LLMSpec(configs, tuple(range(seeds)), instance_seed, source)


def load_spec(path: str | Path) -> LLMSpec:
    """Read and validate a ``gvgap llm run`` TOML file.

    Raises:
        UserError: unreadable file, bad TOML, or a bad field (named).
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    return spec_from_data(data, str(path))


def config_record(cfg: LLMConfig) -> dict[str, Any]:
    """The config as a flat dict of columns (tuples as strings, for parquet)."""
    rec = dataclasses.asdict(cfg)
    rec["bon_n"] = ",".join(map(str, cfg.bon_n))
    return rec
