"""A writer's own part of someone else's share: its uploads into the owner's space and its published entries.

A member granted read-write uploads into the share with the **owner's**
suppliers (its packets name the owner's space, signed by itself; the
suppliers let it write only its own part, :mod:`bitnode.supplier.shared_access`).
What it wrote must outlive a restart and be seen by the others, so a writer keeps:

- a catalog of its own, one sqlite file per share
  (``metadata/share-writes/<alias>-<owner tag>.sqlite``), holding only its
  versions of that share: the upload jobs record into it exactly as into a
  node's own catalog (so an interrupted upload resumes from its last
  acknowledged segment, and old versions are pruned after
  ``services/backups/max-copies``), and nothing of it mixes with the writer's
  own catalog, its backup or its backup_monitor;
- its **entries** on every supplier of the owner at ``<alias>.index/w<tag>``:
  the complete versions of that catalog, sealed with the share key and signed
  with its master key (:func:`bitnode.access.share_index.seal_index`),
  published again after every change. Readers merge them into their view
  (:mod:`bitnode.access.share_merge`); the owner, when online, takes them
  into its own catalog (:mod:`bitnode.access.share_absorb`), where its
  backup_monitor looks after them like its own files.

Version ids start with ``<alias>.w<tag>-`` (the writer's part); the version
keys are wrapped with the share's current public key, so every member opens
them. Entries carry a serial that only grows (at least the time in
milliseconds), so a writer whose local catalog was lost still publishes over
its older entries.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bitnode.access import share_index
from bitnode.access.share_publisher import to_every_supplier
from bitnode.access.share_rotation import unwrap_with_any
from bitnode.crypt import keys
from bitnode.errors import BitnodeError, Forbidden, NotFound, Unavailable
from bitnode.storage import share_scope
from bitnode.storage.catalog import Catalog, split_remote_path
from bitnode.storage.job_context import StorageContext, delete_versions
from bitnode.storage.transfers import TransferManager

SERIAL_META = "entries_serial"
#: Seconds before entries that reached no supplier are sent again.
PUBLISH_RETRY = 60.0


def writes_file(metadata_dir: str, key_id: str) -> str:
    """Where a writer keeps its own catalog of one share."""
    alias, owner = share_scope.share_alias(key_id), share_scope.share_owner(key_id)
    return os.path.join(metadata_dir, "share-writes", f"{alias}-{share_scope.member_tag(owner)}.sqlite")


class ShareWrites:
    """My uploads into share ``key_id`` of another user, and my entries there; see the module docstring.

    :param placement: the owner's positions served to me (the share view's ``placement``).
    :param share_keys: the generations of the share key held here, current first.
    :param master_key: my master private key (signs the entries).
    :param options: ``{"segment_size", "segments_in_flight", "keep_versions", "store_timeout",
        "fetch_timeout", "max_uploads", "data_blocks"}``, each a callable.
    :param on_changed: called after my entries changed (the view merges them again).
    """

    log = Logger()

    def __init__(self, clock: Any, run_in_thread: Callable[..., defer.Deferred], key_id: str, me: str,
                 catalog: Catalog, placement: Callable[[], Any], share_keys: Callable[[], list],
                 master_key: Callable[[], Any], options: dict, registry: Any = None,
                 on_changed: Callable[[], None] = lambda: None):
        self.clock = clock
        self.run_in_thread = run_in_thread
        self.key_id = key_id
        self.me = me
        self.owner_id = share_scope.share_owner(key_id)
        self.alias = share_scope.share_alias(key_id)
        self.catalog = catalog
        self.placement = placement
        self.share_keys = share_keys
        self.master_key = master_key
        self.on_changed = on_changed
        self.context = StorageContext(
            clock=clock, run_in_thread=run_in_thread, catalog=catalog, customer_id=self.owner_id,
            placement=placement, wrap_key=self._wrap_key, unwrap_key=self._unwrap_key,
            data_blocks=options["data_blocks"], segment_size=options["segment_size"],
            segments_in_flight=options["segments_in_flight"], keep_versions=options["keep_versions"],
            store_timeout=options["store_timeout"], fetch_timeout=options["fetch_timeout"], registry=registry,
            on_catalog_changed=self.changed,
            version_tag=lambda key_id: share_scope.writer_version_tag(key_id, me))
        self.transfers = TransferManager(self.context, options["max_uploads"], lambda: 1)
        self.counters = {"published": 0, "publish_failed": 0}
        self.last_error: BitnodeError | None = None
        self._dirty = False
        self._running: defer.Deferred | None = None
        self._waiters: list[defer.Deferred] = []
        self._retry: Any = None
        self._closed = False

    # --- keys -----------------------------------------------------------------------------

    def _wrap_key(self, key_id: str, secret: bytes) -> bytes:
        generations = self.share_keys()
        if not generations:
            raise Forbidden(f"the private key of {self.key_id} is not here: nothing can be uploaded into it")
        return keys.wrap_key(generations[0].public_key(), secret)

    def _unwrap_key(self, key_id: str, blob: bytes) -> bytes:
        return unwrap_with_any(self.share_keys(), blob, self.key_id)

    # --- what I wrote ---------------------------------------------------------------------------

    def subset(self) -> dict:
        """My complete versions (and folders, links) of the share: what my entries hold. Worker thread."""
        return share_index.share_subset(self.catalog.export(), self.key_id)

    def opened(self) -> dict:
        """My entries as :func:`share_index.open_index` would give them (for the merge). Worker thread."""
        return {"serial": 0, "created": 0.0, "catalog": self.subset(), "writer": self.me, "members": {},
                "reshare": "", "removed": []}

    async def delete(self, remote_path: str) -> dict:
        """Delete my versions of a file (or of every file under a folder) from the owner's suppliers, then my rows.

        Other members' versions of the same paths stay: a writer removes only
        what it wrote (the owner removes anything, in its own catalog).
        """
        key_id, path = split_remote_path(remote_path)
        if not path:
            raise Forbidden("delete a named file or folder of the share, not its root")
        try:
            version_ids = await self.run_in_thread(self.catalog.version_ids_under, key_id, path)
        except NotFound:
            raise NotFound(f"{remote_path} holds nothing uploaded by this node: a writer deletes only its own "
                           "versions") from None
        outcome = await delete_versions(self.context, version_ids)
        if outcome["failed"]:
            raise Unavailable(f"not every supplier deleted the versions of {remote_path}: {outcome['failed']}")
        await self.run_in_thread(self.catalog.delete, key_id, path)
        self.changed()
        await self.settled()
        return {"remote_path": f"{key_id}:{path}", "versions": len(version_ids), "blocks_deleted": outcome["deleted"],
                "failed": []}

    # --- publishing my entries ---------------------------------------------------------------------

    def changed(self) -> None:
        """My catalog changed: publish my entries (now, or right after the publish running)."""
        if self._closed:
            return
        self._dirty = True
        self.on_changed()
        if self._running is None:
            self._running = defer.Deferred.fromCoroutine(self._publish_while_dirty())

    def settled(self) -> defer.Deferred:
        """Fires once what was written so far is published; fails with why it could not be."""
        if self._running is None:
            return defer.fail(self.last_error) if self.last_error is not None else defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        return d

    async def _publish_while_dirty(self) -> None:
        error: BitnodeError | None = None
        try:
            while self._dirty and not self._closed:
                self._dirty = False
                try:
                    await self.publish()
                    error = None
                except BitnodeError as err:
                    error = err
        finally:
            self._running = None
        self.last_error = error
        if error is not None:
            self.counters["publish_failed"] += 1
            self.log.info("entries of {key_id} not published: {err}", key_id=self.key_id, err=error)
            if self._retry is None and not self._closed:
                self._retry = self.clock.callLater(PUBLISH_RETRY, self._retry_publish)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.errback(error) if error is not None else d.callback(None)

    def _retry_publish(self) -> None:
        self._retry = None
        if self.last_error is not None:
            self.changed()

    async def publish(self) -> dict:
        """Seal my entries and store them on every supplier of the owner; Unavailable when none took them."""
        subset = await self.run_in_thread(self.subset)
        last = int(await self.run_in_thread(self.catalog.get_meta, SERIAL_META, "0") or 0)
        serial = max(last + 1, int(self.clock.seconds() * 1000))
        generations = self.share_keys()
        if not generations:
            raise Forbidden(f"the private key of {self.key_id} is not here")
        sealed = await self.run_in_thread(share_index.seal_index, self.master_key(), generations[0].public_key(),
                                          self.owner_id, self.key_id, serial, self.clock.seconds(), subset, self.me)
        placement = self.placement()
        path = share_scope.entries_path(self.alias, self.me)
        stored, errors, failures = await to_every_supplier(
            self.clock, placement, self.context.store_timeout(),
            lambda server: server.store_block(self.owner_id, path, sealed))
        if not stored:
            refusal = next((f for f in failures if f.check(Forbidden)), None)
            if refusal is not None:
                raise Forbidden(f"{self.owner_id}'s suppliers refuse my entries of {self.key_id}: "
                                f"{refusal.getErrorMessage()}")
            raise Unavailable(f"none of {self.owner_id}'s suppliers took my entries of {self.key_id}: "
                              + "; ".join(f"{e['supplier']}: {e['error']}" for e in errors))
        await self.run_in_thread(self.catalog.set_meta, SERIAL_META, str(serial))
        self.counters["published"] += 1
        return {"serial": serial, "stored": stored, "errors": errors}

    # --- the end -------------------------------------------------------------------------------------

    def release(self) -> defer.Deferred:
        """Stop the uploads (they resume at the next open) and close my catalog of the share."""
        self._closed = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        d = self.transfers.stop()
        running = self._running
        if running is not None:
            d.addCallback(lambda _: self.settled().addErrback(lambda _f: None))
        d.addCallback(lambda _: self.run_in_thread(self.catalog.close))
        return d

