"""Atomic file writes that respect the umask: the one temporary-file helper of the project.

`tempfile.mkstemp` creates files mode 0600 whatever the umask, so a result.json or encoder.pt
renamed from one could not be read by a teammate or by a job running as another user on a shared
filesystem. Here the temporary file is created with mode 0666 and the process umask applies
(0644 under the usual 022), as for any other file; its name is unique per process and call, so
two writers of the same file never share a temporary.

A full disk is reported as a `DiskFullError` naming the file, its folder and the free space there
(numpy's `N requested and M written` and a bare ENOSPC name neither); the partial temporary is removed,
so nothing half-written is left behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


class DiskFullError(OSError):
    """No space left where a file was being written; the message names the file and the free space.
    Built as DiskFullError(errno.ENOSPC, message, path)."""

    def __str__(self) -> str:
        return str(self.strerror)


class NotWritableError(OSError):
    """A folder the run must write to cannot be written; the message names it and why.
    Built as NotWritableError(errno, message, folder)."""

    def __str__(self) -> str:
        return str(self.strerror)


def size_text(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n_bytes) < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024
    raise AssertionError("unreachable")


def disk_full(error: BaseException, path: str | os.PathLike) -> DiskFullError | None:
    """A DiskFullError naming `path` when `error` means the disk is full (ENOSPC, EDQUOT, or a short write:
    numpy's `N requested and M written`), else None. Call it before removing the partial file, so the free
    space it names is what the write met."""
    if not isinstance(error, OSError) or isinstance(error, DiskFullError):
        return None
    short_write = error.errno is None and "requested and" in str(error) and "written" in str(error)
    if error.errno not in (errno.ENOSPC, errno.EDQUOT) and not short_write:
        return None
    folder = Path(path).parent
    try:
        free = f"{size_text(shutil.disk_usage(folder).free)} free there when the write failed"
    except OSError:
        free = "free space unknown"
    return DiskFullError(errno.ENOSPC, f"no space left on the device holding {folder} while writing "
                         f"{Path(path).name} ({free}); free some space (or point --results / RINGBENCH_CACHE "
                         "elsewhere) and rerun: finished results are kept", str(path))


def describe_os_error(error: OSError) -> str:
    """One line for the user: the path, what the system said and, for the usual faults, what it means."""
    if isinstance(error, (DiskFullError, NotWritableError)) or not error.filename:
        return str(error)
    where = f"{error.filename}" + (f" -> {error.filename2}" if error.filename2 else "")
    meaning = {errno.EROFS: "the folder is on a read-only filesystem; give a writable one",
               errno.EACCES: "no permission to write there; give a folder you can write to",
               errno.EPERM: "no permission to write there; give a folder you can write to"}.get(error.errno)
    return f"{where}: {error.strerror or error}" + (f" ({meaning})" if meaning else "")


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """Raise NotWritableError naming `what` and `folder` unless files can be created there: the folder, or the
    nearest existing folder above it (where it would be created), is writable and not on a read-only
    filesystem. Creates nothing."""
    folder = Path(os.path.abspath(Path(folder).expanduser()))
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    reason = None
    if not existing.is_dir():
        reason = f"{existing} is not a folder"
    elif os.statvfs(existing).f_flag & os.ST_RDONLY:
        reason = f"{existing} is on a read-only filesystem"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"no permission to write in {existing}"
    if reason is not None:
        raise NotWritableError(errno.EROFS if "read-only" in reason else errno.EACCES,
                               f"{what} {folder} is not writable: {reason}; give a writable one", str(folder))


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


def create_temporary_folder(path: str | os.PathLike) -> Path:
    """An exclusive new folder beside `path` (to build in, then rename into place), mode 0777 less the umask:
    `tempfile.mkdtemp` makes it 0700, and the rename would keep that for the published folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        staging = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        try:
            staging.mkdir(0o777)
            return staging
        except FileExistsError:
            continue


def build_folder_once(root: str | os.PathLike, marker_name: str, params: dict,
                      build: Callable[[Path], Any]) -> Path:
    """`root`, built by `build(folder)` unless its marker file already records `params` (as JSON).

    The build goes into a fresh folder beside `root` (following the umask) that is renamed into place, so a
    reader never sees half of it; when another process published the same build meanwhile, that one stays."""
    root = Path(root)
    marker, stamp = root / marker_name, json.dumps(params)

    def current() -> bool:
        try:
            return marker.is_file() and json.loads(marker.read_text()) == params
        except json.JSONDecodeError:
            return False

    if current():
        return root
    staging = create_temporary_folder(root)
    try:
        build(staging)
        (staging / marker_name).write_text(stamp)
        if current():  # built meanwhile by another process
            shutil.rmtree(staging)
            return root
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


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
    except BaseException as error:
        full = disk_full(error, path)
        tmp.unlink(missing_ok=True)
        if full is not None:
            raise full from None
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
