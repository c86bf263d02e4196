"""The checkpointed, resumable runner of ``gvgap llm run`` (DESIGN §4, §5).

Layout of ``DIR``::

    llm_manifest.json                  provenance + the validated spec (a different spec is refused)
    stages/<task>-s<seed>-<run_id>/<stage>/
        model.pt  tensors.pt  info.json   one finished stage (directory renamed into place)
    runs/<run_id>.json                 one finished run (config, seeds, metrics)
    results.parquet                    the tidy table (sweep contract, experiment = "llm")

Every stage is a pure function of (config, instance_seed, seed, its inputs); its randomness is
a torch.Generator derived from (seed, stage name). A killed run therefore resumes at the first
unfinished stage and ends with the same table as an uninterrupted one. Only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gvgap.errors import UserError
from gvgap.llm import dist
from gvgap.llm.config import POLICIES, LLMConfig, LLMSpec, config_record
from gvgap.sweep.store import atomic_write, provenance, tidy_frame

MANIFEST = "llm_manifest.json"
RESULTS = "results.parquet"
#: Stage order; the second item is the config field that sizes its cost (for the ETA).
STAGES: tuple[tuple[str, str], ...] = (
    ("sft", "sft_steps"),
    ("pairs", "n_train_prompts"),
    ("global_rm", "rm_steps"),
    ("local_rm", "rm_steps"),
    ("dpo", "dpo_steps"),
    ("dpo_extra", "dpo_steps"),
    ("online_dpo_sft", "online_steps"),
    ("online_dpo_dpo", "online_steps"),
    ("online_dpo_iter", "online_steps"),
    ("online_dpo_gold", "online_steps"),
    ("evaluate", "n_eval_prompts"),
)


class StopRunError(Exception):
    """Raised by the ``stop_after`` hook (tests of resumption: a kill after a stage)."""


def run_id(cfg: LLMConfig, seed: int, instance_seed: int) -> str:
    """Stable id of one run: a digest of its config and seeds."""
    key = json.dumps([config_record(cfg), seed, instance_seed], sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def spec_json(spec: LLMSpec) -> dict[str, Any]:
    """The spec as the manifest stores it."""
    return {
        "configs": [config_record(c) for c in spec.configs],
        "seeds": list(spec.seeds),
        "instance_seed": spec.instance_seed,
    }


def check_out_dir(out: Path, spec: LLMSpec) -> None:
    """Refuse a DIR holding another spec or other results; creates nothing.

    Raises:
        UserError: naming --out.
    """
    man = out / MANIFEST
    if man.exists():
        try:
            old = json.loads(man.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"--out {out}: cannot read {MANIFEST}: {exc}") from None
        if old.get("spec") != spec_json(spec):
            raise UserError(f"--out {out} holds a different llm spec; choose another --out")
    elif (out / RESULTS).exists() or (out / "stages").exists():
        raise UserError(f"--out {out} holds results but no {MANIFEST}; refusing to overwrite")
    parent = out if out.exists() else out.parent
    while not parent.exists():
        parent = parent.parent
    if (out.exists() and not out.is_dir()) or not os.access(parent, os.W_OK):
        raise UserError(f"--out {out}: cannot write there")


class StageStore:
    """Finished stages of one run under ``root``; each is a directory renamed into place."""

    def __init__(self, root: Path, write: bool) -> None:
        self.root, self.write = root, write

    def done(self, stage: str) -> bool:
        return (self.root / stage / "info.json").is_file()

    def save(self, stage: str, modules: dict, tensors: dict, info: dict) -> None:
        if not self.write:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{stage}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        for name, mod in modules.items():
            torch.save(mod.state_dict(), tmp / f"{name}.pt")
        if tensors:
            torch.save(tensors, tmp / "tensors.pt")
        (tmp / "info.json").write_text(json.dumps(info, sort_keys=True))
        final = self.root / stage
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)

    def load(self, stage: str, modules: dict) -> tuple[dict, dict]:
        d = self.root / stage
        for name, mod in modules.items():
            mod.load_state_dict(torch.load(d / f"{name}.pt", map_location="cpu"))
        path = d / "tensors.pt"
        tensors = torch.load(path, map_location="cpu") if path.exists() else {}
        return tensors, json.loads((d / "info.json").read_text())

    def clean(self) -> None:
        if self.root.is_dir():
            for tmp in self.root.glob(".*.tmp"):
                shutil.rmtree(tmp, ignore_errors=True)


class Progress:
    """Plain progress lines with elapsed time and ETA (no terminal needed), to stderr."""

    def __init__(self, total: float, stream: Any = None) -> None:
        self.total, self.done, self.fresh = total, 0.0, 0.0
        self.t0 = time.monotonic()
        self.stream = stream or sys.stderr

    def step(self, label: str, units: float, resumed: bool) -> None:
        self.done += units
        if not resumed:
            self.fresh += units
        el = time.monotonic() - self.t0
        rate = self.fresh / el if el > 0 and self.fresh > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        tag = "resumed" if resumed else "done"
        print(
            f"llm: {100 * self.done / self.total:5.1f}% {label} {tag}; "
            f"elapsed {el:6.1f}s eta {eta:6.1f}s",
            file=self.stream,
            flush=True,
        )


def stage_units(cfg: LLMConfig) -> dict[str, float]:
    """Relative cost of each stage (ETA weights)."""
    units = {name: float(max(getattr(cfg, f), 1)) for name, f in STAGES}
    units["online_dpo_iter"] *= cfg.online_rounds
    return units


def run_one(
    cfg: LLMConfig,
    seed: int,
    instance_seed: int,
    out: Path,
    progress: Progress,
    stop_after: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) every stage of one (config, seed); return its run record."""
    from gvgap.llm import evaluate as ev
    from gvgap.llm import stages as st
    from gvgap.llm.model import RewardModel
    from gvgap.llm.tasks import make_task
    from gvgap.nn.device import resolve

    placement = resolve(_rank_device(cfg.device), cfg.dtype)
    dist.setup(placement.is_cuda)
    rid = run_id(cfg, seed, instance_seed)
    task = make_task(cfg, instance_seed)
    store = StageStore(out / "stages" / f"{cfg.task}-s{seed}-{rid}", write=dist.is_main())
    store.clean()
    units = stage_units(cfg)
    models: dict[str, Any] = {}
    infos: dict[str, dict] = {}
    data: dict[str, Any] = {}

    def lm() -> Any:
        return st.new_lm(cfg, task, seed, placement)

    def step(name: str, make: Callable[[], tuple[Any, dict]], skeleton: Callable[[], Any]) -> None:
        resumed = store.done(name)
        if resumed:
            mod = skeleton()
            tensors, info = store.load(name, {"model": mod} if mod is not None else {})
        else:
            mod, info = make()
            tensors = mod if isinstance(mod, dict) else {}
            mod = None if isinstance(mod, dict) else mod
            store.save(name, {"model": mod} if mod is not None else {}, tensors, info)
        if mod is not None:
            models[name] = mod
        data[name], infos[name] = tensors, info
        progress.step(f"{cfg.task} seed {seed}: {name}", units[name], resumed)
        if name == stop_after:
            raise StopRunError(name)

    step("sft", lambda: st.stage_sft(cfg, task, seed, placement), lm)
    sft = models["sft"]

    def make_pairs() -> tuple[dict, dict]:
        p = st.stage_pairs(cfg, task, sft, seed, placement)
        flat = {f"{s}_{k}": v for s, d in p.items() for k, v in d.items()}
        return flat, {"n_train": len(p["train"]["chosen"]), "n_val": len(p["val"]["chosen"])}

    step("pairs", make_pairs, lambda: None)
    flat = data["pairs"]
    pairs = {s: {k: flat[f"{s}_{k}"] for k in ("chosen", "rejected")} for s in ("train", "val")}
    tr = pairs["train"]
    step(
        "global_rm",
        lambda: st.stage_global_rm(cfg, task, sft, tr, seed, placement),
        lambda: RewardModel(lm(), 0),
    )
    step("local_rm", lambda: st.stage_local_rm(cfg, task, sft, tr, seed, placement), lm)
    step("dpo", lambda: st.stage_dpo(cfg, task, sft, sft, tr, seed, placement), lm)
    step(
        "dpo_extra",
        lambda: st.stage_dpo(cfg, task, models["dpo"], sft, tr, seed, placement, name="dpo_extra"),
        lm,
    )
    rm = models["global_rm"]
    for name, init, rounds, labeller in (
        ("online_dpo_sft", "sft", 1, rm),
        ("online_dpo_dpo", "dpo", 1, rm),
        ("online_dpo_iter", "sft", cfg.online_rounds, rm),
        ("online_dpo_gold", "sft", 1, None),  # oracle labeller: the positive control
    ):
        step(
            name,
            lambda i=init, r=rounds, n=name, lab=labeller: st.stage_online(
                cfg, task, models[i], sft, lab, r, seed, placement, n
            ),
            lm,
        )

    def make_eval() -> tuple[dict, dict]:
        r_ref = ev.ref_rewards(cfg, task, sft, seed, placement)
        metrics: dict[str, float] = {}
        for name in POLICIES:
            m = ev.policy_metrics(cfg, task, models[name], sft, r_ref, seed, name, placement)
            metrics.update({f"{name}/{k}": v for k, v in m.items()})
        args = (rm, models["local_rm"], models["dpo"])
        metrics.update(ev.best_of_n(cfg, task, sft, *args, r_ref, seed, placement))
        metrics.update(ev.rm_validation(cfg, task, pairs["val"], *args, sft, placement))
        for name, info in infos.items():
            if "grad_norm" in info:
                metrics[f"{name}/grad_norm"] = info["grad_norm"]
        return {}, metrics

    step("evaluate", make_eval, lambda: None)
    return {
        "run_id": rid,
        "experiment": "llm",
        "config": config_record(cfg),
        "seed": seed,
        "instance_seed": instance_seed,
        "metrics": infos["evaluate"],
    }


def _rank_device(device: str) -> str:
    """Under torchrun on CUDA, each rank takes ``cuda:LOCAL_RANK``."""
    if dist.world()[1] > 1 and device in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def run_spec(
    spec: LLMSpec, out: str | os.PathLike, stop_after: str | None = None, stream: Any = None
) -> Any:
    """Run every (config, seed) of ``spec`` into ``out``; write results.parquet; return it.

    Raises:
        UserError: ``out`` holds another spec or cannot be written (checked before writing).
        StopRunError: the ``stop_after`` hook fired (after that stage was checkpointed).
    """
    out = Path(out)
    check_out_dir(out, spec)
    runs = spec.runs()
    total = sum(sum(stage_units(c).values()) for c, _ in runs)
    progress = Progress(total, stream)
    if dist.is_main():
        (out / "runs").mkdir(parents=True, exist_ok=True)
        man = {"format": 1, "experiment": "llm", **provenance(), "spec": spec_json(spec)}
        atomic_write(out / MANIFEST, json.dumps(man, indent=1, sort_keys=True).encode())
    records = []
    for cfg, seed in runs:
        rec = run_one(cfg, seed, spec.instance_seed, out, progress, stop_after)
        records.append(rec)
        if dist.is_main():
            atomic_write(out / "runs" / f"{rec['run_id']}.json", json.dumps(rec).encode())
    fields = list(config_record(spec.configs[0]))
    df = tidy_frame(records, fields)
    if dist.is_main():
        tmp = out / f".{RESULTS}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            df.to_parquet(tmp, index=False)
            os.replace(tmp, out / RESULTS)
        finally:
            tmp.unlink(missing_ok=True)
    dist.barrier()
    return df
