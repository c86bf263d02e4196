"""The one training loop of every stage, on ``accelerate`` (data parallel, gradient accumulation,
clipping, checkpoints), with early stopping on a validation split.

Data parallel with no code change: under ``torchrun`` / ``accelerate launch`` (several
processes) ``Accelerator.prepare`` wraps the module in DistributedDataParallel. Every rank
draws the same global batch of row indices from the same generator and keeps rows
r, r+W, r+2W, … (DistributedSampler's striding); its loss is Σ_rows ℓ · W / m for a
micro-batch of m rows, DDP averages the gradients over the W ranks and
``accelerator.backward`` divides by the A micro-batches of a step, so every rank takes the
step of one process on the global-batch mean Σ ℓ / B (up to float summation order).

Early stopping: every ``eval_every`` steps (and at the last step) the validation loss is
computed; the parameters of the best check are restored at the end, and training stops after
:data:`PATIENCE` checks without improvement. Mid-stage checkpoints (``checkpoint_every``):
``Accelerator.save_state`` of the model and optimiser plus the loop state (step, generator,
early-stopping record), each file's SHA-256 written last into ``hashes.json``; a checkpoint
whose hashes do not verify is reported on one line and ignored (the stage starts over).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gvgap.atomic import atomic_dir
from gvgap.errors import UserError
from gvgap.llm.config import LLMConfig

#: Gradient clipping threshold of every stage (the norm before clipping is reported).
CLIP = 1.0
#: Validation checks without improvement before a stage with a validation loss stops.
PATIENCE = 6
HASHES = "hashes.json"


def accelerator(cfg: LLMConfig, device: torch.device) -> Any:
    """A fresh ``accelerate.Accelerator`` for one stage (mixed precision stays with
    :func:`gvgap.nn.device.autocast`: the device and dtype are chosen in one place)."""
    try:
        from accelerate import Accelerator
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise UserError("the LLM path needs accelerate: pip install 'gvgap[hf]'") from None
    return Accelerator(cpu=device.type == "cpu", gradient_accumulation_steps=cfg.grad_accum)


def shard(batch: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's rows of a global batch of row indices (stride ``world``, offset ``rank``)."""
    return batch[rank::world]


def file_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` except :data:`HASHES` (relative path → hex)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != HASHES:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def verified(root: Path) -> bool:
    """Whether ``root`` holds a complete checkpoint: its files equal ``hashes.json``."""
    try:
        want = json.loads((root / HASHES).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(want, dict) and want == file_hashes(root)


def seal(root: Path) -> None:
    """Write ``hashes.json`` last, inside a directory that is then renamed into place (a
    checkpoint without a matching ``hashes.json`` is incomplete)."""
    (root / HASHES).write_text(json.dumps(file_hashes(root), sort_keys=True))


@contextlib.contextmanager
def global_rng_kept() -> Iterator[None]:
    """Leave Python's, numpy's and torch's global RNG states as they were (accelerate's
    ``load_state`` restores the states it saved; gvgap never draws from them)."""
    py, npy, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(th)


class LoopState:
    """What a mid-stage checkpoint adds to the model and optimiser (``state_dict`` protocol)."""

    def __init__(self, gen: torch.Generator) -> None:
        self.gen, self.step, self.best, self.best_step, self.bad = gen, 0, float("inf"), 0, 0
        self.best_params: dict[str, torch.Tensor] | None = None
        self.last: dict[str, float] = {"loss": float("nan"), "grad_norm": float("nan")}
        self.records: dict[str, dict[str, float]] = {}

    def state_dict(self) -> dict[str, Any]:
        return {
            "gen": self.gen.get_state(),
            "step": self.step,
            "best": self.best,
            "best_step": self.best_step,
            "bad": self.bad,
            "best_params": self.best_params,
            "last": self.last,
            "records": self.records,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.gen.set_state(sd["gen"])
        self.step, self.best, self.best_step = sd["step"], sd["best"], sd["best_step"]
        self.bad, self.best_params, self.last = sd["bad"], sd["best_params"], sd["last"]
        self.records = sd["records"]


def _params_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def fit(
    module: nn.Module,
    row_loss: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    n_rows: int,
    steps: int,
    cfg: LLMConfig,
    gen: torch.Generator,
    *,
    lr: float,
    val_loss: Callable[[], float] | None = None,
    ckpt_dir: Path | None = None,
    on_step: Callable[[int], dict[str, float] | None] | None = None,
) -> dict[str, Any]:
    """AdamW on a per-row loss (module docstring).

    Args:
        module: the model (trained in place; the best validation check is restored).
        row_loss: (model, row indices ``(m,)``) → per-row losses ``(m,)``; ``model`` is the
            module as ``accelerate`` prepared it (DistributedDataParallel under several
            processes: the forward must go through it for the gradients to be all-reduced).
        n_rows: rows of the training set; each step draws ``min(batch_size, n_rows)``.
        steps: most optimiser steps.
        gen: the stage's CPU generator (batches).
        lr: learning rate.
        val_loss: validation loss of the current parameters (None: no early stopping).
        ckpt_dir: where mid-stage checkpoints go (None: none).
        on_step: called with the step count after every step (and with 0 before the first);
            what it returns (a dict of numbers, or None) is recorded under that step.

    Returns:
        ``loss`` (last global batch), ``grad_norm`` (last, before clipping), ``steps`` run,
        with ``val_loss``: ``val_loss`` (best) and ``best_step``; with ``on_step``:
        ``records`` {step: what on_step returned}.
    """
    acc = accelerator(cfg, next(module.parameters()).device)
    if cfg.grad_checkpointing:
        _checkpointing(module, True)
    opt = torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=0.0
    )
    model, opt = acc.prepare(module, opt, device_placement=[False, False])
    state = LoopState(gen)
    acc.register_for_checkpointing(state)
    resumed = _resume(acc, ckpt_dir)
    batch = min(cfg.batch_size, n_rows)
    rank, world, a = acc.process_index, acc.num_processes, cfg.grad_accum
    params = [p for p in model.parameters() if p.requires_grad]

    def record(k: int) -> None:
        if on_step is not None and (got := on_step(k)) is not None:
            state.records[str(k)] = got

    if not resumed:
        record(0)
    model.train()
    while n_rows and state.step < steps and state.bad < PATIENCE:
        idx = torch.randperm(n_rows, generator=gen)[:batch]
        total = 0.0
        for part in torch.tensor_split(idx, a):  # exactly A micro-batches per step
            mine = shard(part, rank, world)
            with acc.accumulate(model):
                # Σ ℓ · W · A / B: DDP's mean over W and backward's 1/A leave Σ ℓ / B; a rank
                # without rows still runs one forward at weight 0 (DDP needs every rank)
                rows, weight = (mine, world * a / batch) if mine.numel() else (idx[:1], 0.0)
                loss = row_loss(model, rows).sum() * weight
                acc.backward(loss)
                total += float(loss.detach()) / a
                if acc.sync_gradients:
                    state.last["grad_norm"] = float(acc.clip_grad_norm_(params, CLIP))
                opt.step()
                opt.zero_grad(set_to_none=False)
        state.step += 1
        state.last["loss"] = total  # this rank's share × W: the global-batch mean at W = 1
        if val_loss is not None and (state.step % cfg.eval_every == 0 or state.step == steps):
            _check(state, module, val_loss)
        record(state.step)
        if ckpt_dir is not None and cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
            _save(acc, ckpt_dir)
    info: dict[str, Any] = {**state.last, "steps": float(state.step)}
    if on_step is not None:
        info["records"] = state.records
    if val_loss is not None:
        if not np.isfinite(state.best) or state.best_params is None:
            _check(state, module, val_loss)
        module.load_state_dict(state.best_params)
        info.update(val_loss=float(state.best), best_step=float(state.best_step))
    if cfg.grad_checkpointing:
        _checkpointing(module, False)
    if acc.device.type != "cpu":  # its gc.collect costs ~0.17 s a stage and frees no CPU memory
        acc.free_memory()
    return info


def _checkpointing(module: nn.Module, on: bool) -> None:
    """Activation (gradient) checkpointing on or off: transformers ≥ 5 names it
    ``activation_checkpointing_*``, earlier versions ``gradient_checkpointing_*``."""
    verb = "enable" if on else "disable"
    for name in (f"activation_checkpointing_{verb}", f"gradient_checkpointing_{verb}"):
        if hasattr(module, name):
            getattr(module, name)()
            return


def _check(state: LoopState, module: nn.Module, val_loss: Callable[[], float]) -> None:
    """One validation check: keep the parameters when they improve the best loss."""
    v = float(val_loss())
    if v < state.best:
        state.best, state.best_step, state.bad = v, state.step, 0
        state.best_params = _params_cpu(module)
    else:
        state.bad += 1


def _save(acc: Any, ckpt_dir: Path) -> None:
    """A mid-stage checkpoint into ``ckpt_dir`` (replacing the previous one), sealed last."""
    if not acc.is_main_process:
        return

    def fill(tmp: Path) -> None:
        acc.save_state(str(tmp))
        seal(tmp)

    atomic_dir(ckpt_dir, fill)


def _resume(acc: Any, ckpt_dir: Path | None) -> bool:
    """Load a sealed mid-stage checkpoint; report and drop a broken one. True if resumed."""
    if ckpt_dir is None or not ckpt_dir.exists():
        return False
    if not verified(ckpt_dir):
        print(
            f"gvgap: {ckpt_dir}: mid-stage checkpoint incomplete or corrupt (hash mismatch); "
            "starting the stage over",
            file=sys.stderr,
            flush=True,
        )
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return False
    with global_rng_kept():
        acc.load_state(str(ckpt_dir))
    return True
