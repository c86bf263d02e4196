"""The one place gvgap chooses a torch device and dtype (docs/design.md §1: "device chosen in
one place").

``resolve(device, dtype)`` turns user-facing names into torch objects:

- device: ``"cpu"`` (default), ``"cuda"`` / ``"cuda:N"``, or ``"auto"`` (CUDA when available,
  else CPU). Asking for CUDA where there is none is a :class:`gvgap.errors.UserError`.
- dtype: ``"float64"`` (parity with the numpy core, the default on CPU), ``"float32"``,
  ``"bfloat16"`` (speed; compute-heavy paths use autocast, see :func:`autocast`), or
  ``"auto"`` (float64 on CPU, float32 on CUDA).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from gvgap.errors import UserError

DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float64", "float32", "bfloat16", "auto")


def import_torch():
    """``torch``, or a UserError naming the extra to install."""
    try:
        import torch
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise UserError("this needs torch: pip install 'gvgap[torch]'") from None
    return torch


@dataclass(frozen=True)
class Placement:
    """A resolved (device, dtype) pair; ``autocast_dtype`` is set for bf16 mixed precision."""

    device: object
    dtype: object
    autocast_dtype: object | None = None

    @property
    def is_cuda(self) -> bool:
        """True on a CUDA device."""
        return getattr(self.device, "type", "cpu") == "cuda"


def resolve(device: str = "cpu", dtype: str = "auto") -> Placement:
    """Resolve user-facing ``device`` / ``dtype`` names (module docstring) to a Placement.

    Raises:
        UserError: unknown name, or CUDA asked for where none is available.
    """
    torch = import_torch()
    base = device.split(":", 1)[0]
    if base not in DEVICES or (base != "cuda" and ":" in device):
        raise UserError(f"device must be one of cpu, cuda, cuda:N, auto; got {device!r}")
    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if base == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif base == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but torch sees no CUDA device")
    dev = torch.device(device)
    if dtype == "auto":
        dtype = "float32" if dev.type == "cuda" else "float64"
    if dtype == "bfloat16":
        # parameters stay float32; matmuls run in bf16 under autocast
        return Placement(dev, torch.float32, torch.bfloat16)
    return Placement(dev, getattr(torch, dtype))


@contextlib.contextmanager
def autocast(placement: Placement) -> Iterator[None]:
    """bf16 autocast on the placement's device when it asks for mixed precision, else no-op."""
    if placement.autocast_dtype is None:
        yield
        return
    torch = import_torch()
    with torch.autocast(device_type=placement.device.type, dtype=placement.autocast_dtype):
        yield


#: Intra-op threads of a CPU run. A training run is chaotic in its floating-point order: one
#: ``llm`` run (readout, tiny preset) gives a DPO win rate of 0.492 on one thread and 0.533 on
#: two, as far apart as two seeds. So CPU work runs on one thread, giving numbers that do not
#: depend on the core count or the executor (the CPU type and torch build may still matter);
#: throughput comes from running runs side by side (workers).
CPU_THREADS = 1


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch intra-op threads (the count restored after)."""
    torch = import_torch()
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def fixed_threads(placement: Placement) -> Iterator[None]:
    """Run the block on :data:`CPU_THREADS` intra-op threads when ``placement`` is the CPU;
    a no-op on CUDA."""
    if placement.is_cuda:
        yield
        return
    with torch_threads(CPU_THREADS):
        yield
