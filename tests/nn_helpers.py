"""Shared helpers of the torch tests: the device under test (``GVGAP_TEST_DEVICE``, default
cpu; ``benchmarks/gpu_check.sh`` sets cuda) at float64."""

from __future__ import annotations

import os


def placement():
    """float64 on the device named by ``GVGAP_TEST_DEVICE`` (cpu by default)."""
    from gvgap.nn.device import resolve

    return resolve(os.environ.get("GVGAP_TEST_DEVICE", "cpu"), "float64")
