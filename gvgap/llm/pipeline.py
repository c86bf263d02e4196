"""The staged, checkpointed runner of one LLM run (one config, one seed).

:func:`run_stages` runs every stage of :data:`STAGES` in order and returns the run's metrics
(``"<pipeline>/<metric>"`` keys, the sweep's tidy contract). With a ``root`` directory each
finished stage is stored there and a re-run resumes at the first stage that is not::

    <root>/<stage>/   model.pt  tensors.pt  info.json  hashes.json
    <root>/.partial/<stage>/    the mid-stage checkpoint of the stage in progress

``hashes.json`` (SHA-256 of every other file) is written last: a stage whose files do not
match it — truncated by a kill, edited by hand, corrupted on disk — is reported on one line
and run again. Every stage is a pure function of (config, instance_seed, seed, its inputs);
its randomness is a torch.Generator derived from (seed, stage name), so a resumed run ends
with the same metrics as an uninterrupted one, and ``gvgap sweep`` (no root: in memory)
with the same as ``gvgap llm run``.

Stage models live on disk, not all in memory: a finished stage's model is loaded when a later
stage needs it and at most :data:`RESIDENT` models are kept (in memory runs keep all).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gvgap.atomic import atomic_dir
from gvgap.llm import evaluate as ev
from gvgap.llm import stages as st
from gvgap.llm.config import LLMConfig
from gvgap.llm.model import build_rm
from gvgap.llm.tasks import Task, make_task
from gvgap.llm.train import seal, verified
from gvgap.nn.device import Placement, fixed_threads, resolve

#: (stage, the config field that sizes its cost: the ETA's weights).
STAGES: tuple[tuple[str, str], ...] = (
    ("sft", "sft_steps"),
    ("rm_sft", "sft_steps"),
    ("pairs", "n_train_prompts"),
    ("global_rm", "rm_steps"),
    ("local_rm", "rm_steps"),
    ("dpo", "dpo_steps"),
    ("dpo_extra", "dpo_steps"),
    ("online_dpo_sft", "online_steps"),
    ("online_dpo_dpo", "online_steps"),
    ("online_dpo_local", "online_steps"),
    ("online_dpo_gold", "online_steps"),
    ("evaluate", "n_eval_prompts"),
)
#: Online arms: (stage, starting policy, labeller). ``gold`` labels by r* itself (the
#: positive control); ``local`` by the local RM (a second labeller of lower accuracy).
ONLINE: tuple[tuple[str, str, str], ...] = (
    ("online_dpo_sft", "sft", "global"),
    ("online_dpo_dpo", "dpo", "global"),
    ("online_dpo_local", "sft", "local"),
    ("online_dpo_gold", "sft", "gold"),
)
#: Matched-KL comparisons: (online arm, offline arm with the same start).
MATCHED: tuple[tuple[str, str], ...] = (
    ("online_dpo_sft", "dpo"),
    ("online_dpo_local", "dpo"),
    ("online_dpo_gold", "dpo"),
    ("online_dpo_dpo", "dpo_extra"),
)
#: Stage infos reported as metrics (optimiser state, early stopping, online pairs).
INFO_METRICS = (
    "grad_norm",
    "steps",
    "best_step",
    "val_loss",
    "pairs_kept",
    "distinct",
    "label_accuracy",
    "label_accuracy_se",
    "label_ties",
    "n_pairs",
)
#: Stage models kept in memory at once when stages are stored on disk.
RESIDENT = 3
#: The policies whose final metrics the table shows (their last frontier point).
POLICY_STAGES = ("dpo", "dpo_extra", *(s for s, _, _ in ONLINE))


class StopRunError(Exception):
    """Raised by the ``stop_after`` hook (tests of resumption: a kill after a stage)."""


def warn(message: str) -> None:
    """One ``gvgap: …`` line on stderr."""
    print(f"gvgap: {message}", file=sys.stderr, flush=True)


class StageStore:
    """Finished stages of one run under ``root`` (module docstring); ``root`` None keeps
    nothing on disk. Only the writing process (rank 0) saves."""

    def __init__(self, root: Path | None, write: bool = True) -> None:
        self.root, self.write = root, write and root is not None

    def partial(self, stage: str) -> Path | None:
        """The mid-stage checkpoint directory of ``stage`` (None without a root)."""
        return None if self.root is None else self.root / ".partial" / stage

    def done(self, stage: str) -> bool:
        """Whether ``stage`` is stored and its hashes verify (a broken one is reported)."""
        if self.root is None or not (self.root / stage).exists():
            return False
        if verified(self.root / stage):
            return True
        warn(f"{self.root / stage}: incomplete or corrupt (hash mismatch); re-running {stage}")
        if self.write:
            shutil.rmtree(self.root / stage, ignore_errors=True)
        return False

    def save(self, stage: str, model: nn.Module | None, tensors: dict, info: dict) -> None:
        """Store a finished stage: a temporary directory, sealed, renamed into place."""
        if not self.write:
            return
        self.root.mkdir(parents=True, exist_ok=True)

        def fill(tmp: Path) -> None:
            if model is not None:
                torch.save(model.state_dict(), tmp / "model.pt")
            if tensors:
                torch.save(tensors, tmp / "tensors.pt")
            (tmp / "info.json").write_text(json.dumps(info, sort_keys=True))
            seal(tmp)

        atomic_dir(self.root / stage, fill)
        shutil.rmtree(self.root / ".partial" / stage, ignore_errors=True)

    def load_info(self, stage: str) -> tuple[dict, dict]:
        """``(tensors, info)`` of a stored stage."""
        d = self.root / stage
        path = d / "tensors.pt"
        tensors = torch.load(path, map_location="cpu") if path.exists() else {}
        return tensors, json.loads((d / "info.json").read_text())

    def load_model(self, stage: str, skeleton: nn.Module) -> nn.Module:
        """``skeleton`` with the stored parameters of ``stage``."""
        sd = torch.load(self.root / stage / "model.pt", map_location="cpu")
        skeleton.load_state_dict(sd)
        return skeleton

    def clean(self) -> None:
        """Remove temporary directories a killed run left."""
        if self.write and self.root.is_dir():
            for tmp in self.root.glob(".*.tmp"):
                shutil.rmtree(tmp, ignore_errors=True)


class Models:
    """Stage models by name: in memory, or loaded from the store on demand (an LRU of
    :data:`RESIDENT`); ``make(name)`` builds the skeleton a stored model loads into."""

    def __init__(self, store: StageStore, make: Callable[[str], nn.Module]) -> None:
        self.store, self.make = store, make
        self.cache: OrderedDict[str, nn.Module] = OrderedDict()

    def put(self, name: str, model: nn.Module) -> None:
        self.cache[name] = model
        self._trim()

    def __getitem__(self, name: str) -> nn.Module:
        if name not in self.cache:
            self.cache[name] = self.store.load_model(name, self.make(name))
        self.cache.move_to_end(name)
        self._trim()
        return self.cache[name]

    def _trim(self) -> None:
        if self.store.root is not None:
            while len(self.cache) > RESIDENT:
                self.cache.popitem(last=False)


def stage_names(cfg: LLMConfig) -> list[str]:
    """The stages this config runs (``rm_sft`` only with its own RM backbone)."""
    return [s for s, _ in STAGES if s != "rm_sft" or cfg.rm_model != "sft"]


def stage_units(cfg: LLMConfig) -> dict[str, int]:
    """Relative cost of each stage (progress weights)."""
    return {name: max(int(getattr(cfg, f)), 1) for name, f in STAGES if name in stage_names(cfg)}


def rank_device(device: str) -> str:
    """Under torchrun on CUDA, each rank takes ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and device in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def run_stages(
    cfg: LLMConfig,
    seed: int,
    instance_seed: int,
    root: Path | None = None,
    *,
    write: bool = True,
    progress: Any = None,
    stop_after: str | None = None,
) -> dict[str, float]:
    """Run (or resume under ``root``) every stage of one (config, seed); return its metrics.

    On the CPU the stages run on one intra-op thread (:func:`gvgap.nn.device.fixed_threads`):
    the numbers do not depend on the machine's core count or the executor."""
    placement = resolve(rank_device(cfg.device), cfg.dtype)
    task = make_task(cfg, instance_seed)
    store = StageStore(root, write)
    store.clean()
    runner = _Runner(cfg, task, seed, placement, store, progress, stop_after)
    with fixed_threads(placement):
        return runner.run()


class _Runner:
    """One run's stages (the body of :func:`run_stages`)."""

    def __init__(self, cfg, task: Task, seed: int, placement: Placement, store, progress, stop):
        self.cfg, self.task, self.seed, self.p = cfg, task, seed, placement
        self.store, self.progress, self.stop = store, progress, stop
        self.units = stage_units(cfg)
        self.models = Models(store, self.skeleton)
        self.infos: dict[str, dict] = {}
        self.data: dict[str, dict] = {}
        self.refs: dict[str, torch.Tensor] | None = None
        self.sft_eval: dict[str, float] | None = None
        self.ref_cache: dict[str, st.Pairs] = {}

    def skeleton(self, name: str) -> nn.Module:
        cfg, task = self.cfg, self.task
        base = st.new_lm(cfg, task, self.seed, self.p, cfg.rm_model if name == "rm_sft" else "")
        if name == "global_rm":
            if cfg.rm_model != "sft":
                base = st.new_lm(cfg, task, self.seed, self.p, cfg.rm_model)
            return build_rm(base, 0, pad_id=task.vocab_size - 1)
        return base

    def step(self, name: str, make: Callable[[], tuple[nn.Module | None, dict, dict]]) -> None:
        """Load a stored stage or run it (``make`` → model, tensors, info) and store it."""
        if self.store.done(name):
            self.data[name], self.infos[name] = self.store.load_info(name)
        else:
            model, tensors, info = make()
            self.store.save(name, model, tensors, info)
            if model is not None:
                self.models.put(name, model)
            self.data[name], self.infos[name] = tensors, info
        if self.progress is not None:
            self.progress.update(self.units[name])
        if name == self.stop:
            raise StopRunError(name)

    def run(self) -> dict[str, float]:
        cfg, task, seed, p, ckpt = self.cfg, self.task, self.seed, self.p, self.store.partial
        self.step("sft", lambda: (*_stage(st.stage_sft(cfg, task, seed, p, ckpt=ckpt("sft"))),))
        if cfg.rm_model != "sft":
            self.step(
                "rm_sft",
                lambda: _stage(st.stage_sft(cfg, task, seed, p, cfg.rm_model, ckpt("rm_sft"))),
            )
        self.step("pairs", self.make_pairs)
        pairs = self.pairs()
        backbone = "rm_sft" if cfg.rm_model != "sft" else "sft"
        self.step(
            "global_rm",
            lambda: _stage(
                st.stage_global_rm(
                    cfg, task, self.models[backbone], pairs, seed, p, ckpt("global_rm")
                )
            ),
        )
        self.step(
            "local_rm",
            lambda: _stage(
                st.stage_local_rm(cfg, task, self.models["sft"], pairs, seed, p, ckpt("local_rm"))
            ),
        )
        train = pairs["train"]
        self.step("dpo", lambda: self.make_dpo("dpo", "sft", train, ref_key="train"))
        self.step("dpo_extra", lambda: self.make_dpo("dpo_extra", "dpo", train, ref_key="train"))
        for name, start, labeller in ONLINE:
            self.step(name, lambda n=name, s=start, lab=labeller: self.make_online(n, s, lab))
        self.step("evaluate", self.make_eval)
        return self.infos["evaluate"]

    def pairs(self) -> dict[str, st.Pairs]:
        flat = self.data["pairs"]
        return {
            s: {k: flat[f"{s}_{k}"] for k in ("chosen", "rejected")}
            for s in ("train", "val", "test")
        }

    def make_pairs(self) -> tuple[None, dict, dict]:
        out = st.stage_pairs(self.cfg, self.task, self.models["sft"], self.seed, self.p)
        flat = {f"{s}_{k}": v for s, d in out.items() for k, v in d.items()}
        return None, flat, {f"n_{s}": len(d["chosen"]) for s, d in out.items()}

    def eval_refs(self) -> dict[str, torch.Tensor]:
        if self.refs is None:
            self.refs = ev.eval_refs(self.cfg, self.task, self.models["sft"], self.seed, self.p)
        return self.refs

    def start_metrics(self, start: str) -> dict[str, float]:
        """Policy metrics of a DPO run's starting policy (its frontier point at step 0): SFT's
        are evaluated once (generator ``eval_sft_0``, also the table's SFT row); a run that
        starts from DPO reuses DPO's last frontier record (the same policy)."""
        if start == "sft":
            if self.sft_eval is None:
                gen = st.stage_gen(self.seed, "eval_sft_0")
                sft = self.models["sft"]
                self.sft_eval = ev.policy_metrics(
                    self.cfg, self.task, sft, sft, self.eval_refs(), gen, self.p
                )
            return dict(self.sft_eval)
        records = self.infos[start]["records"]
        return dict(records[str(max(map(int, records)))])

    def frontier_hook(
        self, name: str, start: str, steps: int
    ) -> Callable[[nn.Module, int], dict | None]:
        """Policy metrics at the frontier steps of a DPO run (module docstring of evaluate);
        step 0 is the starting policy (:meth:`start_metrics`)."""
        at = set(st.frontier_steps(self.cfg, steps))
        sft, refs = self.models["sft"], self.eval_refs()

        def hook(lm: nn.Module, k: int) -> dict | None:
            if k not in at:
                return None
            if k == 0:
                return self.start_metrics(start)
            gen = st.stage_gen(self.seed, f"eval_{name}_{k}")
            return ev.policy_metrics(self.cfg, self.task, lm, sft, refs, gen, self.p)

        return hook

    def train_ref(self, pairs: st.Pairs, key: str | None) -> st.Pairs:
        """log π_ref of a pair set, computed once per set named ``key`` (offline DPO and its
        extra pass share the training pairs); ``key`` None: not kept."""
        if key is not None and key in self.ref_cache:
            return self.ref_cache[key]
        ref = st.ref_logps(self.models["sft"], pairs, self.task, self.p)
        if key is not None:
            self.ref_cache[key] = ref
        return ref

    def make_dpo(
        self,
        name: str,
        start: str,
        pairs: st.Pairs,
        extra: dict | None = None,
        ref_key: str | None = None,
    ):
        cfg, task, p = self.cfg, self.task, self.p
        steps = cfg.dpo_steps if name.startswith("dpo") else cfg.online_steps
        ref = self.train_ref(pairs, ref_key)
        lm, info = st.run_dpo(
            cfg, task, self.models[start], pairs, ref, steps, st.stage_gen(self.seed, name), p,
            on_step=self.frontier_hook(name, start, steps), ckpt=self.store.partial(name),
        )  # fmt: skip
        return lm, {}, {**info, **(extra or {})}

    def make_online(self, name: str, start: str, labeller: str):
        gen = st.stage_gen(self.seed, f"{name}_samples")
        score = ev.labellers(self.cfg, self.task, self.models, self.p)[labeller]
        pairs, quality = st.online_pairs(
            self.cfg, self.task, self.models[start], score, gen, self.p
        )
        return self.make_dpo(name, start, pairs, {**quality, "n_pairs": len(pairs["chosen"])})

    def make_eval(self) -> tuple[None, dict, dict]:
        cfg, task, seed, p = self.cfg, self.task, self.seed, self.p
        out: dict[str, float] = {}
        sft = self.models["sft"]
        refs = self.eval_refs()
        out.update({f"sft/{k}": v for k, v in self.start_metrics("sft").items()})
        for name in POLICY_STAGES:
            records = self.infos[name]["records"]
            steps = sorted(map(int, records))
            out.update({f"{name}/{k}": v for k, v in records[str(steps[-1])].items()})
            for i, k in enumerate(steps):  # the KL frontier (step, k1 KL, win rate)
                rec = records[str(k)]
                out[f"{name}/frontier{i}_step"] = float(k)
                out[f"{name}/frontier{i}_kl"] = rec["kl_k1"]
                out[f"{name}/frontier{i}_win_rate"] = rec["win_rate"]
        for online, offline in MATCHED:
            kappa, a, b = ev.matched_kl(
                self.infos[online]["records"], self.infos[offline]["records"]
            )
            out[f"{online}/kl_matched"] = kappa
            out[f"{online}/win_rate_matched"] = a
            out[f"{online}/offline_win_rate_matched"] = b
        scorers = ev.labellers(cfg, task, self.models, p)
        out.update(ev.rm_validation(self.pairs()["test"], scorers))
        out.update(ev.label_quality(cfg, task, sft, scorers, seed, p))
        out.update(ev.best_of_n(cfg, task, sft, scorers, refs, seed, p))
        for name, info in self.infos.items():
            for key in INFO_METRICS:
                if key in info:
                    out[f"{name}/{key}"] = float(info[key])
        return None, {}, out


def _stage(result: tuple[nn.Module, dict]) -> tuple[nn.Module, dict, dict]:
    """A stage's (model, info) as the runner's (model, tensors, info)."""
    model, info = result
    return model, {}, info
