"""The files of a share granted to me: a catalog of their own, downloads from the owner's suppliers.

A reader must not mix someone else's files into its own catalog: its catalog
is backed up to its own suppliers and checked and rebuilt by its
backup_monitor, none of which applies to blocks held by the owner's
suppliers. So each open share gets a :class:`ShareView`:

- an in-memory :class:`~bitnode.storage.catalog.Catalog` holding the share
  as :mod:`bitnode.access.share_merge` builds it: the owner's newest index
  and the entries of the share's writers (mine from my own catalog of the
  share), replaced at every read of the index and after each of my uploads;
- a :class:`~bitnode.storage.job_context.StorageContext` whose customer is the
  owner (block paths are in the owner's space), whose placement is the
  owner's positions served by :meth:`ShareReader.server
  <bitnode.access.share_reader.ShareReader.server>` (packets signed by me,
  for the owner's space), and whose key unwrapping uses the share's private
  key from my key store (any generation I hold);
- a :class:`~bitnode.storage.transfers.TransferManager` of its own for the
  downloads (the tested DownloadJob and Downloader do the work), noted in my
  node's download journal so that a crash mid-download leaves no ``.part``
  behind (the next start removes it; a stop cancels);
- when the owner's index names me a read-write member, my
  :class:`~bitnode.access.share_writes.ShareWrites`: my uploads into the
  share (``upload_transfers``), my deletes of what I wrote, my entries.

For the API the view stands in for service_backups (``catalog``,
``transfers``, ``upload_transfers``, ``upload_settled``, ``delete``,
``check_remote_path``, ``placement``, ``require_ready``), so ``files_list``,
``file_info``, ``file_exists``, ``file_download_start``,
``file_download_stop`` and, for a writer, ``file_upload_start``,
``file_upload_stop`` and ``file_delete`` work on ``share_...$owner:path``
exactly as on my own files. For the shared_access_coordinator it is the ``link``
(``find_suppliers``, ``connect``, ``load_index``, ``release``).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer

from bitnode.access import share_merge
from bitnode.access.share_reader import KeyOutdated, ShareReader
from bitnode.access.share_rotation import unwrap_with_any
from bitnode.access.share_writes import ShareWrites
from bitnode.errors import BadRequest, Conflict, Forbidden, Unavailable
from bitnode.storage.catalog import Catalog, split_remote_path
from bitnode.storage.job_context import Placement, StorageContext
from bitnode.storage.transfers import TransferManager


class ShareView:
    """One open share of another user, as storage sees it; see the module docstring."""

    def __init__(self, clock: Any, run_in_thread: Callable[..., defer.Deferred], reader: ShareReader,
                 registry: Any = None, segments_in_flight: Callable[[], int] = lambda: 2,
                 fetch_timeout: Callable[[], float] = lambda: 60.0, max_downloads: Callable[[], int] = lambda: 2,
                 download_journal: Any = None, me: str = "",
                 open_writes: Callable[..., defer.Deferred] | None = None,
                 pick_up_key: Callable[..., Any] | None = None):
        self.reader = reader
        self.key_id = reader.key_id
        self.owner_id = reader.owner_id
        self.run_in_thread = run_in_thread
        self.me = me
        self.open_writes = open_writes
        self.pick_up_key = pick_up_key
        self.positions: list[str] = []
        self.loaded = False
        self.index_serial = 0
        #: What the owner's index says: my access ("rw", "ro", "" when not listed), every member's, the rule.
        self.mode = ""
        self.members: dict[str, str] = {}
        self.reshare = ""
        self.writes: ShareWrites | None = None
        #: The last merge: what each writer added and what was left out; writers whose entries could not be read.
        self.merge_report: dict = {}
        self.entries_problems: dict[str, str] = {}
        self.refusal: Forbidden | None = None
        self._index: dict | None = None
        self._entries: dict[str, dict] = {}
        self._merge_lock = defer.DeferredLock()
        self.catalog = Catalog(":memory:")
        self.context = StorageContext(
            clock=clock, run_in_thread=run_in_thread, catalog=self.catalog, customer_id=self.owner_id,
            placement=self.placement, wrap_key=self._refuse_wrap, unwrap_key=self._unwrap_key,
            segments_in_flight=segments_in_flight, fetch_timeout=fetch_timeout, registry=registry,
            # Journaled so that a crash leaves no stray part (the next start removes it); a share's download
            # is not resumed across restarts: the share is opened again first.
            download_journal=download_journal, resumable_downloads=False)
        self.transfers = TransferManager(self.context, lambda: 1, max_downloads)
        self._released: defer.Deferred | None = None

    # --- the link of the shared_access_coordinator ----------------------------------------------

    def find_suppliers(self) -> defer.Deferred:
        """The owner's positions."""
        return self.reader.find_suppliers()

    def connect(self, positions: list[str]) -> defer.Deferred:
        """Introduce me to the owner's suppliers."""
        return self.reader.connect(positions)

    def load_index(self, positions: list[str]) -> defer.Deferred:
        """Read the newest index and make its files the view's catalog; fires with ``{"serial", "files"}``."""
        return defer.Deferred.fromCoroutine(self._load_index(positions))

    async def _load_index(self, positions: list[str]) -> dict:
        try:
            try:
                opened = await self.reader.fetch_index(positions)
            except KeyOutdated as outdated:
                if self.pick_up_key is None:
                    raise
                # The owner renewed the key (share_revoke) while I was away: my envelope on its suppliers has it.
                await self.pick_up_key(self.reader, positions, outdated.fingerprint)
                opened = await self.reader.fetch_index(positions)
        except Forbidden as err:
            self.refusal = err  # the owner's suppliers refuse me now: the files are not mine to see any more
            raise
        if self._released is not None:
            raise Unavailable(f"share {self.key_id} was closed")
        self.positions = list(positions)
        self.members, self.reshare = dict(opened["members"]), opened["reshare"]
        self.mode = self.members.get(self.me, "")
        opening = self.mode == "rw" and self.writes is None and self.open_writes is not None
        # My own entries too when my part is opened here: a new machine's empty catalog of it starts from them.
        writers = sorted(w for w, mode in self.members.items() if mode == "rw" and (w != self.me or opening))
        entries, self.entries_problems = await self.reader.fetch_entries(positions, writers)
        mine = entries.pop(self.me, None)
        self.entries_problems.pop(self.me, None)
        if opening:
            self.writes = await self.open_writes(self, mine)
            if self._released is not None:
                await self.writes.release()
                raise Unavailable(f"share {self.key_id} was closed")
        self._index, self._entries = opened, entries
        files = await self.merge()
        self.index_serial = opened["serial"]
        self.loaded, self.refusal = True, None
        return {"serial": opened["serial"], "files": files}

    def merge(self) -> defer.Deferred:
        """Build the view again from the last index and entries read and my own entries; fires with the file count."""
        return self._merge_lock.run(lambda: defer.Deferred.fromCoroutine(self._merge()))

    async def _merge(self) -> int:
        if self._index is None or self._released is not None:
            return 0
        entries = list(self._entries.values())
        if self.writes is not None and self.mode == "rw":
            entries.append(await self.run_in_thread(self.writes.opened))
        document, self.merge_report = await self.run_in_thread(share_merge.merged_bytes, self._index, entries)
        await self.run_in_thread(self.catalog.import_, document)
        rows = await self.run_in_thread(self.catalog.list, self.key_id, "", True)
        return sum(1 for r in rows if r["type"] == "file")

    def writes_changed(self) -> None:
        """My own entries changed (an upload or a delete of mine): merge them into the view."""
        if self._index is not None and self._released is None:
            self.merge().addErrback(lambda f: self.context.log.info("merging share {key_id} again: {err}",
                                                                    key_id=self.key_id, err=f.getErrorMessage()))

    def release(self) -> defer.Deferred:
        """Stop the downloads and close the catalog (once; later calls get the same Deferred)."""
        if self._released is None:
            self.loaded = False
            writes, self.writes = self.writes, None
            d = self.transfers.stop()
            if writes is not None:
                d.addCallback(lambda _: writes.release())
            d.addCallback(lambda _: self.run_in_thread(self.catalog.close))
            # Releasing is cleanup: a failure is logged and waiters are answered all the same.
            d.addErrback(lambda f: self.context.log.info("closing share view {key_id}: {err}", key_id=self.key_id,
                                                         err=f.getErrorMessage()))
            self._released = d
        return _follow(self._released)

    # --- what the files API uses (service_backups' shape) ----------------------------------------

    def require_ready(self) -> None:
        """Unavailable once closed, Forbidden once the suppliers refused me, Conflict before the first index."""
        if self._released is not None:
            raise Unavailable(f"share {self.key_id} is closed")
        if self.refusal is not None:
            raise self.refusal
        if not self.loaded:
            raise Conflict(f"share {self.key_id} is not connected yet: see shares_list for its state")

    def check_remote_path(self, remote_path: str) -> tuple[str, str]:
        """``key_id:path`` split and checked: it must be under this share's key."""
        self.require_ready()
        key_id, path = split_remote_path(remote_path)
        if key_id != self.key_id:
            raise Forbidden(f"{remote_path} is not in share {self.key_id}")
        return key_id, path

    def placement(self) -> Placement:
        """The owner's positions, each served to me by that supplier."""
        if not any(self.positions):
            raise Unavailable(f"the suppliers of {self.owner_id} are not known yet")
        servers = tuple(self.reader.server(s) if s else None for s in self.positions)
        return Placement(tuple(self.positions), servers)

    def catalog_changed(self) -> None:
        """Nothing to back up: the view is a copy of the owner's index and the writers' entries."""

    def master_key_id(self) -> str:
        """A view has no default key: remote paths must name the share's key."""
        raise BadRequest(f"name the share's key in the remote path: {self.key_id}:<path>")

    # --- writing (a read-write member) ---------------------------------------------------------------

    @property
    def upload_transfers(self) -> Any:
        """The TransferManager of my uploads into the share; Forbidden when I may only read it."""
        self.require_ready()
        if self.writes is None:
            raise Forbidden(f"share {self.key_id} is read-only for this node: {self.owner_id} granted it to read")
        return self.writes.transfers

    def check_catalog_writable(self) -> None:
        """A view's catalog is a copy: only my own part of it (my uploads) changes, and only while ready."""
        self.require_ready()

    def upload_settled(self) -> defer.Deferred:
        """Fires once my finished uploads are in my published entries (the others see them)."""
        return self.writes.settled() if self.writes is not None else defer.succeed(None)

    def delete(self, remote_path: str) -> defer.Deferred:
        """Delete my versions under ``remote_path`` (a writer deletes only what it wrote)."""
        self.check_remote_path(remote_path)
        if self.writes is None:
            return defer.fail(Forbidden(f"share {self.key_id} is read-only for this node"))
        return defer.Deferred.fromCoroutine(self.writes.delete(remote_path))

    def transfer_managers(self) -> list:
        """My downloads from the share, and my uploads into it."""
        return [self.transfers] + ([self.writes.transfers] if self.writes is not None else [])

    # --- keys --------------------------------------------------------------------------------------

    def _refuse_wrap(self, key_id: str, secret: bytes) -> bytes:
        raise Forbidden(f"downloads of share {self.key_id} make no new versions")

    def _unwrap_key(self, key_id: str, blob: bytes) -> bytes:
        return unwrap_with_any(self.reader.keys(), blob, self.key_id)


def _follow(d: defer.Deferred) -> defer.Deferred:
    """A new Deferred fired when ``d`` (which always succeeds with None) fires; ``d`` stays unchanged."""
    out: defer.Deferred = defer.Deferred()

    def relay(result: Any) -> Any:
        out.callback(None)
        return result

    d.addCallback(relay)
    return out
