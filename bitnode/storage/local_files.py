"""Writing restored files into a user's folders without ever following a link found there.

A download writes into folders the user (or, for a share, another user's
catalog) names, where anything may already sit: a symbolic link at
``<dest>.part`` or at a sub-folder's name would turn a plain ``open(path,
"wb")`` into a write through the link, anywhere the node may write. So:

- the folder the user named is opened like any path they type (links
  followed); every component *below* it is opened with ``O_NOFOLLOW`` from
  its parent's descriptor (``openat``), created when missing, and refused
  (:class:`LinkRefused`) when it is a link or not a folder;
- the temporary file is created next to the destination, exclusively and
  without following links (``O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600),
  under a name nobody can predict: ``<name>.<8 hex>.part``;
- it is fsynced and renamed over the destination inside the same folder
  descriptor; a link sitting at the destination is replaced, never written
  through.

Every function here does blocking file work: call it in a worker thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
from collections.abc import Sequence

from bitnode.errors import BadRequest, BitnodeError, Conflict

PART_SUFFIX = ".part"
#: Mode bits a restore gives back: rwx for all and sticky; never setuid or setgid (a share's owner chose them).
RESTORED_MODE_BITS = 0o1777
#: A part name longer than this many bytes of the destination's name uses a short stand-in.
_MAX_PART_STEM = 200
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class LinkRefused(Conflict):
    """A folder or file where a download would write is a symbolic link (or not a folder): refused."""


def part_name_for(name: str) -> str:
    """A fresh, unpredictable temporary name for a download of ``name``: ``<name>.<8 hex>.part``."""
    stem = name if len(os.fsencode(name)) <= _MAX_PART_STEM else "download"
    return f"{stem}.{secrets.token_hex(4)}{PART_SUFFIX}"


def is_part_name(name: str) -> bool:
    """Whether ``name`` has the shape :func:`part_name_for` gives."""
    stem, dot, tail = name[: -len(PART_SUFFIX)].rpartition(".")
    return name.endswith(PART_SUFFIX) and bool(stem) and bool(dot) and len(tail) == 8 and all(
        c in "0123456789abcdef" for c in tail)


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise BadRequest(f"invalid file name {name!r}")
    return name


def relative_parts(root: str, path: str) -> list[str]:
    """The components of ``path`` below ``root``; BadRequest when ``path`` is not under it."""
    rel = os.path.relpath(os.path.normpath(path), os.path.normpath(root))
    if rel == ".":
        return []
    parts = rel.split(os.sep)
    if parts[0] == ".." or os.path.isabs(rel):
        raise BadRequest(f"{path} is not inside {root}")
    return [_check_name(p) for p in parts]


def open_folder(root: str, parts: Sequence[str] = (), create: bool = False) -> int:
    """A descriptor of ``root/parts...``: every part a real folder (created if ``create``), never a link.

    ``root`` itself is followed (the user named it). The caller closes the
    descriptor. Raises :class:`LinkRefused` for a link or a non-folder below
    ``root``, and the OSError otherwise.
    """
    fd = os.open(root, _DIR_FLAGS)
    try:
        for name in parts:
            _check_name(name)
            if create:
                try:
                    os.mkdir(name, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(name, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise LinkRefused(f"{name!r} in {root} is a symbolic link or not a folder: "
                                      "a download never writes through it") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def current_umask() -> int:
    """The process umask, read without changing it (Linux ``/proc``; 0o022 when unknown)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


class PartFile:
    """A download being written: an exclusive, no-follow temporary file beside its destination.

    Made by :func:`create_part`; :meth:`finish` puts it in place, :meth:`abort`
    removes it. ``part_path`` and ``dest_path`` are for messages and for the
    record of interrupted downloads.
    """

    def __init__(self, dir_fd: int, folder: str, dest_name: str, part_name: str, fh):
        self.dir_fd = dir_fd
        self.folder = folder
        self.dest_name = dest_name
        self.part_name = part_name
        self.fh = fh

    @property
    def part_path(self) -> str:
        """Where the temporary file is (for messages)."""
        return os.path.join(self.folder, self.part_name)

    @property
    def dest_path(self) -> str:
        """Where the file goes."""
        return os.path.join(self.folder, self.dest_name)

    def write(self, data: bytes) -> None:
        """Append bytes."""
        self.fh.write(data)

    def finish(self, mode: int | None = None, mtime_ns: int | None = None) -> None:
        """fsync, set the mode (default: a new file's under the umask) and mtime, rename into place."""
        self.close_written(mode, mtime_ns, sync=True)
        self.rename_into_place()
        try:
            os.fsync(self.dir_fd)
        except OSError:
            pass
        self._close_dir()

    def close_written(self, mode: int | None = None, mtime_ns: int | None = None, sync: bool = True) -> None:
        """Everything is written: set the mode and mtime, fsync (unless the caller syncs many at once), close."""
        fh = self.fh
        fh.flush()
        os.fchmod(fh.fileno(), (0o666 & ~current_umask()) if mode is None else mode & RESTORED_MODE_BITS)
        if mtime_ns is not None:
            os.utime(fh.fileno(), ns=(mtime_ns, mtime_ns))
        if sync:
            os.fsync(fh.fileno())
        fh.close()

    def rename_into_place(self) -> None:
        """Rename the closed (and synced) temporary file over the destination, in its folder."""
        os.replace(self.part_name, self.dest_name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)

    def sync(self) -> None:
        """Everything written so far is on disk (a checkpoint a restart may resume from)."""
        self.fh.flush()
        os.fdatasync(self.fh.fileno())

    def keep(self) -> None:
        """Leave the temporary file where it is, synced and closed: a later run resumes it."""
        if not self.fh.closed:
            self.sync()
            self.fh.close()
        self._close_dir()

    def abort(self) -> None:
        """Close and remove the temporary file (nothing is left at either name)."""
        if not self.fh.closed:
            self.fh.close()
        try:
            os.unlink(self.part_name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        self._close_dir()

    def _close_dir(self) -> None:
        if self.dir_fd >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1


def _part_folder(dest_path: str, root: str | None, create: bool) -> tuple[str, str, int]:
    """(folder, destination name, folder descriptor) of a download's destination."""
    folder, name = os.path.split(os.path.abspath(dest_path))
    _check_name(name)
    if root is None:
        if create:
            os.makedirs(folder, exist_ok=True)
        return folder, name, open_folder(folder)
    return folder, name, open_folder(root, relative_parts(root, folder), create=create)


def reopen_part(dest_path: str, root: str | None, part_name: str, size: int) -> PartFile:
    """Reopen the temporary file an interrupted download left, cut to the ``size`` bytes known to be on disk.

    Raises OSError (or :class:`LinkRefused`) when it is not there, not a
    regular file of ours, or shorter than ``size``: the download then starts over.
    """
    if not is_part_name(part_name):
        raise BadRequest(f"{part_name!r} is not the name of a download's temporary file")
    folder, name, dir_fd = _part_folder(dest_path, root, create=False)
    try:
        fd = os.open(part_name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_size < size:
                raise FileNotFoundError(errno.ENOENT, "no usable temporary file", part_name)
            os.ftruncate(fd, size)
            os.lseek(fd, size, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
    except BaseException:
        os.close(dir_fd)
        raise
    return PartFile(dir_fd, folder, name, part_name, os.fdopen(fd, "wb"))


def remove_part(dest_path: str, root: str | None, part_name: str) -> bool:
    """Remove the temporary file of a download that will not go on (a link there is removed, not followed).

    True if something was removed. Only names of the shape :func:`part_name_for` gives are touched.
    """
    if not is_part_name(part_name):
        raise BadRequest(f"{part_name!r} is not the name of a download's temporary file")
    try:
        _, _, dir_fd = _part_folder(dest_path, root, create=False)
    except (OSError, BitnodeError):
        return False  # its folder is gone (or is now a link): nothing of ours is left to remove
    try:
        os.unlink(part_name, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(dir_fd)


def create_part(dest_path: str, root: str | None = None, part_name: str | None = None) -> PartFile:
    """Create the temporary file of a download of ``dest_path`` (exclusive, no-follow, mode 0600).

    With ``root`` (a folder download) the folders between ``root`` and the
    destination are made as needed and must not be links; without it the
    destination's folder is the one the user named (made if missing).
    """
    folder, name, dir_fd = _part_folder(dest_path, root, create=True)
    part = part_name or part_name_for(name)
    try:
        fd = os.open(_check_name(part), _NEW_FILE_FLAGS, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        os.close(dir_fd)
        raise LinkRefused(f"{os.path.join(folder, part)} already exists: not overwritten") from None
    except BaseException:
        os.close(dir_fd)
        raise
    return PartFile(dir_fd, folder, name, part, os.fdopen(fd, "wb"))


def sync_filesystem(fd: int) -> None:
    """Everything written on the file system of ``fd`` is on disk: one ``syncfs`` (``sync`` where there is none)."""
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) == 0:
            return
    except (OSError, AttributeError):
        pass
    os.sync()


def finish_many(parts: Sequence[PartFile], metas: Sequence[tuple[int | None, int | None]]) -> list[BaseException | None]:
    """:meth:`PartFile.finish` for many files with one file-system sync for all of their data.

    Each part is closed with its ``(mode, mtime_ns)`` unsynced; one
    :func:`sync_filesystem` puts all of it on disk; then each is renamed into
    place and each folder that got one is fsynced once. Crash-safe as
    ``finish``: no file reaches its name before its data is on disk. Returns,
    per part, None or the error that kept it out (that part is removed).
    """
    outcome: list[BaseException | None] = [None] * len(parts)
    for i, (part, (mode, mtime_ns)) in enumerate(zip(parts, metas, strict=True)):
        try:
            part.close_written(mode, mtime_ns, sync=False)
        except OSError as err:
            outcome[i] = err
            part.abort()
    ready = [part for part, err in zip(parts, outcome, strict=True) if err is None]
    if ready:
        sync_filesystem(ready[0].dir_fd)
    folders_synced: set[tuple[int, int]] = set()
    for i, part in enumerate(parts):
        if outcome[i] is not None:
            continue
        try:
            part.rename_into_place()
            st = os.fstat(part.dir_fd)
            if (st.st_dev, st.st_ino) not in folders_synced:
                folders_synced.add((st.st_dev, st.st_ino))
                os.fsync(part.dir_fd)
        except OSError as err:
            outcome[i] = err
            part.abort()
        finally:
            part._close_dir()
    return outcome


def make_folders(root: str, parts: Sequence[str]) -> None:
    """Make ``root/parts...`` (each part a real folder, never a link)."""
    os.close(open_folder(root, parts, create=True))


def set_folder_meta(root: str, parts: Sequence[str], mode: int | None, mtime_ns: int | None) -> None:
    """Give a restored folder its mode and mtime (after everything inside it was written)."""
    fd = open_folder(root, parts)
    try:
        if mode is not None:
            os.fchmod(fd, mode & RESTORED_MODE_BITS)
        if mtime_ns is not None:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


def make_link(root: str, parts: Sequence[str], target: str, mtime_ns: int | None = None) -> None:
    """Restore a symbolic link at ``root/parts...`` (its text, as stored; nothing is written through it).

    A file or link already there is replaced; a folder there is refused
    (:class:`LinkRefused`).
    """
    if not parts:
        raise BadRequest("a link needs a name")
    name = _check_name(parts[-1])
    fd = open_folder(root, parts[:-1], create=True)
    try:
        temp = part_name_for(name)
        os.symlink(target, temp, dir_fd=fd)
        try:
            if mtime_ns is not None:
                os.utime(temp, ns=(mtime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)
            try:
                if stat.S_ISDIR(os.lstat(name, dir_fd=fd).st_mode):
                    raise LinkRefused(f"{name!r} in {root} is a folder: the link is not put in its place")
            except FileNotFoundError:
                pass
            os.replace(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            try:
                os.unlink(temp, dir_fd=fd)
            except FileNotFoundError:
                pass
            raise
    finally:
        os.close(fd)
