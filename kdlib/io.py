"""Atomic, never-overwrite file writing and checksums.

Everything kdlib writes goes through these helpers: data is written to a temporary name
in the destination folder and renamed into place only when complete, so an interrupted
run never leaves a half-written file behind.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import KdlibError


TMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process's umask (read from /proc where possible: setting it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _tmp_path(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=TMP_SUFFIX, dir=dest.parent)
    # mkstemp creates 0600 whatever the umask; results are meant to be shared like any file
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    return Path(name)


def remove_stale_tmp(folder: str | Path) -> list[Path]:
    """Delete the temporary files/folders (`.<name>.<random>.tmp`) that a killed write left
    in `folder` (recursively). Call it only while holding the folder's lock."""
    removed = []
    for tmp in sorted(Path(folder).rglob(f".*{TMP_SUFFIX}"), reverse=True):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(dest: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; rename it onto `dest` if the block succeeds.

    With `overwrite=False` an existing `dest` is an error (finished results are never replaced).
    """
    dest = Path(dest)
    if not overwrite and dest.exists():
        raise KdlibError("refusing to overwrite an existing result", dest,
                         "delete it or choose another output folder")
    tmp = _tmp_path(dest)
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, dest)
        else:
            try:
                move_no_replace(tmp, dest)
            except FileExistsError:
                raise KdlibError("refusing to overwrite an existing result (another process "
                                 "created it meanwhile)", dest,
                                 "delete it or choose another output folder") from None
    finally:
        if tmp.exists():
            tmp.unlink()


RENAME_NOREPLACE = 1  # linux/fs.h


def _renameat2_noreplace(src: Path, dest: Path) -> bool:
    """rename(2) that fails with EEXIST instead of replacing (Linux renameat2); False when
    the C library or the file system does not offer it."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dest), RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), str(dest))
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(dest))


def move_no_replace(src: str | Path, dest: str | Path) -> None:
    """Move the file `src` to `dest`, raising FileExistsError rather than replacing a file
    that exists at `dest`, even one created a moment before: a hard link (then unlink), else
    renameat2(RENAME_NOREPLACE); only a file system offering neither gets check-then-rename."""
    src, dest = Path(src), Path(dest)
    try:
        os.link(src, dest)
    except FileExistsError:
        raise
    except OSError:
        if _renameat2_noreplace(src, dest):
            return
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "File exists", str(dest)) from None
        os.replace(src, dest)
        return
    src.unlink()


def atomic_write_bytes(dest: str | Path, data: bytes, overwrite: bool = True) -> Path:
    with atomic_path(dest, overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(dest)


def atomic_write_text(dest: str | Path, text: str, overwrite: bool = True) -> Path:
    return atomic_write_bytes(dest, text.encode("utf-8"), overwrite)


def json_text(obj: Any) -> str:
    """JSON as kdlib writes every record: indented, keys sorted, a final newline."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"


def atomic_write_json(dest: str | Path, obj: Any, overwrite: bool = True) -> Path:
    return atomic_write_text(dest, json_text(obj), overwrite)


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise KdlibError("file not found", path) from None
    except json.JSONDecodeError as exc:
        raise KdlibError(f"not valid JSON ({exc.msg} at line {exc.lineno})", path,
                         "delete the file so it is regenerated") from None


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to `dest` when complete.

    `dest` must not exist yet; a leftover temporary folder from a killed run is removed.
    """
    dest = Path(dest)
    if dest.exists():
        raise KdlibError("refusing to overwrite an existing folder", dest,
                         "delete it or choose another output folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=TMP_SUFFIX, dir=dest.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp creates 0700 whatever the umask
    try:
        yield tmp
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            if not dest.exists():
                raise
            # another process finished the same folder first (rename onto a non-empty folder)
            raise KdlibError("another process created this folder at the same time", dest,
                             "use the folder it made, or delete it and run again") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a JSON-serialisable configuration (key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]
