"""A supplier's disk store: other users' encrypted blocks under ``basedir/customers/``.

Layout: ``<root>/<customer dir>/<block path>`` where the customer directory is
the customer's global id when it is made of safe characters (``[a-z0-9_.@-]``,
which every canonical global id is) and ``x-<sha256 of the id>`` otherwise.
Block paths come from packets, so they are checked twice: a write must be a
path of the customer side's scheme
(:func:`bitnode.storage.ports.validate_store_path`: blocks, catalog
manifests, share indexes and readers lists, nothing else), a read or delete a
safe relative path (:func:`~bitnode.storage.ports.validate_path`); then the
final path is resolved and must still be inside the customer's directory.
Refusals are counted in :attr:`DiskStore.refused`.

Writes are atomic (temp file, fsync, rename, fsync of the directory), so a
crash leaves the old block or the new one, never half of one; a directory
created for a block is flushed into its parent too. A store is acknowledged
only after that. The blocks of one customer that arrive while one of its
writes runs are written together, each directory flushed once for all of them
(group commit, :mod:`bitnode.supplier.group_commit`). Every file operation runs through the injected
``run_in_thread`` so the reactor never waits on the disk.

What a customer may take (:class:`StoreLimits`, read at each store so a
settings change applies at once):

- its quota (:meth:`DiskStore.set_quota`), charged by what the disk really
  spends: each file at least ``min_file_charge`` bytes and each directory
  ``min_dir_charge`` — thousands of empty blocks or directories are not free;
- at most ``max_files`` files;
- and nobody's store goes through while the disk the store lives on has less
  than ``reserve_bytes`` free after it.

A refused store writes nothing and fails with
:class:`~bitnode.errors.InsufficientStorage` (its text says "quota" or "no
space", which the customer side understands).

Usage is counted when a customer's space is first used after a start (one walk
of its directory, which also removes the temp files of writes a crash
interrupted, and checks the block index), then kept up to date in memory: one
write at a time per customer keeps it exact. Temp files (dot names) never
count and are never listed. :meth:`DiskStore.load_all` runs that first walk
for every customer (the supplier does it when it starts).

Listing is a query of the :class:`~bitnode.supplier.block_index.BlockIndex`
(sizes and SHA-256 recorded when each block was written), not a hash of every
file. Files the first walk finds without a right row (an index lost, or data
from before the index) are hashed once, by the first listing that includes
them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sqlite3
import stat
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import defer
from zope.interface import implementer

from bitnode.errors import BadRequest, InsufficientStorage, TooManyRequests
from bitnode.main.fileutil import ensure_dir, remove_if_exists, sha256_file
from bitnode.storage.ports import (
    BlockNotFound,
    IStorageServer,
    validate_customer_id,
    validate_path,
    validate_store_path,
)
from bitnode.supplier.block_index import INDEX_NAME, UNHASHED, BlockIndex, FileIdentity, IndexedBlock
from bitnode.supplier.group_commit import PendingWrite, WriteQueue, write_batch

_SAFE_DIR_RE = re.compile(r"[a-z0-9_.@-]{1,200}\Z")
RunInThread = Callable[..., defer.Deferred]
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class StoreLimits:
    """What one customer may take of a supplier's disk (the settings of service_supplier)."""

    #: Bytes a file counts for at least (a 0-byte file still takes an inode and a block).
    min_file_charge: int = 4096
    #: Bytes each directory of a customer counts for.
    min_dir_charge: int = 4096
    #: Files one customer may keep.
    max_files: int = 500_000
    #: Free bytes a store must leave on the supplier's disk.
    reserve_bytes: int = 1024 ** 3
    #: Group commit: at most this many blocks of one customer written and flushed together.
    batch_blocks: int = 16
    #: ... and at most this many bytes of them.
    batch_bytes: int = 64 * 1024 * 1024
    #: Bytes of one customer's blocks that may wait to be written; a block beyond is refused ("busy").
    queue_bytes: int = 256 * 1024 * 1024


@dataclass
class SpaceUsage:
    """One customer's space as the store counts it."""

    files: int = 0
    bytes: int = 0
    dirs: int = 0
    #: Sum over files of ``max(0, min_charge - size)`` for ``min_charge``.
    shortfall: int = 0
    min_charge: int = 0

    def charged(self, min_dir_charge: int) -> int:
        """Bytes counted against the quota."""
        return self.bytes + self.shortfall + self.dirs * min_dir_charge


def customer_dirname(customer_id: str) -> str:
    """The directory name of one customer's space (always a single safe component)."""
    validate_customer_id(customer_id)
    if _SAFE_DIR_RE.match(customer_id) and customer_id not in (".", ".."):
        return customer_id
    return "x-" + hashlib.sha256(customer_id.encode("utf-8")).hexdigest()


def _sync(fn, *args, **kwargs) -> defer.Deferred:
    return defer.maybeDeferred(fn, *args, **kwargs)


def disk_free_bytes(path: str) -> int:
    """Free bytes on the file system holding ``path``."""
    return shutil.disk_usage(path).free


@implementer(IStorageServer)
class DiskStore:
    """IStorageServer on the local disk, for the supplier side."""

    def __init__(self, root: str, run_in_thread: RunInThread = _sync,
                 limits: Callable[[], StoreLimits] = StoreLimits,
                 free_bytes: Callable[[str], int] = disk_free_bytes, index_path: str | None = None,
                 fsync: Callable[[int], None] = os.fsync):
        self.root = os.path.abspath(root)
        self._run = run_in_thread
        self._fsync = fsync
        self._queues: dict[str, WriteQueue] = {}
        #: Group commit: batches written, blocks in them, the largest batch.
        self.batches = Counter()
        self._limits = limits
        self._free_bytes = free_bytes
        self._quota: dict[str, int] = {}
        self._usage: dict[str, SpaceUsage] = {}
        self._locks: dict[str, defer.DeferredLock] = {}
        self.refused: Counter[str] = Counter()
        #: Temp files of interrupted writes removed by the first walk of a space.
        self.temp_files_removed = 0
        #: Files whose hash the index did not have (or had for other bytes) and that were hashed again.
        self.rehashed = 0
        #: Why the block index had to be built again at start ("" when it opened).
        self.index_problem = ""
        ensure_dir(self.root)
        self.index = self._open_index(index_path or os.path.join(self.root, INDEX_NAME))

    def _open_index(self, path: str) -> BlockIndex:
        try:
            return BlockIndex(path)
        except (sqlite3.DatabaseError, BadRequest) as err:
            # A cache of the disk: a broken one is moved aside and built again from the files (the first walks).
            self.index_problem = f"block index unreadable ({err}); moved aside to {path}.broken"
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.replace(path + suffix, path + suffix + ".broken")
            return BlockIndex(path)

    def close(self) -> None:
        """Close the block index (the store is not used afterwards)."""
        self.index.close()

    # --- quotas and usage ----------------------------------------------------------

    def set_quota(self, customer_id: str, quota_bytes: int | None) -> None:
        """Limit one customer's space (None: no limit)."""
        validate_customer_id(customer_id)
        if quota_bytes is None:
            self._quota.pop(customer_id, None)
        elif quota_bytes < 0:
            raise BadRequest("a quota cannot be negative")
        else:
            self._quota[customer_id] = int(quota_bytes)

    def quota(self, customer_id: str) -> int | None:
        """One customer's quota in bytes, or None."""
        return self._quota.get(customer_id)

    def used_bytes(self, customer_id: str) -> defer.Deferred:
        """Deferred of the bytes one customer's space counts for against its quota."""
        return self.usage(customer_id).addCallback(lambda usage: usage["charged_bytes"])

    def usage(self, customer_id: str) -> defer.Deferred:
        """Deferred of ``{"files", "bytes", "dirs", "charged_bytes"}`` of one customer."""
        return self._locked(customer_id, self._run, self._usage_report, customer_id)

    def customers(self) -> list[str]:
        """Directory names of every customer with data here."""
        try:
            return sorted(name for name in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, name)))
        except FileNotFoundError:
            return []

    def total_used(self) -> defer.Deferred:
        """Deferred of the bytes every customer's data takes."""
        return self._run(_tree_size, self.root)

    def load_all(self, customer_ids: list[str]) -> defer.Deferred:
        """Count (and clean: temp files, stale index rows) the spaces of ``customer_ids``, one after another."""
        return defer.Deferred.fromCoroutine(self._load_all(list(customer_ids)))

    async def _load_all(self, customer_ids: list[str]) -> int:
        for customer_id in customer_ids:
            await self.usage(customer_id)
        return len(customer_ids)

    def remove_customer(self, customer_id: str) -> defer.Deferred:
        """Delete everything of one customer (customer_reject); fires with the bytes freed."""
        return self._locked(customer_id, self._run, self._remove_customer, customer_id)

    # --- IStorageServer ----------------------------------------------------------------

    def store_block(self, customer_id: str, block_path: str, data: bytes, data_payload=None,
                    sha256: str | None = None) -> defer.Deferred:
        """Store (or replace) one block atomically, within the customer's limits.

        ``data_payload`` is unused (blocks are on this disk, not sent on).
        ``sha256``: the hex SHA-256 of ``data`` when the caller has it already
        (the supplier's desk, from the hash kept as the packet streamed in; it
        must be of these very bytes), so the index row costs no second pass.

        Fires once the block's data and its directory entry are fsynced (and
        its index row written); blocks of the customer that arrive meanwhile
        are written together (:mod:`bitnode.supplier.group_commit`).
        """
        try:
            target = self._target(customer_id, block_path, write=True)
        except BadRequest as err:
            return defer.fail(err)
        if not (isinstance(data, bytes) or (isinstance(data, memoryview) and isinstance(data.obj, bytes))):
            data = bytes(data)  # a snapshot of mutable data; immutable bytes are written without a copy
        queue = self._queues.setdefault(customer_id, WriteQueue())
        limit = self._limits().queue_bytes
        if queue.bytes and queue.bytes + len(data) > limit:
            self.refused["queue_full"] += 1
            return defer.fail(TooManyRequests(f"busy: {queue.bytes} bytes of blocks of {customer_id} wait to be "
                                              f"written (at most {limit})"))
        write = PendingWrite(block_path, target, data, sha256)
        queue.add(write)
        if not queue.running:
            queue.running = True
            self._next_batch(customer_id)
        return write.done

    def _next_batch(self, customer_id: str) -> None:
        d = self._locked(customer_id, self._write_next_batch, customer_id)
        d.addErrback(self._batch_broke, customer_id)

    def _batch_broke(self, failure, customer_id: str) -> None:
        """A bug in the batching itself: fail what waits (nobody is acknowledged) rather than hang it."""
        queue = self._queues.pop(customer_id, None)
        while queue is not None and len(queue):
            for write in queue.take(len(queue), 2**62):
                write.done.errback(failure)

    def _write_next_batch(self, customer_id: str) -> defer.Deferred:
        """Under the customer's lock: write what its queue holds now, answer each block, go on if more came."""
        queue = self._queues[customer_id]
        limits = self._limits()
        batch = queue.take(limits.batch_blocks, limits.batch_bytes)
        self.batches["batches"] += 1
        self.batches["blocks"] += len(batch)
        self.batches["largest"] = max(self.batches["largest"], len(batch))

        def answer(results: list) -> None:
            for write, result in zip(batch, results, strict=True):
                if result is None:
                    write.done.callback(None)
                else:
                    write.done.errback(result)

        def failed(failure) -> None:
            for write in batch:
                write.done.errback(failure)

        def next_batch(_) -> None:
            if len(queue):
                self._next_batch(customer_id)
            else:
                queue.running = False
                self._queues.pop(customer_id, None)

        d = self._run(self._store_batch, customer_id, [(w.block_path, w.target, w.data, w.sha256) for w in batch])
        d.addCallbacks(answer, failed)
        d.addCallback(next_batch)
        return d

    def fetch_block(self, customer_id: str, block_path: str, expected_sha256: str | None = None) -> defer.Deferred:
        """The stored bytes, or BlockNotFound (``expected_sha256`` unused: the caller checks the bytes)."""
        try:
            target = self._target(customer_id, block_path)
        except BadRequest as err:
            return defer.fail(err)
        return self._run(_read, target, block_path, customer_id)

    def list_blocks(self, customer_id: str, prefix: str, after: str = "", limit: int = -1) -> defer.Deferred:
        """``{path: (size, sha256 hex)}`` of every block under ``prefix`` (from the index: no hashing).

        Sorted by path; ``after``: only paths after it, ``limit``: at most that many (a page).
        """
        try:
            validate_path(prefix, allow_prefix=True)
            if after:
                validate_path(after)
            customer_dirname(customer_id)
        except BadRequest as err:
            self.refused["bad_path"] += 1
            return defer.fail(err)
        return self._locked(customer_id, self._run, self._list, customer_id, prefix, after, limit)

    def delete(self, customer_id: str, path_or_prefix: str) -> defer.Deferred:
        """Delete a block or everything under a prefix; fires with how many blocks went."""
        try:
            validate_path(path_or_prefix, allow_prefix=True)
            customer_dirname(customer_id)
        except BadRequest as err:
            self.refused["bad_path"] += 1
            return defer.fail(err)
        return self._locked(customer_id, self._run, self._delete, customer_id, path_or_prefix)

    # --- work done in the thread pool --------------------------------------------------

    def _space(self, customer_id: str) -> str:
        return os.path.join(self.root, customer_dirname(customer_id))

    def _target(self, customer_id: str, block_path: str, write: bool = False) -> str:
        try:
            validate_store_path(block_path) if write else validate_path(block_path)
            space = self._space(customer_id)
        except BadRequest:
            self.refused["bad_path"] += 1
            raise
        if any(part.startswith(".") for part in block_path.split("/")):
            # Dot names are reserved for temp files of atomic writes.
            self.refused["bad_path"] += 1
            raise BadRequest(f"invalid block path: {block_path!r}")
        target = os.path.normpath(os.path.join(space, *block_path.split("/")))
        if os.path.commonpath([space, target]) != space or target == space:
            self.refused["escape"] += 1
            raise BadRequest(f"invalid block path: {block_path!r}")
        return target

    def _loaded(self, customer_id: str) -> SpaceUsage:
        """The customer's usage, walking its space the first time (under the customer's lock)."""
        usage = self._usage.get(customer_id)
        if usage is None:
            usage = self._usage[customer_id] = self._walk(customer_id)
        min_charge = self._limits().min_file_charge
        if usage.min_charge != min_charge:
            usage.shortfall = self.index.shortfall(customer_dirname(customer_id), min_charge)
            usage.min_charge = min_charge
        return usage

    def _walk(self, customer_id: str) -> SpaceUsage:
        """Count one space from disk, remove temp files, and bring its index rows in line with the files."""
        name = customer_dirname(customer_id)
        space = os.path.join(self.root, name)
        rows = self.index.identities(name)
        usage = SpaceUsage(min_charge=-1)
        stale: list[IndexedBlock] = []
        for folder, dirs, files in os.walk(space):
            if folder != space:
                usage.dirs += 1
            dirs.sort()
            for filename in files:
                full = os.path.join(folder, filename)
                if filename.startswith("."):
                    # A temp file of a write a crash interrupted: we hold the customer's lock, none is running.
                    if remove_if_exists(full):
                        self.temp_files_removed += 1
                    continue
                try:
                    info = os.lstat(full)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                rel = os.path.relpath(full, space).replace(os.sep, "/")
                identity = FileIdentity(info.st_size, info.st_mtime_ns, info.st_ino)
                usage.files += 1
                usage.bytes += info.st_size
                if rows.pop(rel, None) != identity:
                    # Hashed when a listing needs it: stores and reads of this customer need not wait for that.
                    stale.append(IndexedBlock(rel, identity, UNHASHED))
        if stale or rows:
            self.index.replace(name, stale, list(rows))
        return usage

    def _usage_report(self, customer_id: str) -> dict:
        usage = self._loaded(customer_id)
        return {"files": usage.files, "bytes": usage.bytes, "dirs": usage.dirs,
                "charged_bytes": usage.charged(self._limits().min_dir_charge)}

    def _store_batch(self, customer_id: str,
                     writes: list[tuple[str, str, bytes, str | None]]) -> list[BaseException | None]:
        """Check, write and index a batch of one customer's blocks (worker thread, under its lock).

        Each write is (block path, file, data, its hex SHA-256 or None to compute here).

        One entry per block: None when it is stored, else why not (a refusal
        refuses that block alone; the others are judged as if it had not come).
        """
        usage = self._loaded(customer_id)
        limits = self._limits()
        results: list[BaseException | None] = [None] * len(writes)
        accepted: list[tuple[int, int | None]] = []
        new_dirs: list[str] = []
        charged, files, incoming = usage.charged(limits.min_dir_charge), usage.files, 0
        for index, (_path, target, data, _sha256) in enumerate(writes):
            try:
                old_size, dirs, delta = self._admit(customer_id, target, data, limits, new_dirs, charged, files,
                                                    incoming)
            except InsufficientStorage as err:
                results[index] = err
                continue
            accepted.append((index, old_size))
            new_dirs += dirs
            charged += delta
            files += old_size is None
            incoming += len(data) + len(dirs) * limits.min_dir_charge
        if not accepted:
            return results
        digests = {index: writes[index][3] or hashlib.sha256(writes[index][2]).hexdigest() for index, _ in accepted}
        try:
            written = write_batch([(writes[index][1], writes[index][2]) for index, _ in accepted], new_dirs,
                                  mode=0o600, fsync=self._fsync)
        except Exception:
            self._usage.pop(customer_id, None)  # folders may be half made: the next use walks the space again
            raise
        usage.dirs += sum(1 for folder in new_dirs if folder != self._space(customer_id))
        rows = []
        stored = []
        for (index, old_size), error in zip(accepted, written, strict=True):
            if error is not None:
                results[index] = error
                continue
            block_path, target, data, _sha256 = writes[index]
            info = os.stat(target)
            rows.append(IndexedBlock(block_path, FileIdentity(info.st_size, info.st_mtime_ns, info.st_ino),
                                     digests[index]))
            stored.append((len(data), old_size))
        try:
            self.index.replace(customer_dirname(customer_id), rows, ())
        except Exception:
            self._usage.pop(customer_id, None)  # the next use walks the space again and mends the index
            raise
        min_file = limits.min_file_charge
        for size, old_size in stored:
            usage.files += old_size is None
            usage.bytes += size - (old_size or 0)
            usage.shortfall += max(0, min_file - size) - (0 if old_size is None else max(0, min_file - old_size))
        return results

    def _admit(self, customer_id: str, target: str, data: bytes, limits: StoreLimits, planned_dirs: list[str],
               charged: int, files: int, incoming: int) -> tuple[int | None, list[str], int]:
        """Whether one block fits the customer's limits after the blocks admitted before it in its batch:
        (the size of the file it replaces or None, the folders to make for it, the charge it adds);
        InsufficientStorage when it does not fit."""
        try:
            old_size: int | None = os.stat(target).st_size
        except FileNotFoundError:
            old_size = None
        new_dirs = [d for d in _missing_dirs(os.path.dirname(target), self.root) if d not in planned_dirs]
        space_dirs = sum(1 for d in new_dirs if d != self._space(customer_id))
        min_file = limits.min_file_charge
        old_charge = 0 if old_size is None else max(old_size, min_file)
        delta = max(len(data), min_file) - old_charge + space_dirs * limits.min_dir_charge
        quota = self._quota.get(customer_id)
        if quota is not None and delta > 0 and charged + delta > quota:
            self.refused["over_quota"] += 1
            raise InsufficientStorage(f"quota of {quota} bytes for {customer_id} would be exceeded")
        if old_size is None and files + 1 > limits.max_files:
            self.refused["too_many_files"] += 1
            raise InsufficientStorage(f"quota of {limits.max_files} files for {customer_id} would be exceeded")
        free = self._free_bytes(self.root) - incoming
        if free - len(data) - len(new_dirs) * limits.min_dir_charge < limits.reserve_bytes:
            self.refused["disk_reserve"] += 1
            raise InsufficientStorage(f"no space: this supplier keeps {limits.reserve_bytes} bytes of its disk free")
        return old_size, new_dirs, delta

    def _list(self, customer_id: str, prefix: str, after: str, limit: int) -> dict[str, tuple[int, str]]:
        self._loaded(customer_id)
        name = customer_dirname(customer_id)
        listing = self.index.listing(name, prefix, after, limit)
        unhashed = [path for path, (_size, digest) in listing.items() if digest == UNHASHED]
        if unhashed:
            listing.update(self._hash_now(name, unhashed))
        return listing

    def _hash_now(self, name: str, paths: list[str]) -> dict[str, tuple[int, str]]:
        """Hash files the first walk found without a (right) row; record them; their listing entries."""
        space = os.path.join(self.root, name)
        done, found = [], {}
        for path in paths:
            full = os.path.join(space, *path.split("/"))
            try:
                info = os.stat(full)
                digest = _hash_file(full)
            except FileNotFoundError:
                continue
            done.append(IndexedBlock(path, FileIdentity(info.st_size, info.st_mtime_ns, info.st_ino), digest))
            found[path] = (info.st_size, digest)
        self.rehashed += len(done)
        self.index.replace(name, done, ())
        return found

    def _delete(self, customer_id: str, path_or_prefix: str) -> int:
        usage = self._loaded(customer_id)
        name = customer_dirname(customer_id)
        space = os.path.join(self.root, name)
        found = self.index.sizes(name, path_or_prefix)
        folders = set()
        for path in found:
            remove_if_exists(os.path.join(space, *path.split("/")))
            folders.add(os.path.dirname(path))
        self.index.remove(name, found)
        min_file = usage.min_charge
        usage.files -= len(found)
        usage.bytes -= sum(found.values())
        usage.shortfall -= sum(max(0, min_file - size) for size in found.values())
        usage.dirs -= _prune_empty_dirs(space, folders)
        return len(found)

    def _remove_customer(self, customer_id: str) -> int:
        space = self._space(customer_id)
        freed = _tree_size(space)
        shutil.rmtree(space, ignore_errors=True)
        self.index.drop_space(customer_dirname(customer_id))
        self._usage.pop(customer_id, None)
        return freed

    def _locked(self, customer_id: str, fn, *args: Any) -> defer.Deferred:
        # One write at a time per customer keeps the usage count exact.
        lock = self._locks.setdefault(customer_id, defer.DeferredLock())
        return lock.run(fn, *args)


def _missing_dirs(folder: str, root: str) -> list[str]:
    """The directories from ``root`` down to ``folder`` that do not exist yet, outermost first."""
    missing = []
    probe = folder
    while probe not in (root, os.path.dirname(probe)) and not os.path.isdir(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    return missing[::-1]


def _read(target: str, block_path: str, customer_id: str) -> bytes:
    try:
        with open(target, "rb") as handle:
            return handle.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise BlockNotFound(f"no block {block_path} for {customer_id}") from None


def tree_size(path: str) -> int:
    """Bytes of every file under ``path`` but temp files and the index (dot names); blocking, run it in a thread."""
    return _tree_size(path)


def _tree_size(path: str) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            if name.startswith("."):
                continue
            try:
                total += os.path.getsize(os.path.join(folder, name))
            except OSError:
                pass
    return total


def _prune_empty_dirs(space: str, folders: set[str]) -> int:
    """Remove the directories (relative to ``space``) left empty by a delete, deepest first; how many went."""
    candidates = set()
    for folder in folders:
        while folder:
            candidates.add(folder)
            folder = os.path.dirname(folder)
    removed = 0
    for folder in sorted(candidates, key=lambda f: (-f.count("/"), f)):
        try:
            os.rmdir(os.path.join(space, *folder.split("/")))
        except OSError:
            continue  # not empty (or already gone)
        removed += 1
    return removed


def _hash_file(path: str) -> str:
    return sha256_file(path, _HASH_CHUNK)
