"""A supplier's disk store: other users' encrypted blocks under ``basedir/customers/``.

Layout: ``<root>/<customer dir>/<block path>`` where the customer directory is
the customer's global id when it is made of safe characters (``[a-z0-9_.@-]``,
which every canonical global id is) and ``x-<sha256 of the id>`` otherwise.
Block paths come from packets, so they are checked twice: by
:func:`bitnode.storage.ports.validate_path` (relative, ``[A-Za-z0-9._-]``
components, no ``.``/``..``), and by resolving the final path and verifying it
is still inside the customer's directory. Refusals are counted in
:attr:`DiskStore.refused`.

Writes are atomic (temp file, fsync, rename, fsync of the directory), so a
crash leaves the old block or the new one, never half of one; a directory
created for a block is flushed into its parent too. A store is acknowledged
only after that. Every file operation runs through the injected
``run_in_thread`` so the reactor never waits on the disk.

Quota: :meth:`DiskStore.set_quota` per customer; a store that would go over it
fails with :class:`~bitnode.errors.InsufficientStorage` and writes nothing.
Usage is counted when a customer's directory is first touched and then kept
up to date in memory (one store at a time per customer keeps it exact).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections import Counter
from typing import Any, Callable

from twisted.internet import defer
from zope.interface import implementer

from bitnode.errors import BadRequest, InsufficientStorage
from bitnode.main.fileutil import atomic_write, ensure_dir, fsync_dir
from bitnode.storage.ports import BlockNotFound, IStorageServer, validate_customer_id, validate_path

_SAFE_DIR_RE = re.compile(r"[a-z0-9_.@-]{1,200}\Z")
RunInThread = Callable[..., defer.Deferred]


def customer_dirname(customer_id: str) -> str:
    """The directory name of one customer's space (always a single safe component)."""
    validate_customer_id(customer_id)
    if _SAFE_DIR_RE.match(customer_id) and customer_id not in (".", ".."):
        return customer_id
    return "x-" + hashlib.sha256(customer_id.encode("utf-8")).hexdigest()


def _sync(fn, *args, **kwargs) -> defer.Deferred:
    return defer.maybeDeferred(fn, *args, **kwargs)


@implementer(IStorageServer)
class DiskStore:
    """IStorageServer on the local disk, for the supplier side."""

    def __init__(self, root: str, run_in_thread: RunInThread = _sync):
        self.root = os.path.abspath(root)
        self._run = run_in_thread
        self._quota: dict[str, int] = {}
        self._used: dict[str, int] = {}
        self._locks: dict[str, defer.DeferredLock] = {}
        self.refused: Counter[str] = Counter()
        ensure_dir(self.root)

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
        """Deferred of the bytes one customer stores here."""
        # Under the customer's lock: a first count racing a store would be cached wrong for good.
        return self._locked(customer_id, self._run, self._used_of, customer_id)

    def customers(self) -> list[str]:
        """Directory names of every customer with data here."""
        try:
            return sorted(name for name in os.listdir(self.root) if os.path.isdir(os.path.join(self.root, name)))
        except FileNotFoundError:
            return []

    def total_used(self) -> defer.Deferred:
        """Deferred of the bytes every customer's data takes."""
        return self._run(_tree_size, self.root)

    def remove_customer(self, customer_id: str) -> defer.Deferred:
        """Delete everything of one customer (customer_reject); fires with the bytes freed."""
        return self._locked(customer_id, self._run, self._remove_customer, customer_id)

    # --- IStorageServer ----------------------------------------------------------------

    def store_block(self, customer_id: str, block_path: str, data: bytes) -> defer.Deferred:
        """Store (or replace) one block atomically, within the customer's quota."""
        try:
            target = self._target(customer_id, block_path)
        except BadRequest as err:
            return defer.fail(err)
        if not (isinstance(data, bytes) or (isinstance(data, memoryview) and isinstance(data.obj, bytes))):
            data = bytes(data)  # a snapshot of mutable data; immutable bytes are written without a copy
        return self._locked(customer_id, self._run, self._store, customer_id, target, data)

    def fetch_block(self, customer_id: str, block_path: str) -> defer.Deferred:
        """The stored bytes, or BlockNotFound."""
        try:
            target = self._target(customer_id, block_path)
        except BadRequest as err:
            return defer.fail(err)
        return self._run(_read, target, block_path, customer_id)

    def list_blocks(self, customer_id: str, prefix: str) -> defer.Deferred:
        """``{path: (size, sha256 hex)}`` of every block under ``prefix``."""
        try:
            validate_path(prefix, allow_prefix=True)
            space = os.path.join(self.root, customer_dirname(customer_id))
        except BadRequest as err:
            self.refused["bad_path"] += 1
            return defer.fail(err)
        return self._run(_list, space, prefix)

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

    def _target(self, customer_id: str, block_path: str) -> str:
        try:
            validate_path(block_path)
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

    def _used_of(self, customer_id: str) -> int:
        if customer_id not in self._used:
            self._used[customer_id] = _tree_size(self._space(customer_id))
        return self._used[customer_id]

    def _store(self, customer_id: str, target: str, data: bytes) -> None:
        used = self._used_of(customer_id)
        old = os.path.getsize(target) if os.path.isfile(target) else 0
        quota = self._quota.get(customer_id)
        if quota is not None and used - old + len(data) > quota:
            self.refused["over_quota"] += 1
            raise InsufficientStorage(f"quota of {quota} bytes for {customer_id} would be exceeded")
        _make_dirs_durably(os.path.dirname(target), self.root)
        atomic_write(target, data, mode=0o600)
        self._used[customer_id] = used - old + len(data)

    def _delete(self, customer_id: str, path_or_prefix: str) -> int:
        space = self._space(customer_id)
        found = _list(space, path_or_prefix)
        for path in found:
            os.unlink(os.path.join(space, *path.split("/")))
        _prune_empty_dirs(space)
        if customer_id in self._used:
            self._used[customer_id] -= sum(size for size, _ in found.values())
        return len(found)

    def _remove_customer(self, customer_id: str) -> int:
        space = self._space(customer_id)
        freed = _tree_size(space)
        shutil.rmtree(space, ignore_errors=True)
        self._used.pop(customer_id, None)
        return freed

    def _locked(self, customer_id: str, fn, *args: Any) -> defer.Deferred:
        # One write at a time per customer keeps the usage count exact.
        lock = self._locks.setdefault(customer_id, defer.DeferredLock())
        return lock.run(fn, *args)


def _make_dirs_durably(folder: str, root: str) -> None:
    """Create ``folder`` and its missing parents, and flush the parent of each new one.

    atomic_write flushes the block's own directory; a directory created for it
    must itself be recorded in its parent before the store is acknowledged.
    Existing directories cost one ``stat``; only new ones add an fsync.
    """
    if os.path.isdir(folder):
        return
    missing = []
    probe = folder
    while probe not in (root, os.path.dirname(probe)) and not os.path.isdir(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    ensure_dir(folder)
    for created in reversed(missing):
        fsync_dir(os.path.dirname(created))


def _read(target: str, block_path: str, customer_id: str) -> bytes:
    try:
        with open(target, "rb") as handle:
            return handle.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise BlockNotFound(f"no block {block_path} for {customer_id}") from None


def _list(space: str, prefix: str) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    if not os.path.isdir(space):
        return out
    for folder, dirs, files in os.walk(space):
        dirs.sort()
        for name in sorted(files):
            if name.startswith("."):
                continue  # a temp file of an interrupted atomic write
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, space).replace(os.sep, "/")
            if prefix == "" or (rel.startswith(prefix) if prefix.endswith("/") else rel == prefix):
                digest = hashlib.sha256()
                with open(full, "rb") as handle:
                    for chunk in iter(lambda h=handle: h.read(1 << 20), b""):
                        digest.update(chunk)
                out[rel] = (os.path.getsize(full), digest.hexdigest())
    return dict(sorted(out.items()))


def tree_size(path: str) -> int:
    """Bytes of every file under ``path`` (0 when it does not exist); blocking, run it in a thread."""
    return _tree_size(path)


def _tree_size(path: str) -> int:
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(folder, name))
            except OSError:
                pass
    return total


def _prune_empty_dirs(space: str) -> None:
    for folder, _dirs, _files in sorted(os.walk(space), key=lambda entry: -len(entry[0])):
        if folder != space:
            try:
                os.rmdir(folder)
            except OSError:
                pass  # not empty
