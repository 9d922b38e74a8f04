"""Atomic file writes that respect the umask: the one temporary-file helper of the project.

`tempfile.mkstemp` creates files mode 0600 whatever the umask, so a result.json or encoder.pt
renamed from one could not be read by a teammate or by a job running as another user on a shared
filesystem. Here the temporary file is created with mode 0666 and the process umask applies
(0644 under the usual 022), as for any other file; its name is unique per process and call, so
two writers of the same file never share a temporary.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def create_temporary(path: str | os.PathLike, suffix: str = ".tmp") -> tuple[int, Path]:
    """An exclusive new file beside `path` (same folder, so a rename is atomic): (fd, its path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any], fsync: bool = True,
                 suffix: str = ".tmp") -> Path:
    """`write(handle)` into a temporary file in the same folder, (fsync,) rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = create_temporary(path, suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, fsync: bool = False) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()), fsync=fsync)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
