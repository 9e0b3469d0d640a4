"""One writer per folder: an exclusive, process-level lock held while a folder is written.

`folder_lock(path)` takes an `fcntl.flock` lock on `<path>/.kdlib.lock` and writes the
holder's PID into it. The kernel drops a flock when its process dies (even by SIGKILL), so a
lock left by a dead process is simply taken over; a lock held by a live process is an error
that names its PID, rather than a wait: two `kdlib run` on one folder are a mistake to report,
not a queue. The lock is per open file, so two threads of one process exclude each other too.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Iterator

from .errors import KdlibError

LOCK_NAME = ".kdlib.lock"


def _holder(lock_file: Path) -> str:
    try:
        text = lock_file.read_text().strip()
    except OSError:
        return "unknown"
    return text or "unknown"


@contextlib.contextmanager
def folder_lock(path: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on folder `path` (created if missing) for the `with` block.

    Raises KdlibError naming the holder's PID and the folder when another live process (or
    another thread of this one) holds it.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    lock_file = folder / LOCK_NAME
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise KdlibError(f"in use by another kdlib process (PID {_holder(lock_file)})", folder,
                             "wait for it to finish, or stop that process") from None
        # the previous holder may have removed the file between our open and our lock:
        # then we hold a lock on a deleted inode, which excludes nobody; try again
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield folder
    finally:
        # unlink before unlocking, so nobody can lock a file that is about to disappear
        with contextlib.suppress(FileNotFoundError):
            lock_file.unlink()
        os.close(fd)


def is_locked(path: str | Path) -> bool:
    """True when another live process (or another open descriptor) holds `folder_lock(path)`
    now; creates nothing. (flock: reliable on one machine; on a cluster file system, only
    where it supports flock across nodes.)"""
    lock_file = Path(path) / LOCK_NAME
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
