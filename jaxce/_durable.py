"""Durable file-system steps for the checkpoint writer: create, write and sync, lock.

Each write is followed by ``fsync`` of the file and of the directory that names it, so
that an entry a later rename depends on is on disk before that rename.
"""

from __future__ import annotations

import contextlib
import os
import pathlib


def fsync_dir(path: pathlib.Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # a file system without directory fsync
        pass
    finally:
        os.close(fd)


def write_file(path: pathlib.Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: pathlib.Path) -> None:
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    for p in reversed(missing):
        os.mkdir(p)
        fsync_dir(p.parent)


@contextlib.contextmanager
def locked(path: pathlib.Path):
    try:
        import fcntl
    except ImportError:  # no flock: concurrent saves to one directory are not detected
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(f"save: another save to {str(path)!r} is in progress") from None
        yield
    finally:
        os.close(fd)  # releases the lock
