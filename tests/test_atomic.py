"""The one atomic-write helper (gvgap.atomic): the target is the old content or the new, and a
failed write leaves no temporary behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from gvgap.atomic import atomic_dir, atomic_write


@pytest.mark.parametrize("data", [b"new bytes", "new text ü", lambda p: p.write_bytes(b"new")])
def test_atomic_write_replaces_and_leaves_nothing_else(tmp_path: Path, data) -> None:
    target = tmp_path / "f.json"
    target.write_text("old")
    atomic_write(target, data)
    want = data if isinstance(data, bytes) else b"new"
    if isinstance(data, str):
        want = data.encode("utf-8")
    assert target.read_bytes() == want
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_a_failing_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "results.parquet"
    target.write_bytes(b"old")

    def full_disk(tmp: Path) -> None:
        tmp.write_bytes(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(target, full_disk)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.parquet"]


def test_atomic_dir_replaces_a_directory_only_once_the_new_one_is_complete(
    tmp_path: Path,
) -> None:
    stage = tmp_path / "sft"
    stage.mkdir()
    (stage / "model.pt").write_bytes(b"old")

    def broken(tmp: Path) -> None:
        (tmp / "model.pt").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_dir(stage, broken)
    assert (stage / "model.pt").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]
    (tmp_path / ".sft.tmp").mkdir()  # a killed run's leftover is cleared first
    atomic_dir(stage, lambda tmp: (tmp / "model.pt").write_bytes(b"new"))
    assert (stage / "model.pt").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]
