"""Group commit: the blocks of one customer that arrive while a write is under way are stored together.

A supplier used to write each block on its own: temp file, fsync, rename,
fsync of the directory (and of its parent for a new segment directory), one
thread hop and one index transaction, with the customer's lock held all the
while. With several segments in flight the next blocks waited for that lock
one by one. Now a customer's blocks queue in a :class:`WriteQueue`; whenever
no batch of that customer runs, the queue is taken whole (up to
``max_blocks`` blocks and ``max_bytes`` bytes) and written by
:func:`write_batch` in one worker-thread call:

1. every block into its temp file (no flush yet: the kernel starts writing
   them all back at once);
2. every temp file fsynced (its data is on disk), then renamed over its target;
3. every directory that got a new entry (the blocks' folders and the parents
   of folders made for them) fsynced once, however many blocks it got.

Only then does the caller record the blocks in the index and acknowledge them:
no block is acknowledged before the fsync of its data and of its directory. A
block that cannot be written (its temp file, its fsync or its rename fails)
fails alone; a directory whose fsync fails fails every block renamed into it.
Nothing is ever acknowledged early to fill a batch, and a lone block is
written at once (a batch is whatever arrived meanwhile, never a timer).

The queue is bounded: a customer whose waiting blocks already hold
``queue_bytes`` (a slow disk, or a customer that sends without waiting for its
acknowledgements) has its next block refused at once ("busy", which the
customer side treats as a supplier that is unavailable for now) instead of
making the supplier's memory grow. A customer that waits for its acks (the
uploader keeps a few segments in flight) never comes near it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable

from twisted.internet import defer

from bitnode.main.fileutil import ensure_dir

Fsync = Callable[[int], None]
_UNSUPPORTED = (errno.EINVAL, errno.ENOTSUP, errno.EBADF)


@dataclass
class PendingWrite:
    """One block waiting for its batch; ``done`` fires when it is stored (or fails alone)."""

    block_path: str
    target: str
    data: bytes
    sha256: str | None = None  # of ``data``, when the caller had it already (else hashed in the batch)
    done: defer.Deferred = field(default_factory=defer.Deferred)


class WriteQueue:
    """The blocks of one customer waiting to be written; :meth:`take` hands out the next batch."""

    def __init__(self) -> None:
        self._pending: list[PendingWrite] = []
        #: Bytes of the blocks waiting (memory a slow disk or a flooding customer makes the supplier hold).
        self.bytes = 0
        #: A batch of this customer is being written (or waits for the customer's lock).
        self.running = False

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, write: PendingWrite) -> None:
        """Queue one block."""
        self._pending.append(write)
        self.bytes += len(write.data)

    def take(self, max_blocks: int, max_bytes: int) -> list[PendingWrite]:
        """The oldest blocks, in order: at most ``max_blocks`` and ``max_bytes`` (at least one), never one
        target twice (a block written again waits for the next batch, so each batch sees the disk as it is)."""
        batch: list[PendingWrite] = []
        targets: set[str] = set()
        size = 0
        for write in self._pending:
            if batch and (len(batch) >= max_blocks or size + len(write.data) > max_bytes or write.target in targets):
                break
            batch.append(write)
            targets.add(write.target)
            size += len(write.data)
        del self._pending[:len(batch)]
        self.bytes -= size
        return batch


def write_batch(writes: list[tuple[str, bytes]], new_dirs: list[str], mode: int = 0o600,
                fsync: Fsync = os.fsync) -> list[BaseException | None]:
    """Write each ``(target, data)`` durably and atomically, flushing each directory once; in a worker thread.

    ``new_dirs`` (outermost first) are created before, and their parents
    flushed with the rest. Returns one entry per write: None when it is on
    disk with its directory entry, else the error that stopped it.
    ``fsync`` is injected so a test can see that nothing is acknowledged
    before it ran.
    """
    for folder in new_dirs:
        ensure_dir(folder)
    results: list[BaseException | None] = [None] * len(writes)
    temps: list[tuple[int, int, str] | None] = [None] * len(writes)
    for index, (target, data) in enumerate(writes):
        try:
            temps[index] = _write_temp(target, data, mode)
        except OSError as err:
            results[index] = err
    renamed_into: dict[str, list[int]] = {}
    for index, temp in enumerate(temps):
        if temp is None:
            continue
        fd, _, tmp_path = temp
        target = writes[index][0]
        try:
            fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp_path, target)
            renamed_into.setdefault(os.path.dirname(target), []).append(index)
        except OSError as err:
            results[index] = err
            if fd >= 0:
                os.close(fd)
            _unlink_quietly(tmp_path)
    folders = dict.fromkeys([*renamed_into, *(os.path.dirname(folder) for folder in new_dirs)])
    for folder in folders:
        try:
            _fsync_dir(folder, fsync)
        except OSError as err:
            for index in renamed_into.get(folder, ()):
                results[index] = err
            for folder_made in new_dirs:
                if os.path.dirname(folder_made) == folder:
                    for index, (target, _) in enumerate(writes):
                        if target.startswith(folder_made + os.sep) and results[index] is None:
                            results[index] = err
    return results


def _write_temp(target: str, data: bytes, mode: int) -> tuple[int, int, str]:
    """A temp file beside ``target`` holding ``data`` (mode set before any byte): (fd, size, path)."""
    fd, tmp_path = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp",
                                    dir=os.path.dirname(target))
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp_path)
        raise
    return fd, len(data), tmp_path


def _fsync_dir(folder: str, fsync: Fsync) -> None:
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fsync(fd)
    except OSError as err:
        if err.errno not in _UNSUPPORTED:  # a file system that cannot flush a directory: as fileutil.fsync_dir
            raise
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
