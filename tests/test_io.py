"""Atomic writes: file modes follow the umask, leftovers of killed writes, racing folders."""
import os
import stat

import pytest

from kdlib.errors import KdlibError
from kdlib.io import (atomic_dir, atomic_path, atomic_write_json, atomic_write_text, current_umask,
                      remove_stale_tmp)


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_files_and_folders_respect_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    text = atomic_write_text(tmp_path / "table.md", "| a |\n")
    data = atomic_write_json(tmp_path / "sub" / "m.json", {"a": 1})
    with atomic_path(tmp_path / "fig.png") as tmp:
        tmp.write_bytes(b"png")
    with atomic_dir(tmp_path / "cache") as folder:
        (folder / "x.npy").write_bytes(b"x")
    for path in (text, data, tmp_path / "fig.png"):
        assert _mode(path) == 0o666 & ~mask, path
    assert _mode(tmp_path / "cache") == 0o777 & ~mask


def test_remove_stale_tmp(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / ".metrics.json.x1.tmp", tmp_path / "checkpoints" / ".last.pt.y2.tmp"]
    for path in stale:
        path.write_text("half")
    (tmp_path / ".cache.z3.tmp").mkdir()
    (tmp_path / ".cache.z3.tmp" / "images.npy").write_text("half")
    keep = [tmp_path / "metrics.json", tmp_path / "notes.tmp", tmp_path / "checkpoints" / "best.pt"]
    for path in keep:
        path.write_text("done")
    removed = remove_stale_tmp(tmp_path)
    assert len(removed) == 3 and not any(p.exists() for p in stale + [tmp_path / ".cache.z3.tmp"])
    assert all(p.exists() for p in keep)


def test_folder_made_meanwhile_by_another_process_is_a_clear_error(tmp_path):
    dest = tmp_path / "out"
    with pytest.raises(KdlibError, match="another process created this folder"):
        with atomic_dir(dest) as folder:
            (folder / "mine").write_text("a")
            dest.mkdir()  # the other process renamed its finished folder into place first
            (dest / "theirs").write_text("b")
    assert sorted(p.name for p in dest.iterdir()) == ["theirs"]  # theirs untouched
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # ours cleaned up
