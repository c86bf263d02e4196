"""Provenance shared by every artefact gvgap writes (sweep manifests, figures, reproduce)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_sha() -> str | None:
    """``git rev-parse HEAD`` of the gvgap source tree; None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
