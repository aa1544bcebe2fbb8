"""Small file helpers shared by every module that persists state.

:func:`atomic_write` is the one way bitnode replaces a file: the data goes to a
temporary file in the same directory, which is flushed, fsynced, given its final
mode and then renamed over the target with :func:`os.replace`; finally the
directory itself is fsynced so that the rename survives a crash. A reader sees
either the old content or the new one, never a torn file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from bitnode.errors import BadRequest

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


class FileTooLarge(BadRequest):
    """A file is bigger than the caller is willing to read."""


def fsync_dir(path: str) -> None:
    """Flush a directory entry table to disk (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_temp_file(directory: str, prefix: str, data: bytes, mode: int) -> str:
    """Write ``data`` to a new temporary file in ``directory`` and fsync it; return its path.

    The file is switched to ``mode`` with ``fchmod`` before any data is
    written (it is created 0600, and the umask does not apply). The caller
    moves it into place (rename or link) and removes what is left; on an
    error here nothing is left behind.
    """
    fd, tmp_path = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        remove_if_exists(tmp_path)
        raise
    os.close(fd)
    return tmp_path


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    The temporary file is created with mode 0600 and switched to ``mode`` with
    ``fchmod`` before any data is written, so secret content is never readable
    by others even for a moment when ``mode`` is 0600. The umask does not
    apply: the final file has exactly ``mode``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError("atomic_write needs bytes")
    directory = os.path.dirname(os.path.abspath(path))
    tmp_path = write_temp_file(directory, "." + os.path.basename(path) + ".", data, mode)
    try:
        os.replace(tmp_path, path)
    except BaseException:
        remove_if_exists(tmp_path)
        raise
    fsync_dir(directory)


def ensure_dir(path: str, mode: int = PRIVATE_DIR_MODE) -> None:
    """Create ``path`` (and parents) if missing; new directories get ``mode``."""
    os.makedirs(path, mode=mode, exist_ok=True)


def read_limited(path: str, limit: int) -> bytes:
    """Read a whole file, refusing (:class:`FileTooLarge`) one over ``limit`` bytes."""
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(f"{os.path.basename(path)} is larger than {limit} bytes")
    return data


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """The SHA-256 (hex) of a file, read ``chunk`` bytes at a time (memory stays flat). Blocking."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(chunk), b""):
            digest.update(piece)
    return digest.hexdigest()


def remove_if_exists(path: str) -> bool:
    """Delete a file; return False when it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
