"""What storage jobs need from their node, and the housekeeping of versions that never complete.

A :class:`StorageContext` is the only way an upload or download job (see
:mod:`bitnode.storage.jobs`) reaches its node: clock, thread runner, catalog,
supplier :class:`Placement`, key wrapping and the tunables, as plain callables
so tests fake each one. :func:`delete_versions` and :func:`abandon_version`
remove a version's blocks from every current supplier; the storage service,
the transfer manager and the jobs all use them.
"""

from __future__ import annotations

import os
import secrets
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bitnode.errors import BadRequest, NotFound, Unavailable
from bitnode.main.fileutil import remove_if_exists
from bitnode.storage.catalog import FAILED, Catalog
from bitnode.storage.holders import PositionReader
from bitnode.storage.ports import IStorageServer, version_prefix
from bitnode.storage.uploader import DEFAULT_SEGMENT_SIZE

RunInThread = Callable[..., defer.Deferred]

@dataclass(frozen=True)
class Placement:
    """The current supplier positions: ``positions[i]`` holds block i ("" = nobody), and its server.

    ``retiring`` are former holders still under contract, ``(position, supplier_id, server)``:
    they are read from (downloads, the catalog restore), never written to.
    """

    positions: tuple[str, ...]
    servers: tuple[IStorageServer | None, ...]
    retiring: tuple[tuple[int, str, IStorageServer], ...] = ()

    def for_n(self, n: int) -> tuple[list[str], list[IStorageServer | None]]:
        """Positions and servers cut or padded to exactly n (a version keeps its n): where blocks are written."""
        ids = [self.positions[i] if i < len(self.positions) else "" for i in range(n)]
        servers = [self.servers[i] if i < len(self.servers) else None for i in range(n)]
        return ids, servers

    def readers_for_n(self, n: int) -> list[IStorageServer | None]:
        """Per position, where its blocks are read: the current supplier, then its retiring holders."""
        _, servers = self.for_n(n)
        readers: list[IStorageServer | None] = []
        for position, server in enumerate(servers):
            chain = ([server] if server is not None else []) + [s for p, _, s in self.retiring if p == position]
            readers.append(chain[0] if len(chain) == 1 else PositionReader(chain) if chain else None)
        return readers

    def holders(self) -> dict[str, IStorageServer]:
        """Every supplier that may hold my blocks, current and retiring, by id."""
        out = {s: server for s, server in zip(self.positions, self.servers, strict=False) if s and server is not None}
        for _, supplier_id, server in self.retiring:
            out.setdefault(supplier_id, server)
        return out


@dataclass
class StorageContext:
    """Everything a job needs from its node; plain callables so tests can fake each one.

    ``placement()`` raises :class:`Unavailable` when no suppliers are hired;
    ``wrap_key(key_id, secret)`` / ``unwrap_key(key_id, blob)`` run in a worker
    thread (RSA); ``data_blocks(n)`` is k for n positions.
    """

    clock: IReactorTime
    run_in_thread: RunInThread
    catalog: Catalog
    customer_id: str
    placement: Callable[[], Placement]
    wrap_key: Callable[[str, bytes], bytes]
    unwrap_key: Callable[[str, bytes], bytes]
    data_blocks: Callable[[int], int] = lambda n: (n + 1) // 2
    segment_size: Callable[[], int] = lambda: DEFAULT_SEGMENT_SIZE
    segments_in_flight: Callable[[], int] = lambda: 2
    keep_versions: Callable[[], int] = lambda: 2
    store_timeout: Callable[[], float] = lambda: 120.0
    fetch_timeout: Callable[[], float] = lambda: 60.0
    registry: Any = None
    on_catalog_changed: Callable[[], None] = lambda: None
    on_blocks_damaged: Callable[[], None] = lambda: None
    #: What a new version id under a key id starts with ("<alias>." for a share: bitnode.storage.share_scope).
    version_tag: Callable[[str], str] = lambda key_id: ""
    #: ``catalog_backed_up(on_failure)``: fires once the catalog as it is now is in a backup on at least k
    #: suppliers; ``on_failure(error)`` hears of each attempt that failed meanwhile.
    catalog_backed_up: Callable[..., defer.Deferred] = lambda on_failure=None: defer.succeed(None)
    #: Downloads under way, on disk (:mod:`bitnode.storage.download_journal`); None: a stop cancels them.
    download_journal: Any = None
    #: A stop pauses journaled downloads (resumed at the next start); False: it cancels them.
    resumable_downloads: bool = True
    #: Bytes a download writes between two checkpoints (synced and journaled).
    download_checkpoint: Callable[[], int] = lambda: 64 * 1024 * 1024
    #: Where temporary files (a pack being uploaded or read) go; "" = the system's temporary folder.
    temp_dir: str = ""
    #: ``(largest file packed, largest pack)`` in bytes for a folder upload, or None: no packs (one version
    #: per file). See :mod:`bitnode.storage.packs`.
    pack_limits: Callable[[], tuple[int, int] | None] = lambda: None
    #: The most files, folders and links one folder upload may hold.
    folder_max_entries: Callable[[], int] = lambda: 100_000
    log: Logger = field(default_factory=Logger)


def new_version_id(now: float) -> str:
    """``F<UTC yyyymmddThhmmss><ms>-<8 hex>``: sorts by time, unique by its random tail."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"F{stamp}{int(now * 1000) % 1000:03d}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LocalFile:
    """What an upload notes of the local file it reads: size and mtime (is it unchanged?), and what a restore gives back."""

    size: int
    mtime: float
    mode: int
    mtime_ns: int

    @property
    def signature(self) -> tuple[int, float]:
        """(size, mtime): what an interrupted upload compares before it resumes."""
        return self.size, self.mtime


def stat_file(path: str) -> LocalFile:
    """A regular file that can be read; NotFound if missing, BadRequest if not a file or unreadable. Worker thread."""
    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))  # readable now, not only listed
    except FileNotFoundError:
        raise NotFound(f"local file {path} does not exist") from None
    except OSError as err:
        raise BadRequest(f"local file {path} cannot be read: {err.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadRequest(f"{path} is not a regular file")
    return LocalFile(st.st_size, st.st_mtime, stat.S_IMODE(st.st_mode), st.st_mtime_ns)


class BackgroundPass:
    """Background work done in passes (re-layout, repack): one pass at a time, started again by whoever sees
    more to do, stopped with the node. A subclass writes ``_run`` and keeps the transfer it runs in
    ``_worker`` (cancelled by :meth:`stop`) and what it works on in ``current``."""

    def __init__(self) -> None:
        self.running = False
        self.current: dict | None = None
        self._stopping = False
        self._worker: Any = None

    def start(self) -> defer.Deferred | None:
        """Run a pass in the background unless one runs; the Deferred fires when this pass ends."""
        if self.running or self._stopping:
            return None
        self.running = True
        d = defer.Deferred.fromCoroutine(self._run())

        def ended(result: Any) -> Any:
            self.running, self.current = False, None
            return result

        return d.addBoth(ended)

    def stop(self) -> None:
        """Stop: the transfer under way is cancelled; what it was doing is done again at the next start."""
        self._stopping = True
        if self._worker is not None:
            self._worker.cancel()

    async def _run(self) -> None:
        raise NotImplementedError


def remove_temp_files(temp_dir: str, prefix: str) -> int:
    """Remove the files whose names start with ``prefix`` in ``temp_dir`` (left by a stop or a crash); how many.
    Worker thread."""
    removed = 0
    try:
        names = os.listdir(temp_dir)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(prefix):
            removed += int(remove_if_exists(os.path.join(temp_dir, name)))
    return removed


async def delete_versions(ctx: StorageContext, version_ids: list[str]) -> dict:
    """Delete every block of ``version_ids`` on every current supplier (best effort).

    Returns ``{"deleted": blocks, "failed": [{"supplier", "version_id", "reason"}]}``;
    never raises for a supplier failure (the caller reports them).
    """
    try:
        placement = ctx.placement()
    except Unavailable as err:
        return {"deleted": 0, "failed": [{"supplier": "", "version_id": v, "reason": str(err)}
                                         for v in version_ids]}
    calls = []
    for supplier, server in zip(placement.positions, placement.servers, strict=False):
        if server is None:
            continue
        for version_id in version_ids:
            d = defer.maybeDeferred(server.delete, ctx.customer_id, version_prefix(version_id))
            d.addTimeout(ctx.store_timeout(), ctx.clock)
            calls.append((supplier, version_id, d))
    outcomes = await defer.DeferredList([d for _, _, d in calls], consumeErrors=True)
    deleted, failed = 0, []
    for (supplier, version_id, _), (ok, value) in zip(calls, outcomes, strict=True):
        if ok:
            deleted += int(value or 0)
        else:
            failed.append({"supplier": supplier, "version_id": version_id, "reason": value.getErrorMessage()})
    return {"deleted": deleted, "failed": failed}


async def abandon_version(ctx: StorageContext, version_id: str) -> None:
    """A version that will never complete: mark it failed, delete its blocks, then forget it.

    The row is dropped only once every supplier acknowledged the delete; a
    failed version left behind is dropped by the next prune of that file.
    """
    try:
        await ctx.run_in_thread(ctx.catalog.finish_version, version_id, FAILED, ctx.clock.seconds())
    except NotFound:
        return
    outcome = await delete_versions(ctx, [version_id])
    if not outcome["failed"]:
        try:
            await ctx.run_in_thread(ctx.catalog.drop_version, version_id, True)
        except NotFound:
            pass
    ctx.on_catalog_changed()
