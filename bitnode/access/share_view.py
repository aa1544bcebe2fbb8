"""The files of a share granted to me: a catalog of their own, downloads from the owner's suppliers.

A reader must not mix someone else's files into its own catalog: its catalog
is backed up to its own suppliers and checked and rebuilt by its
backup_monitor, none of which applies to blocks held by the owner's
suppliers. So each open share gets a :class:`ShareView`:

- an in-memory :class:`~bitnode.storage.catalog.Catalog` holding exactly the
  rows of the share's newest index (replaced at every read of the index);
- a :class:`~bitnode.storage.job_context.StorageContext` whose customer is the
  owner (block paths are in the owner's space), whose placement is the
  owner's positions served by :meth:`ShareReader.server
  <bitnode.access.share_reader.ShareReader.server>` (packets signed by me,
  for the owner's space), and whose key unwrapping uses the share's private
  key from my key store; wrapping (uploading) is refused: a reader reads;
- a :class:`~bitnode.storage.transfers.TransferManager` of its own for the
  downloads (the tested DownloadJob and Downloader do the work), noted in my
  node's download journal so that a crash mid-download leaves no ``.part``
  behind (the next start removes it; a stop cancels).

For the API the view stands in for service_backups (``catalog``,
``transfers``, ``check_remote_path``, ``placement``, ``require_ready``), so
``files_list``, ``file_info``, ``file_exists``, ``file_download_start`` and
``file_download_stop`` work on ``share_...$owner:path`` exactly as on my own
files. For the shared_access_coordinator it is the ``link``
(``find_suppliers``, ``connect``, ``load_index``, ``release``).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet import defer

from bitnode.access.share_reader import ShareReader
from bitnode.crypt import keys
from bitnode.errors import BadRequest, Conflict, Forbidden, NotFound, Unavailable
from bitnode.storage.catalog import Catalog, split_remote_path
from bitnode.storage.job_context import Placement, StorageContext
from bitnode.storage.transfers import TransferManager


class ShareView:
    """One open share of another user, as storage sees it; see the module docstring."""

    def __init__(self, clock: Any, run_in_thread: Callable[..., defer.Deferred], reader: ShareReader,
                 registry: Any = None, segments_in_flight: Callable[[], int] = lambda: 2,
                 fetch_timeout: Callable[[], float] = lambda: 60.0, max_downloads: Callable[[], int] = lambda: 2,
                 download_journal: Any = None):
        self.reader = reader
        self.key_id = reader.key_id
        self.owner_id = reader.owner_id
        self.run_in_thread = run_in_thread
        self.positions: list[str] = []
        self.loaded = False
        self.index_serial = 0
        self.refusal: Forbidden | None = None
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
            opened = await self.reader.fetch_index(positions)
        except Forbidden as err:
            self.refusal = err  # the owner's suppliers refuse me now: the files are not mine to see any more
            raise
        if self._released is not None:
            raise Unavailable(f"share {self.key_id} was closed")
        document = json.dumps(opened["catalog"], separators=(",", ":")).encode("utf-8")
        await self.run_in_thread(self.catalog.import_, document)
        rows = await self.run_in_thread(self.catalog.list, self.key_id, "", True)
        self.positions = list(positions)
        self.index_serial = opened["serial"]
        self.loaded, self.refusal = True, None
        return {"serial": opened["serial"], "files": sum(1 for r in rows if r["type"] == "file")}

    def release(self) -> defer.Deferred:
        """Stop the downloads and close the catalog (once; later calls get the same Deferred)."""
        if self._released is None:
            self.loaded = False
            d = self.transfers.stop()
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
        """Nothing to back up: the view is a copy of the owner's index."""

    def master_key_id(self) -> str:
        """A view has no default key: remote paths must name the share's key."""
        raise BadRequest(f"name the share's key in the remote path: {self.key_id}:<path>")

    # --- keys --------------------------------------------------------------------------------------

    def _refuse_wrap(self, key_id: str, secret: bytes) -> bytes:
        raise Forbidden(f"share {self.key_id} is read-only on this node: only {self.owner_id} uploads to it")

    def _unwrap_key(self, key_id: str, blob: bytes) -> bytes:
        try:
            private = self.reader.share_key()
        except NotFound:
            raise Forbidden(f"the private key of {self.key_id} is not here: this file cannot be decrypted") from None
        return keys.unwrap_key(private, blob)


def _follow(d: defer.Deferred) -> defer.Deferred:
    """A new Deferred fired when ``d`` (which always succeeds with None) fires; ``d`` stays unchanged."""
    out: defer.Deferred = defer.Deferred()

    def relay(result: Any) -> Any:
        out.callback(None)
        return result

    d.addCallback(relay)
    return out
