"""service_backups: the catalog, upload/download jobs, backup_monitor and the catalog backup of one node.

Suppliers come from a *supplier provider* (:class:`~bitnode.storage.ports.SupplierProvider`,
declared ``optional``): ``positions() -> list[str]`` (position i holds block i,
"" = empty), ``server(supplier_id) -> IStorageServer``, optionally
``subscribe(callback) -> unsubscribe`` (called on "suppliers-changed"),
``settled() -> Deferred | None`` (fire_hire is done hiring), and for replaced
suppliers ``retiring()``, ``rebuild_progress(report)`` and
``release(supplier_id)`` (see :mod:`bitnode.storage.backup_monitor`: a
replaced supplier is read from until backup_monitor has its blocks on the
successor and the catalog backup is current; only then is it released). By
default it is the service that provides the port (``service_customer``)
while that service is on; tests inject one by overriding :meth:`make_provider`.
Without one, anything that needs suppliers fails with Unavailable("no
suppliers hired: service_customer is off") — it never pretends to succeed.

Files: ``metadata/catalog.sqlite`` (the catalog), ``metadata/tmp/`` (the
catalog backup being written or read, a version being re-laid out; private
like the rest of metadata/).

After each check by backup_monitor, versions stored in another k-of-n than
the current layout (the number of suppliers or ``data-blocks`` changed) are
re-uploaded from their blocks in the background (:mod:`bitnode.storage.relayout`);
``service_info`` shows it under ``relayout``.

The parts need my identity (the customer id is my global id, keys come from
my key store): they come up when the service starts with an identity, or when
``my-identity-created`` is published, and go down on ``my-identity-erased``.
Then, whenever suppliers are known: an empty catalog is first restored from
the newest catalog backup on the suppliers (a recovered identity on a new
machine gets its files back; tried again every ``catalog-retry`` seconds,
doubling, while it fails, and on files_sync; meanwhile nothing is backed up
and files cannot be added), backup_monitor checks and rebuilds, and every
catalog change is backed up again after ``catalog-backup-delay`` seconds
(:mod:`bitnode.storage.catalog_keeper`). An upload is done only once a
catalog backup naming it is on at least k suppliers.

The catalog backup also carries my other keys (share and group keys, keys
shared with me) and the records services register with
:meth:`BackupsService.add_backup_part`, sealed to my master key
(:mod:`bitnode.storage.key_backup`): a change of my key store is backed up
like a catalog change, and a restore puts the keys back before the catalog.
A restored part whose service is off waits in the catalog's meta table until
the service registers it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from bitnode import globalid
from bitnode.crypt import keys
from bitnode.errors import BadRequest, BitnodeError, Conflict, Forbidden, NotFound, Unavailable
from bitnode.main.options import BOOLEAN, DISK_SPACE, FLOAT, INTEGER, Option
from bitnode.services.background import BackgroundWork
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.storage import k_of_n, key_backup, packs, repack, share_scope
from bitnode.storage.backup_monitor import REBUILD_SEGMENTS_IN_FLIGHT, BackupMonitor
from bitnode.storage.catalog import Catalog, open_catalog, split_remote_path
from bitnode.storage.catalog_backup import SERIAL_META, CatalogBackup
from bitnode.storage.catalog_keeper import COVERED_META, CatalogKeeper
from bitnode.storage.catalog_packs import PACKED_DELETED_META
from bitnode.storage.download_journal import DownloadJournal
from bitnode.storage.job_context import Placement, StorageContext, delete_versions
from bitnode.storage.jobs import PAUSED, SECURING
from bitnode.storage.ports import OtherCatalogs, SupplierProvider
from bitnode.storage.relayout import Relayout
from bitnode.storage.transfers import UPLOAD, TransferManager
from bitnode.userid.id_service import IdentityService

PENDING_DELETES_META = "pending-deletes"
PENDING_PARTS_META = "backup-parts-pending"
NO_SUPPLIERS = "no suppliers hired: service_customer is off"
DOWNLOAD_JOURNAL = "downloads.json"
#: Settings another catalog reader (an open share's view) follows too: import these, never retype the key.
SEGMENTS_IN_FLIGHT_KEY = "services/backups/segments-in-flight"
MAX_DOWNLOADS_KEY = "services/backups/max-downloads"
REBUILD_IN_FLIGHT_KEY = "services/backups/rebuild-segments-in-flight"
RETIRING_LIST_TIMEOUT_KEY = "services/backups/retiring-list-timeout"
PACK_FILES_KEY = "services/backups/pack-small-files"
PACK_FILE_MAX_KEY = "services/backups/pack-file-max"
PACK_MAX_BYTES_KEY = "services/backups/pack-max-bytes"
FOLDER_MAX_ENTRIES_KEY = "services/backups/folder-max-entries"
REPACK_BELOW_KEY = "services/backups/repack-below"


def _open_catalog(path: str, temp_dir: str, now: float) -> tuple[Catalog, dict | None]:
    os.makedirs(temp_dir, mode=0o700, exist_ok=True)
    return open_catalog(path, now)


class BackupsService(Service):
    """Backups of my files on my suppliers."""

    name = "service_backups"
    requires = {"identity": IdentityService}
    optional = {"suppliers": SupplierProvider}
    enabled_by_default = True
    description = "Encrypted, erasure-coded copies of your files on the suppliers you hire"
    options = (
        k_of_n.DATA_BLOCKS_OPTION,
        Option(SEGMENTS_IN_FLIGHT_KEY, INTEGER, 2,
               "Segments of one transfer held in memory at once (memory is about this times segment size "
               "times n/k).", minimum=1, maximum=32),
        Option(REBUILD_IN_FLIGHT_KEY, INTEGER, REBUILD_SEGMENTS_IN_FLIGHT,
               "Segments a rebuild works on at once (fetching, decoding, storing on the new supplier and "
               "waiting for its ack); memory is about this times segment size times n/k.", minimum=1, maximum=64),
        Option(RETIRING_LIST_TIMEOUT_KEY, FLOAT, 10.0,
               "Seconds a replaced supplier (still holding our blocks until they are rebuilt) has to list "
               "them before a rebuild goes on without it (its blocks are then decoded from the others).",
               minimum=0.5, maximum=3600.0),
        Option("services/backups/max-uploads", INTEGER, 1, "Uploads running at once; the others wait.",
               minimum=1, maximum=16),
        Option(MAX_DOWNLOADS_KEY, INTEGER, 2, "Downloads running at once; the others wait.",
               minimum=1, maximum=16),
        Option("services/backups/store-timeout", FLOAT, 120.0, "Seconds a supplier has to store one block.",
               minimum=1.0, maximum=3600.0),
        Option("services/backups/fetch-timeout", FLOAT, 60.0, "Seconds a supplier has to return one block.",
               minimum=1.0, maximum=3600.0),
        Option("services/backups/download-checkpoint", INTEGER, 64 * 1024 * 1024,
               "Bytes a download writes between two checkpoints (synced to disk and noted in "
               "metadata/downloads.json): after a crash it goes on from the last one.",
               minimum=1024 * 1024, maximum=1024 * 1024 * 1024),
        Option("services/backups/catalog-backup-delay", FLOAT, 10.0,
               "Seconds after a catalog change before the catalog is backed up to the suppliers.",
               minimum=0.0, maximum=3600.0),
        Option(PACK_FILES_KEY, BOOLEAN, True,
               "A folder upload puts its small files into packs (a few segments for many files, see "
               "pack-file-max and pack-max-bytes); off: one version per file, as a single upload."),
        Option(PACK_FILE_MAX_KEY, DISK_SPACE, packs.DEFAULT_PACK_FILE_MAX,
               "The largest file of a folder upload that goes into a pack; larger ones are uploaded alone.",
               minimum=0, maximum=64 * 1024 ** 2),
        Option(PACK_MAX_BYTES_KEY, DISK_SPACE, packs.DEFAULT_PACK_MAX_BYTES,
               "The most bytes of files one pack holds. Reading one file of a pack reads the pack's segments "
               "(one when this is at most segment-size).", minimum=64 * 1024, maximum=256 * 1024 ** 2),
        Option(REPACK_BELOW_KEY, FLOAT, repack.DEFAULT_REPACK_BELOW,
               "A pack whose files still in the catalog hold less than this share of its bytes is rewritten "
               "with only those files, in the background (its dead bytes are freed on the suppliers); 0: never. "
               "A pack with no file left is removed whatever this says.", minimum=0.0, maximum=1.0),
        Option(FOLDER_MAX_ENTRIES_KEY, INTEGER, 100_000,
               "The most files, folders and links one folder upload may hold (it is refused above).",
               minimum=1, maximum=10_000_000),
        Option("services/backups/catalog-retry", FLOAT, 30.0,
               "Seconds before a failed catalog backup, or a catalog restore that could not ask enough "
               "suppliers, is tried again (doubling while it keeps failing, up to 16 times this).",
               minimum=0.1, maximum=86400.0),
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.catalog: Catalog | None = None
        self.transfers: TransferManager | None = None
        self.monitor: BackupMonitor | None = None
        self.relayout: Relayout | None = None
        self.repacker: repack.Repacker | None = None
        self.backups: CatalogBackup | None = None
        self.context: StorageContext | None = None
        self.provider: Any = None
        self.catalog_file = os.path.join(ctx.basedir.metadata, "catalog.sqlite")
        self.temp_dir = os.path.join(ctx.basedir.metadata, "tmp")
        self.keeper: CatalogKeeper | None = None
        #: The catalog file could not be read at start: where it was set aside, why, and whether it was restored.
        self.catalog_unreadable: dict | None = None
        self.transfers_resumed: dict[str, int] = {}
        self._unsubscribe: list = []
        self._background = BackgroundWork(self.log, (BitnodeError, defer.CancelledError))
        self._other_catalogs: list[OtherCatalogs] = []
        self.parts = key_backup.BackupParts()
        self.parts.on_pending = self._save_pending_parts
        self._unsubscribe_keys: Any = None
        self._stopping = False
        #: Packs whose every file was deleted, removed from the suppliers (counter for service_info).
        self.packs_reclaimed = 0
        self._packs_seen: dict = {}
        self._packs_looking = self._packs_again = False

    # --- lifecycle ----------------------------------------------------------------------------

    def make_provider(self) -> Any:
        """The supplier provider to use instead of service_customer's (tests override this)."""
        return None

    def start(self) -> defer.Deferred:
        """Open the catalog off the reactor, then bring the parts up if I have an identity."""
        self.provider = self.make_provider()
        self._stopping = False
        d = self.ctx.run_in_thread(_open_catalog, self.catalog_file, self.temp_dir, self.ctx.clock.seconds())
        d.addCallback(self._opened)
        return d

    def _opened(self, opened: tuple[Catalog, dict | None]) -> defer.Deferred:
        self.catalog, problem = opened
        if problem is not None:
            # Kept, reported, and replaced by the suppliers' backup (restored as for a new machine).
            self.catalog_unreadable = dict(problem, restored=False)
            self.log.error("{error}; it was moved to {moved_to} and is restored from the suppliers' backup",
                           **problem)
            self.ctx.events.publish("catalog-unreadable", dict(problem))
        self._unsubscribe.append(self.ctx.events.subscribe(self._on_event))
        self.ctx.settings.add_listener(k_of_n.DATA_BLOCKS_KEY, self._layout_changed)
        self._unsubscribe.append(lambda: self.ctx.settings.remove_listener(k_of_n.DATA_BLOCKS_KEY, self._layout_changed))
        subscribe = getattr(self.provider, "subscribe", None)
        if subscribe is not None:
            self._unsubscribe.append(subscribe(self.suppliers_changed))
        return self._bring_up()

    @defer.inlineCallbacks
    def _bring_up(self):
        customer_id = self._my_global_id()
        if customer_id is None or self.transfers is not None or self.catalog is None or self._stopping:
            return
        ctx, settings = self.ctx, self.ctx.settings
        empty = yield ctx.run_in_thread(self.catalog.is_empty)
        serial = yield ctx.run_in_thread(self.catalog.get_meta, SERIAL_META)
        pending_parts = yield ctx.run_in_thread(self.catalog.get_meta, PENDING_PARTS_META, "{}")
        covered_at = yield ctx.run_in_thread(self.catalog.get_meta, COVERED_META)
        journal = DownloadJournal(os.path.join(ctx.basedir.metadata, DOWNLOAD_JOURNAL), ctx.run_in_thread)
        interrupted = yield journal.load()
        if self._stopping or self.transfers is not None or self._my_global_id() != customer_id:
            return  # brought up (or stopped, or the identity changed) while we looked
        self.context = StorageContext(
            clock=ctx.clock, run_in_thread=ctx.run_in_thread, catalog=self.catalog, customer_id=customer_id,
            placement=self.placement, wrap_key=self._wrap_key, unwrap_key=self._unwrap_key,
            data_blocks=self.data_blocks, segment_size=lambda: settings.get("services/backups/segment-size"),
            segments_in_flight=lambda: settings.get(SEGMENTS_IN_FLIGHT_KEY),
            keep_versions=lambda: settings.get("services/backups/max-copies"),
            store_timeout=lambda: settings.get("services/backups/store-timeout"),
            fetch_timeout=lambda: settings.get("services/backups/fetch-timeout"),
            registry=ctx.automats, on_catalog_changed=self.catalog_changed, on_blocks_damaged=self.sync,
            version_tag=share_scope.version_tag, catalog_backed_up=self._catalog_backed_up, download_journal=journal,
            download_checkpoint=lambda: settings.get("services/backups/download-checkpoint"),
            temp_dir=self.temp_dir, pack_limits=self._pack_limits,
            folder_max_entries=lambda: settings.get(FOLDER_MAX_ENTRIES_KEY))
        self.transfers = TransferManager(self.context, lambda: settings.get("services/backups/max-uploads"),
                                         lambda: settings.get(MAX_DOWNLOADS_KEY),
                                         on_uploads_done=self._schedule_backup)
        self.monitor = BackupMonitor(ctx.clock, ctx.run_in_thread, self.catalog, customer_id,
                                     self.supplier_provider,
                                     request_timeout=settings.get("services/backups/fetch-timeout"),
                                     on_catalog_changed=self.catalog_changed,
                                     backup_current=self.catalog_backup_current,
                                     backup_soon=self._backup_soon,
                                     segments_in_flight=lambda: settings.get(REBUILD_IN_FLIGHT_KEY),
                                     retiring_list_timeout=lambda: settings.get(RETIRING_LIST_TIMEOUT_KEY),
                                     registry=ctx.automats)
        self.backups = CatalogBackup(ctx.clock, ctx.run_in_thread, self.catalog, customer_id, self.placement,
                                     self.data_blocks, self._master_key, self.temp_dir,
                                     segment_size=lambda: settings.get("services/backups/segment-size"),
                                     timeout=lambda: settings.get("services/backups/store-timeout"),
                                     secrets=self._collect_secrets, restore_secrets=self._restore_secrets)
        self.repacker = repack.Repacker(self.context, busy=self._uploading,
                                        below=lambda: settings.get(REPACK_BELOW_KEY))
        self.relayout = Relayout(self.context, self.temp_dir, busy=self._uploading, on_changed=self._relaid_out,
                                 remember_deletes=self._remember_deletes)
        self.monitor.add_state_listener(self._monitor_changed)
        self.keeper = CatalogKeeper(ctx.clock, ctx.call_later, ctx.run_in_thread, self.backups, self.catalog,
                                    lambda: settings.get("services/backups/catalog-backup-delay"),
                                    lambda: settings.get("services/backups/catalog-retry"), self._uploading,
                                    lambda d, what: self._background.track(d, what, quiet=True),
                                    self._backed_up, self._restore_over)
        self.parts.load_pending(json.loads(pending_parts))
        self._unsubscribe_keys = self._identity().keystore.subscribe(self.backup_needed)
        # A new, empty catalog may have a backup waiting on the suppliers: look before backing up over it.
        self.keeper.start(restore_pending=empty and serial is None,
                          covered_at=float(covered_at) if covered_at else None)
        self._background.track(defer.Deferred.fromCoroutine(self._resume_transfers(interrupted)),
                               "resuming transfers")
        self.suppliers_changed()

    async def _resume_transfers(self, downloads: dict) -> None:
        """Go on with what a stop or a crash interrupted; say what was done (log, event, service_info)."""

        def mine(entry: dict) -> bool:
            try:
                self.check_remote_path(entry["remote_path"])
            except BitnodeError:
                return False
            return True

        report = await self.transfers.resume_after_restart(downloads, mine)
        self.transfers_resumed = report["counts"]
        if report["counts"]:
            self.log.info("after the restart: {counts}", counts=report["counts"])
            self.ctx.events.publish("transfers-resumed", {"uploads": report["uploads"],
                                                           "downloads": report["downloads"]})

    @defer.inlineCallbacks
    def _bring_down(self):
        if self.keeper is not None:
            self.keeper.stop()
        if self._unsubscribe_keys is not None:
            self._unsubscribe_keys()
            self._unsubscribe_keys = None
        transfers, monitor, relayout, repacker = self.transfers, self.monitor, self.relayout, self.repacker
        self.transfers = self.monitor = self.backups = self.context = self.relayout = self.repacker = None
        if relayout is not None:
            relayout.stop()
        if repacker is not None:
            repacker.stop()
        if transfers is not None:
            yield transfers.stop()
        if monitor is not None:
            yield monitor.shutdown()

    @defer.inlineCallbacks
    def stop(self):
        """Pause uploads (resumed at the next start), stop the monitor and backups, close the catalog."""
        self._stopping = True
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        yield self._bring_down()
        if self._background:
            yield self._background.wait()
        catalog, self.catalog = self.catalog, None
        if catalog is not None:
            yield self.ctx.run_in_thread(catalog.close)

    def status(self) -> dict:
        """Figures for service_info: transfers, the monitor's last check, the catalog backup."""
        return {
            "ready": self.transfers is not None,
            "transfers": len(self.transfers.transfers()) if self.transfers else 0,
            "backup_monitor": self.monitor.status() if self.monitor else None,
            "catalog_backup": dict(self.last_backup, error=self.keeper.last_backup_error if self.keeper else ""),
            # Catalog changes not on the suppliers yet (waiting for the delay, running, or failed and retried).
            "catalog_backup_pending": self.keeper.pending() if self.keeper else False,
            "catalog_backup_state": self.keeper.status() if self.keeper else {},
            "catalog_restore": self.last_restore,
            "catalog_unreadable": self.catalog_unreadable,
            # What the last start found interrupted (uploads_resumed, downloads_cleaned_up ...).
            "transfers_resumed": self.transfers_resumed,
            "relayout": self.relayout.status() if self.relayout else None,
            # Packs of small files (storage/packs.py), as of the last look after a catalog change.
            "packs": dict(self._packs_seen, packs_reclaimed=self.packs_reclaimed,
                          repack=self.repacker.status() if self.repacker else None),
        }

    def _pack_limits(self) -> tuple[int, int] | None:
        """(largest file packed, largest pack) for a folder upload, or None when packing is off."""
        settings = self.ctx.settings
        if not settings.get(PACK_FILES_KEY):
            return None
        return settings.get(PACK_FILE_MAX_KEY), settings.get(PACK_MAX_BYTES_KEY)

    async def _look_at_packs(self) -> None:
        """After a catalog change: remove packs none of whose files is left (their blocks, then their row), and
        refresh the packs counters of service_info. One look at a time; a change meanwhile asks for another."""
        if self._packs_looking:
            self._packs_again = True
            return
        self._packs_looking = True
        try:
            while True:
                self._packs_again = False
                catalog, context = self.catalog, self.context
                if catalog is None or context is None:
                    return
                found = await self.ctx.run_in_thread(catalog.packs)
                dead = [p["pack_id"] for p in found if p["state"] == "complete" and p["files"] == 0]
                if dead and not self._uploading():
                    outcome = await delete_versions(context, dead)
                    failed = {f["version_id"] for f in outcome["failed"]}
                    for pack_id in dead:
                        if pack_id not in failed:
                            await self.ctx.run_in_thread(catalog.drop_version, pack_id)
                            self.packs_reclaimed += 1
                    if len(failed) < len(dead):
                        self.catalog_changed()
                        continue
                deleted = await self.ctx.run_in_thread(catalog.get_meta, PACKED_DELETED_META, "0")
                self._packs_seen = packs.packs_figures(found, int(deleted or 0))
                below = self.ctx.settings.get(REPACK_BELOW_KEY)
                if self.repacker is not None and repack.repack_candidates(found, below) and not self._uploading():
                    d = self.repacker.start()
                    if d is not None:
                        self._background.track(d, "repacking", quiet=True)
                if not self._packs_again:
                    return
        finally:
            self._packs_looking = False

    def _monitor_changed(self, machine: Any, old: str, new: str, event: str) -> None:
        # A check of the suppliers ended: versions in an old k-of-n are re-laid out now (one pass at a time).
        if new == "READY" and event == "rebuilt" and self.relayout is not None:
            d = self.relayout.start()
            if d is not None:
                self._background.track(d, "re-laying out old versions")

    def _uploading(self) -> bool:
        """An upload is moving blocks now (a paused one, waiting for suppliers, or one waiting only for the
        catalog backup, does not count)."""
        return self.transfers is not None and any(job.state not in (PAUSED, SECURING)
                                                  for job in self.transfers.jobs(UPLOAD))

    def _relaid_out(self) -> None:
        # Old versions are gone from positions that went away: their holders may be released now.
        if self.monitor is not None:
            self.monitor.event("restart")

    def _layout_changed(self, key: str, old: Any, new: Any) -> None:
        if self.monitor is not None:
            self.monitor.event("restart")

    def _on_event(self, event) -> None:
        if event.event_id == "suppliers-changed":
            self.suppliers_changed()
        elif event.event_id == "network-connected" and self.transfers is not None:
            self.transfers.suppliers_changed()  # back online (e.g. through a new router): paused transfers go on now
        elif event.event_id == "my-identity-created" and self.catalog is not None:
            self._background.track(self._bring_up(), "starting storage")
        elif event.event_id == "my-identity-erased":
            self._background.track(self._bring_down(), "stopping storage")

    # --- suppliers ------------------------------------------------------------------------------

    def supplier_provider(self) -> SupplierProvider:
        """The injected provider, else the running service that provides suppliers; Unavailable without either."""
        provider = self.provider if self.provider is not None else self.deps.suppliers
        if provider is None:
            raise Unavailable(NO_SUPPLIERS)
        return provider

    def placement(self) -> Placement:
        """Current positions and their storage servers; Unavailable when nobody is hired."""
        provider = self.supplier_provider()
        positions = tuple(provider.positions())
        if not any(positions):
            raise Unavailable("no suppliers hired yet")
        servers = []
        for supplier_id in positions:
            try:
                servers.append(provider.server(supplier_id) if supplier_id else None)
            except BitnodeError:
                servers.append(None)  # not reachable now: its blocks count as missing for this transfer
        retiring = []
        for holder in getattr(provider, "retiring", list)():
            try:
                retiring.append((int(holder["position"]), holder["supplier_id"], provider.server(holder["supplier_id"])))
            except BitnodeError:
                continue
        return Placement(positions, tuple(servers), tuple(retiring))

    def data_blocks(self, n: int) -> int:
        """k for n positions (:mod:`bitnode.storage.k_of_n`): the setting, or ceil(n/2) when it is 0."""
        return k_of_n.data_blocks(n, self.ctx.settings.get(k_of_n.DATA_BLOCKS_KEY))

    def suppliers_changed(self, *_: Any) -> None:
        """New suppliers: restore an empty catalog, resume paused uploads, check and rebuild, back up."""
        if self.transfers is None:
            return
        if self.keeper.restore_pending:
            self.keeper.restore_now()
            return
        self.transfers.suppliers_changed()
        self.monitor.event("suppliers-changed")
        self._background.track(defer.Deferred.fromCoroutine(self._retry_deletes()), "retrying deletes")
        if self.keeper.dirty:
            self.keeper.schedule(0.0)  # a backup that failed for want of suppliers: try it now

    def sync(self) -> dict:
        """files_sync: restore a catalog still missing, else check and rebuild now, resume paused uploads."""
        self.require_ready()
        self.keeper.restore_now()  # when one is pending
        self.transfers.suppliers_changed()
        self.monitor.event("restart")
        out = {"backup_monitor": self.monitor.state}
        if self.keeper.restore_pending:
            out["catalog_restore"] = dict(self.last_restore, pending=True)
        return out

    # --- keys and paths -------------------------------------------------------------------------------

    def _identity(self) -> IdentityService:
        return self.deps.identity

    def _my_global_id(self) -> str | None:
        """The name my files are stored under: it stays when my identity moves to another identity server."""
        return self._identity().storage_id() if self.deps.is_on("identity") else None

    def require_ready(self) -> None:
        """Unavailable while stopped or while an unreadable catalog is restored, Conflict without an identity."""
        if self.catalog is None:
            raise Unavailable("service_backups is not running")
        if self.transfers is None:
            raise Conflict("this node has no identity yet: call identity_create or identity_recover first")
        if self.catalog_unreadable is not None and self.keeper is not None and self.keeper.restore_pending:
            problem = self.catalog_unreadable
            raise Unavailable(f"{problem['error']}; it was moved to {problem['moved_to']} and the catalog is "
                              "being restored from the suppliers' backup: try again when that is done")

    def master_key_id(self) -> str:
        """The key id files go under by default."""
        self.require_ready()
        return globalid.make_key_id("master", self.context.customer_id)

    def check_remote_path(self, remote_path: str) -> tuple[str, str]:
        """``key_id:path`` split and checked: the key must be one of mine (Forbidden otherwise)."""
        self.require_ready()
        key_id, path = split_remote_path(remote_path)
        owner = str(globalid.KeyId.parse(key_id).owner)
        if owner != self.context.customer_id:
            raise Forbidden(f"{key_id} belongs to {owner}: files under other users' keys are not stored here")
        keystore = self._identity().keystore
        if keystore is None or not keystore.has(key_id):
            raise Forbidden(f"{key_id} is not one of my keys")
        return key_id, path

    def _wrap_key(self, key_id: str, secret: bytes) -> bytes:
        return keys.wrap_key(self._identity().keystore.public_key(key_id), secret)

    def _unwrap_key(self, key_id: str, blob: bytes) -> bytes:
        try:
            private = self._identity().keystore.private_key(key_id)
        except NotFound:
            raise Forbidden(f"the private key {key_id} is not here: this file cannot be decrypted") from None
        return keys.unwrap_key(private, blob)

    def _master_key(self):
        keystore = self._identity().keystore
        if keystore is None:
            raise Conflict("this node has no identity")
        return keystore.private_key(keystore.master_key_id)

    @property
    def upload_transfers(self) -> TransferManager | None:
        """Where the API starts uploads: my TransferManager (a writable share's view has its own)."""
        return self.transfers

    def upload_settled(self) -> defer.Deferred:
        """Fires once a finished upload is visible to whoever should see it: at once for my own files."""
        return defer.succeed(None)

    # --- deleting ---------------------------------------------------------------------------------------

    def delete(self, remote_path: str) -> defer.Deferred:
        """Delete a file or folder: its blocks on the suppliers first, then the catalog rows.

        Fires with ``{"remote_path", "versions", "blocks_deleted", "failed"}``;
        deletes a supplier did not acknowledge are listed and retried later.
        """
        return defer.Deferred.fromCoroutine(self._delete(remote_path))

    async def _delete(self, remote_path: str) -> dict:
        key_id, path = self.check_remote_path(remote_path)
        if not path:
            raise BadRequest("the root folder cannot be deleted")
        self.check_catalog_writable()
        remote = f"{key_id}:{path}"
        versions = await self.ctx.run_in_thread(self.catalog.version_ids_under, key_id, path)
        for job in self.transfers.jobs(UPLOAD):
            if job.remote_path == remote or job.remote_path.startswith(remote + "/"):
                job.event("cancel")
        outcome = await delete_versions(self.context, versions) if versions else {"deleted": 0, "failed": []}
        await self.ctx.run_in_thread(self.catalog.delete, key_id, path)
        failed_versions = sorted({f["version_id"] for f in outcome["failed"]})
        if failed_versions:
            await self._remember_deletes(failed_versions)
        self.catalog_changed()
        return {"remote_path": remote, "versions": len(versions), "blocks_deleted": outcome["deleted"],
                "failed": outcome["failed"]}

    def delete_version(self, version_id: str) -> defer.Deferred:
        """Delete one version: its blocks on the suppliers, then its catalog row (the file stays)."""

        async def run() -> dict:
            self.check_catalog_writable()
            version = await self.ctx.run_in_thread(self.catalog.version, version_id)
            self.check_remote_path(version["remote_path"])
            for job in self.transfers.jobs(UPLOAD):
                if job.version_id == version_id:
                    job.event("cancel")
            outcome = await delete_versions(self.context, [version_id])
            await self.ctx.run_in_thread(self.catalog.drop_version, version_id)
            if outcome["failed"]:
                await self._remember_deletes([version_id])
            self.catalog_changed()
            return {"version_id": version_id, "remote_path": version["remote_path"],
                    "blocks_deleted": outcome["deleted"], "failed": outcome["failed"]}

        return defer.Deferred.fromCoroutine(run())

    async def _remember_deletes(self, version_ids: list[str]) -> None:
        pending = set(json.loads(await self.ctx.run_in_thread(self.catalog.get_meta, PENDING_DELETES_META, "[]")))
        pending.update(version_ids)
        await self.ctx.run_in_thread(self.catalog.set_meta, PENDING_DELETES_META, json.dumps(sorted(pending)))

    async def _retry_deletes(self) -> None:
        pending = json.loads(await self.ctx.run_in_thread(self.catalog.get_meta, PENDING_DELETES_META, "[]"))
        if not pending or self.context is None:
            return
        outcome = await delete_versions(self.context, pending)
        left = sorted({f["version_id"] for f in outcome["failed"]})
        if self.catalog is not None:
            await self.ctx.run_in_thread(self.catalog.set_meta, PENDING_DELETES_META, json.dumps(left))

    # --- the catalog backup ---------------------------------------------------------------------------

    def catalog_changed(self) -> None:
        """Something in the catalog changed: back it up after the configured delay (and tell service_shares)."""
        self.ctx.events.publish("catalog-changed", {})
        self.backup_needed()
        if self.context is not None:
            self._background.track(defer.Deferred.fromCoroutine(self._look_at_packs()), "looking at packs",
                                   quiet=True)

    def backup_needed(self) -> None:
        """Something the catalog backup holds changed (catalog, keys, a part): back up after the delay."""
        if self.keeper is not None:
            self.keeper.changed()

    def check_catalog_writable(self) -> None:
        """Unavailable while the catalog is being restored from the suppliers (nothing may be added then)."""
        self.require_ready()
        self.keeper.check_writable()

    @property
    def last_backup(self) -> dict:
        """The outcome of the last catalog backup that succeeded ({} before the first)."""
        return self.keeper.last_backup if self.keeper is not None else {}

    @property
    def last_restore(self) -> dict:
        """The outcome of the last catalog restore (or why it did not happen, and when it is tried again)."""
        return self.keeper.last_restore if self.keeper is not None else {}

    def catalog_backup_state(self) -> dict:
        """Whether my catalog backup on the suppliers is current, and why not (file_info, service_info)."""
        return self.keeper.status() if self.keeper is not None else {"current": False, "pending": False}

    def _schedule_backup(self) -> None:
        if self.keeper is not None:
            self.keeper.schedule()

    def _backup_soon(self) -> None:
        # Retiring holders wait only for a backup naming their successors: take it now, not after the delay.
        if self.keeper is not None:
            self.keeper.schedule(0.0)

    def _catalog_backed_up(self, on_failure=None) -> defer.Deferred:
        if self.keeper is None:
            return defer.fail(Unavailable("service_backups is not ready"))
        return self.keeper.backed_up(on_failure)

    def backup_catalog(self, force: bool = False) -> defer.Deferred:
        """Back the catalog up to the suppliers now (one backup at a time); fires with the outcome."""
        if self.keeper is None:
            return defer.fail(Conflict("service_backups is not ready: no identity or not running"))
        return self.keeper.backup(force)

    def _backed_up(self, outcome: dict) -> None:
        # Retiring holders that only waited for this backup may go (once the backup lock is let go).
        self.ctx.call_later(0, self._release_retiring)

    def catalog_backup_current(self) -> bool:
        """The last catalog backup succeeded and nothing changed since: a new machine would restore all I know."""
        return self.keeper is not None and self.keeper.current()

    def _release_retiring(self) -> None:
        if self.monitor is not None:
            self.monitor.release_ready()

    def restore_catalog(self, replace: bool = False) -> defer.Deferred:
        """Import the newest catalog backup found on the suppliers; fires with what was restored."""
        if self.keeper is None:
            return defer.fail(Conflict("service_backups is not ready: no identity or not running"))
        return self.keeper.restore(replace)

    def _restore_over(self, outcome: dict | None) -> None:
        """A backup was imported, or the pending restore ended with none: now the suppliers' work can begin."""
        if outcome is not None:
            if self.catalog_unreadable is not None:
                self.catalog_unreadable["restored"] = outcome["serial"]
            self.ctx.events.publish("catalog-changed", {"restored": outcome["serial"]})
            if self.monitor is not None:
                self.monitor.event("restart")
        self.suppliers_changed()

    # --- other users' catalogs (open shares) ------------------------------------------------------------

    def add_other_catalogs(self, source: OtherCatalogs) -> Any:
        """Let ``source`` serve remote paths under other users' keys (service_shares does); returns unregister."""
        self._other_catalogs.append(source)

        def unregister() -> None:
            if source in self._other_catalogs:
                self._other_catalogs.remove(source)

        return unregister

    def catalog_for(self, where: str | None = None) -> Any:
        """Who answers for ``where`` (a remote path or key id): an open share's view, else this service (ready)."""
        self.require_ready()
        for source in list(self._other_catalogs) if where else ():
            view = source.view_for(where)
            if view is not None:
                return view
        return self

    def other_catalog_to_open(self, where: str) -> bool:
        """Whether ``where`` names another user's catalog granted to me that is not open (or not read) yet."""
        for source in list(self._other_catalogs):
            try:
                source.view_for(where)
            except Conflict:
                return True
            except BitnodeError:
                return False  # not granted, refused...: the call itself says so
        return False

    def open_other_catalog(self, where: str) -> defer.Deferred:
        """Open (or read again) the other user's catalog that ``where`` (a remote path or key id) names."""
        key_id = split_remote_path(where)[0] if ":" in where else where
        for source in list(self._other_catalogs):
            return defer.maybeDeferred(source.open, key_id)
        return defer.fail(Unavailable("no service opens other users' catalogs (service_shares is off)"))

    def all_transfer_managers(self) -> list:
        """My TransferManager, then those of the other catalogs (downloads of others' files)."""
        self.require_ready()
        managers = [self.transfers]
        for source in list(self._other_catalogs):
            managers += source.transfer_managers()
        return managers

    def other_views(self) -> list:
        """The read views of other users' catalogs (files_list all_customers)."""
        return [view for source in list(self._other_catalogs) for view in source.ready_views()]

    # --- keys and records in the backup -----------------------------------------------------------------

    def add_backup_part(self, name: str, collect, restore):
        """Keep ``collect()``'s JSON value in every catalog backup; ``restore(value)`` gets it back on a new machine.

        Returns unregister. Call :meth:`backup_needed` when the value changes.
        """
        return self.parts.register(name, collect, restore)

    def _collect_secrets(self) -> dict:
        return key_backup.collect(self._identity().keystore, self.parts.collect())

    def _restore_secrets(self, document: dict) -> dict:
        keystore = self._identity().keystore
        if keystore is None:
            raise Conflict("this node has no identity")
        outcome = key_backup.restore_keys(keystore, document)
        for failed in outcome["failed"]:
            self.log.warn("key {key_id} not restored: {error}", **failed)
        outcome["parts"] = self.parts.restore(document["parts"])
        return {"keys_restored": len(outcome["restored"]), "keys_present": outcome["present"],
                "keys_failed": outcome["failed"], "parts": outcome["parts"]}

    def _save_pending_parts(self, pending: dict) -> None:
        if self.catalog is not None:
            self._background.track(self.ctx.run_in_thread(self.catalog.set_meta, PENDING_PARTS_META, json.dumps(pending)),
                        "keeping restored records")
