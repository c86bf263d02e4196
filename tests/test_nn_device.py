"""Device and dtype are chosen in one place (gvgap.nn.device)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from gvgap.errors import UserError  # noqa: E402
from gvgap.nn.device import autocast, resolve  # noqa: E402


def test_cpu_defaults_to_float64():
    p = resolve("cpu")
    assert p.device.type == "cpu" and p.dtype == torch.float64 and p.autocast_dtype is None


def test_bfloat16_is_autocast_over_float32():
    p = resolve("cpu", "bfloat16")
    assert p.dtype == torch.float32 and p.autocast_dtype == torch.bfloat16
    with autocast(p):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("device", "dtype"), [("tpu", "auto"), ("cpu", "float16"), ("cpu:1", "auto")]
)
def test_bad_names_refused(device, dtype):
    with pytest.raises(UserError):
        resolve(device, dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_cuda_without_device_refused():
    with pytest.raises(UserError, match="CUDA"):
        resolve("cuda")
