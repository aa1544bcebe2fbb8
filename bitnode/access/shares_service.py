"""service_shares: shares I create and grant, and shares granted to me that I open and read.

How a share works, end to end (the parts are documented in their modules):

1. **Create** (owner): a new RSA key ``share_<32 hex>$me`` in my key store
   (:func:`~bitnode.storage.share_scope.new_share_alias`). Files uploaded to
   ``share_...$me:path`` are stored on my suppliers like my other files, but
   their per-version keys are wrapped with the share key (service_backups
   wraps with the key of the remote path's key id) and their version ids are
   tagged ``<alias>.`` (:func:`~bitnode.storage.share_scope.version_tag`), so
   all their blocks lie in one named part of my space on each supplier.
2. **Grant** (owner): the share's private key goes to the reader in a
   ``Key`` packet encrypted to the reader's identity key
   (:meth:`KeyExchange.share <bitnode.access.key_exchange.KeyExchange.share>`),
   then every supplier of mine gets the share's readers list (the grant it
   checks) and the share's index (my catalog rows of that share, sealed with
   the share key and signed with my master key)
   (:mod:`bitnode.access.share_publisher`). Whenever files under the share
   change, the index is published again; whenever my suppliers change, both
   go to every supplier again. **Revoke** re-sends the list without the
   reader; **delete** removes the files, the list and the index, then the key.
3. **Open** (reader): a :class:`~bitnode.access.shared_access_coordinator.SharedAccessCoordinator`
   finds the owner's suppliers in the DHT, pings them, reads the index and
   fills a :class:`~bitnode.access.share_view.ShareView`: ``files_list``
   with the share's key id lists the files, ``file_download_start`` of
   ``share_...$owner:path`` downloads them from the owner's suppliers,
   which serve me because the list names me (:mod:`bitnode.supplier.shared_access`).
   A share opened stays open across restarts; **close** forgets the view.

Shares I know and what happened to them are persisted in
``metadata/shares.json`` (:mod:`bitnode.access.shares`); the records (who
each share of mine is granted to) also go into my catalog backup as the
backup part ``shares``, so an identity recovered on a new machine gets them
back with its share keys and goes on publishing. Events on the bus:
``share-created``, ``share-granted``, ``share-revoked``, ``share-received``,
``share-opened``, ``share-closed``, ``share-deleted``, and from the
coordinators ``share-connected`` / ``share-disconnected``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from bitnode import globalid
from bitnode.access import share_index, share_rotation
from bitnode.access.key_exchange_service import KeyExchangeService
from bitnode.access.share_keeper import ShareKeeper
from bitnode.access.share_publisher import SharePublisher
from bitnode.access.share_reader import KeyOutdated, ShareReader
from bitnode.access.share_view import ShareView
from bitnode.access.share_writes import ShareWrites, writes_file
from bitnode.access.shared_access_coordinator import CONNECTED, SharedAccessCoordinator
from bitnode.access.shares import ShareRegistry
from bitnode.crypt import keys
from bitnode.customer.suppliers_record import lookup_suppliers
from bitnode.dht.dht_service import DHTService
from bitnode.errors import (
    BadRequest,
    BitnodeError,
    Conflict,
    Forbidden,
    NotFound,
    Unavailable,
)
from bitnode.main.options import FLOAT, STRING, Option
from bitnode.services.background import BackgroundWork
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.storage import k_of_n, share_scope
from bitnode.storage.backups_service import MAX_DOWNLOADS_KEY, SEGMENTS_IN_FLIGHT_KEY, BackupsService
from bitnode.storage.catalog import Catalog, open_catalog, split_remote_path
from bitnode.storage.ports import OtherCatalogs
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService

PREFIX = "services/shares/"
#: The name of my share records in the catalog backup (see :meth:`BackupsService.add_backup_part`).
BACKUP_PART = "shares"


class SharesService(Service):
    """Creates, grants, opens and reads shares; see the module docstring."""

    name = "service_shares"
    requires = {"key_exchange": KeyExchangeService, "storage": BackupsService, "gateway": GatewayService,
                "identity": IdentityService}
    provides = (OtherCatalogs,)
    optional = {"dht": DHTService}
    description = "Shares: keys under which your files are stored for other users to read (share_* methods)"
    options = (
        Option(PREFIX + "index-delay", FLOAT, 2.0,
               "Seconds after a change of shared files before the share index is published to the suppliers.",
               minimum=0.0, maximum=3600.0),
        Option(PREFIX + "request-timeout", FLOAT, 30.0,
               "Seconds a supplier has to answer one share request (readers list, index, a block for a reader).",
               minimum=0.1, maximum=3600.0),
        Option(PREFIX + "absorb-interval", FLOAT, 300.0,
               "Seconds between two looks at what the writers of my shares uploaded, to take it into my catalog "
               "(share_open of my share looks at once).", minimum=1.0, maximum=86400.0),
        Option(PREFIX + "reshare", STRING, share_index.DEFAULT_RESHARE,
               "Who may pass the keys of my shares on to others with key_share: nobody, writers (read-write "
               "members) or members (everyone granted). Passing a key on never grants access: my suppliers "
               "serve only the members I list.", choices=share_index.RESHARE_RULES),
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.registry: ShareRegistry | None = None
        self.keeper: ShareKeeper | None = None
        self.coordinators: dict[str, SharedAccessCoordinator] = {}
        self.views: dict[str, ShareView] = {}
        self._unsubscribe: Any = None
        self._unregister_part: Any = None
        self._unregister_policy: Any = None
        self._unregister_proposals: Any = None
        self._unregister_catalogs: Any = None
        self._background = BackgroundWork(self.log)
        self._connected: dict[str, bool] = {}

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the shares, listen to the node's news, open again the shares left open, catch up publishing."""
        self.registry = ShareRegistry(os.path.join(self.ctx.basedir.metadata, "shares.json"), self.ctx.clock,
                                      on_change=self._records_changed)
        self._unregister_part = self._storage().add_backup_part(BACKUP_PART, self.registry.shares,
                                                                self._restore_records)
        settings = self.ctx.settings
        publisher = SharePublisher(self.ctx.clock, self.ctx.run_in_thread, self._storage, self._keystore,
                                   lambda: settings.get(PREFIX + "request-timeout"))
        self.keeper = ShareKeeper(self.ctx, lambda: self.registry, publisher, self._storage, self._keystore,
                                  self._own_reader, self._holds,
                                  {"index_delay": lambda: settings.get(PREFIX + "index-delay"),
                                   "absorb_interval": lambda: settings.get(PREFIX + "absorb-interval"),
                                   "reshare": lambda: settings.get(PREFIX + "reshare")},
                                  self._background, note=self._note)
        self._unregister_catalogs = self._storage().add_other_catalogs(self)
        self._unsubscribe = self.ctx.events.subscribe(self._on_event)
        self._unregister_policy = self.deps.key_exchange.set_reshare_policy(share_scope.SHARE_PREFIX,
                                                                            self._check_reshare)
        self._unregister_proposals = self.deps.key_exchange.set_own_key_handler(share_scope.SHARE_PREFIX,
                                                                               self._take_proposal)
        for record in self.registry.shares():
            if record["active"] and not record["mine"] and self._holds(record["key_id"]):
                self._background.track(defer.maybeDeferred(self._open_received, record["key_id"]),
                            f"opening {record['key_id']} again", quiet=True)
        # What a stop or a crash may have left unsent (a grant, a revoke) goes out again.
        self.keeper.start()

    @defer.inlineCallbacks
    def stop(self):
        """Close every open share (their downloads stop), stop publishing, wait for work in flight."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._unregister_part is not None:
            self._unregister_part()
            self._unregister_part = None
        for undo in (self._unregister_catalogs, self._unregister_policy, self._unregister_proposals):
            if undo is not None:
                undo()
        self._unregister_catalogs = self._unregister_policy = self._unregister_proposals = None
        if self.keeper is not None:
            self.keeper.stop()
        views = list(self.views.values())
        for coordinator in list(self.coordinators.values()):
            coordinator.event("close")
        self.coordinators.clear()
        self.views.clear()
        yield defer.DeferredList([view.release() for view in views])
        if self._background:
            yield self._background.wait()
        self.registry = None  # a retry still scheduled finds the service stopped and does nothing

    def status(self) -> dict:
        """Figures for service_info."""
        records = self.registry.shares() if self.registry is not None else []
        views = {key_id: view for key_id, view in self.views.items() if view.writes is not None}
        return {"mine": sum(1 for r in records if r["mine"]), "received": sum(1 for r in records if not r["mine"]),
                "open": {key_id: c.state for key_id, c in self.coordinators.items()},
                **(dict(self.keeper.counters) if self.keeper is not None else {}),
                "entries": {key_id: dict(view.writes.counters) for key_id, view in views.items()}}

    # --- neighbours ------------------------------------------------------------------------------------

    def _keystore(self) -> Any:
        return self.deps.identity.require_keystore()

    def _me(self) -> str:
        return self.deps.identity.require_global_id()

    def _storage(self) -> BackupsService:
        if not self.deps.is_on("storage"):
            raise Unavailable(f"{BackupsService.name} is not running")
        return self.deps.storage

    def _download_journal(self) -> Any:
        """My node's download journal (None while service_backups has no identity): crash cleanup of share downloads."""
        context = self.deps.storage.context if self.deps.is_on("storage") else None
        return context.download_journal if context is not None else None

    def _holds(self, key_id: str) -> bool:
        store = self._keystore()
        return store.has(key_id) and store.get(key_id).is_private

    def _note(self, event: str, key_id: str, detail: str = "") -> None:
        if self.registry is not None:
            self.registry.note(event, key_id, self._me(), detail)

    def _own_reader(self, key_id: str) -> ShareReader:
        """A reader of my own share: it reads my suppliers as me (the writers' entries)."""
        store = self._keystore()
        return ShareReader(self.ctx.clock, self.ctx.run_in_thread, self.deps.gateway.require_gateway, key_id,
                           self._lookup, self.deps.identity.fetch_identity, lambda: store.private_key(key_id),
                           lambda: self.ctx.settings.get(PREFIX + "request-timeout"),
                           previous_keys=lambda: store.previous_private_keys(key_id))

    def require_registry(self) -> ShareRegistry:
        """The loaded registry; Unavailable while the service is off."""
        if self.registry is None:
            raise Unavailable(f"{self.name} is not running")
        return self.registry

    # --- the API: listing and history ------------------------------------------------------------------

    def list(self, only_active: bool = False, include_mine: bool = True, include_granted: bool = True) -> list[dict]:
        """Every share whose key I hold: mine and those granted to me, with their state."""
        registry = self.require_registry()
        store, me = self._keystore(), self._me()
        rows = []
        for info in store.list():
            if not share_scope.is_share_alias(info.alias) or not info.is_private:
                continue
            mine = info.creator == me
            if (mine and not include_mine) or (not mine and not include_granted):
                continue
            row = self._row(info.key_id, info.label, mine, registry.get(info.key_id))
            if only_active and row["state"] != CONNECTED:
                continue
            rows.append(row)
        return rows

    def _row(self, key_id: str, label: str, mine: bool, record: dict | None) -> dict:
        record = record or {}
        active = bool(record.get("active"))
        coordinator = self.coordinators.get(key_id)
        row = {"key_id": key_id, "alias": share_scope.share_alias(key_id), "label": label,
               "owner_id": share_scope.share_owner(key_id), "mine": mine, "active": active,
               "created": record.get("created"), "grantees": list(record.get("grantees", [])) if mine else [],
               "writers": list(record.get("writers", [])) if mine else [], "mode": "owner" if mine else "",
               "granted_by": record.get("granted_by", ""), "proposed_by": record.get("proposed_by", ""),
               "index_serial": record.get("index_serial", 0),
               "state": (CONNECTED if active else "CLOSED") if mine else
               ("PROPOSED" if record.get("proposed_by") == self._me() and not active else "CLOSED"),
               "suppliers": [], "files": None, "error": ""}
        if coordinator is not None and not coordinator.destroyed:
            info = coordinator.info()
            row.update(state=info["state"], suppliers=info["suppliers"], files=info["files"], error=info["error"],
                       index_serial=info["index_serial"])
        view = self.views.get(key_id)
        if view is not None and not mine:
            row.update(mode=view.mode, writers=sorted(w for w, m in view.members.items() if m == "rw"),
                       merge=dict(view.merge_report), entries_problems=dict(view.entries_problems))
        return row

    def history(self) -> list[dict]:
        """What happened to shares on this node, oldest first."""
        return self.require_registry().history()

    def share(self, key_id: str) -> dict:
        """One share as :meth:`list` shows it; NotFound when I do not hold its key."""
        key_id = _share_key(key_id)
        store = self._keystore()
        if not self._holds(key_id):
            raise NotFound(f"share {key_id} is not known here (its private key is not in the key store)")
        return self._row(key_id, store.get(key_id).label, share_scope.share_owner(key_id) == self._me(),
                         self.require_registry().get(key_id))

    # --- the API: an owner's shares ----------------------------------------------------------------------

    def create(self, owner_id: str | None = None, key_size: int | None = None, label: str = "") -> defer.Deferred:
        """A new share owned by me: ``share_<random>$me`` in the key store."""
        return defer.Deferred.fromCoroutine(self._create(owner_id, key_size, label))

    async def _create(self, owner_id: str | None, key_size: int | None, label: str) -> dict:
        registry, store, me = self.require_registry(), self._keystore(), self._me()
        owner = str(globalid.to_global_id(owner_id)) if owner_id else me
        size = key_size if key_size is not None else self.ctx.settings.get("personal/private-key-size")
        if owner != me:
            return await self._propose(owner, int(size), label or "")
        info = await store.create(share_scope.new_share_alias(), int(size), label or "")
        registry.put(info.key_id, owner_id=me, label=info.label, mine=True, active=True)
        registry.note("created", info.key_id, me, f"{info.size}-bit key")
        row = self.share(info.key_id)
        self.ctx.events.publish("share-created", dict(row))
        return row

    async def _propose(self, owner: str, size: int, label: str) -> dict:
        """A share owned by another user, proposed to it: the key goes to the owner, who holds it from then on.

        The files of such a share are stored by the owner's suppliers, so
        nothing can be uploaded into it before the owner agrees by granting
        it back to me (``share_grant``, read-write by default); until then
        it lists as ``PROPOSED`` here and with ``proposed_by`` at the owner's.
        """
        store, me = self._keystore(), self._me()
        keys.check_key_size(size)
        private = await self.ctx.run_in_thread(keys.generate_rsa, size)
        key_id = f"{share_scope.new_share_alias()}${owner}"
        store.add_private(key_id, private.to_pem(), label)
        try:
            await self.deps.key_exchange.require_exchange().share(key_id, owner, include_private=True,
                                                                  timeout=self.ctx.settings.get(PREFIX + "request-timeout"))
        except BaseException:
            store.erase(key_id)  # the owner never got it: nothing was proposed
            raise
        self.registry.put(key_id, owner_id=owner, label=label, mine=False, active=False, proposed_by=me)
        self.registry.note("proposed", key_id, owner, "waiting for the owner to grant it")
        row = self.share(key_id)
        self.ctx.events.publish("share-created", dict(row))
        return row

    def _take_proposal(self, offer: Any, sender: str) -> Any:
        """A user proposes a share owned by me (its ``share_create`` with my id): I keep its key, grant nothing."""
        registry = self.require_registry()
        if not offer.is_private:
            raise Forbidden(f"{offer.key_id} is a key of this node: only a private share key is taken, as a proposal")
        info = self._keystore().add_private(offer.key_id, offer.pem, offer.label)
        registry.put(offer.key_id, owner_id=self._me(), label=offer.label, mine=True, active=False, proposed_by=sender)
        registry.note("proposed", offer.key_id, sender, "share_grant it to let that user upload into it")
        self.ctx.events.publish("share-proposed", {"key_id": offer.key_id, "from": sender, "label": offer.label})
        return info

    def _mine(self, key_id: str) -> str:
        """``key_id`` checked to be a share I own and hold."""
        key_id = _share_key(key_id)
        if share_scope.share_owner(key_id) != self._me():
            raise Forbidden(f"share {key_id} belongs to {share_scope.share_owner(key_id)}: only its owner can do that")
        if not self._holds(key_id):
            raise NotFound(f"share {key_id} is not in the key store")
        return key_id

    def grant(self, key_id: str, trusted_user_id: str, timeout: float = 30.0, mode: str = "rw") -> defer.Deferred:
        """Give ``trusted_user_id`` the share key and tell my suppliers it may read (``ro``), or read and write (``rw``).

        Granting again changes the access of a member; taking write access
        away this way rotates no key (``share_revoke`` does).
        """
        if mode not in share_index.MODES:
            raise BadRequest(f"mode must be one of {', '.join(share_index.MODES)}")
        return defer.Deferred.fromCoroutine(self._grant(key_id, trusted_user_id, timeout, mode))

    async def _grant(self, key_id: str, trusted_user_id: str, timeout: float, mode: str) -> dict:
        registry, key_id = self.require_registry(), self._mine(key_id)
        user = str(globalid.to_global_id(trusted_user_id))
        started = self.ctx.clock.seconds()
        exchange = self.deps.key_exchange.require_exchange()
        shared = await exchange.share(key_id, user, include_private=True, timeout=timeout)
        record = registry.get(key_id) or {}
        grantees = sorted(set(record.get("grantees", [])) | {user})
        writers = sorted((set(record.get("writers", [])) | {user}) if mode == "rw"
                         else set(record.get("writers", [])) - {user})
        registry.put(key_id, owner_id=self._me(), mine=True, grantees=grantees, writers=writers, active=True,
                     proposed_by="")
        registry.note("granted", key_id, user, "read-write" if mode == "rw" else "read-only")
        left = max(1.0, timeout - (self.ctx.clock.seconds() - started))
        suppliers = await self.keeper.publish_now(key_id, readers_changed=True, timeout=left)
        result = {"key_id": key_id, "trusted_user_id": user, "mode": mode, "fingerprint": shared["fingerprint"],
                  "grantees": grantees, "writers": writers, "suppliers": suppliers,
                  "ready": not suppliers.get("error")}
        self.ctx.events.publish("share-granted", dict(result))
        return result

    def revoke(self, key_id: str, user_id: str, timeout: float = 30.0) -> defer.Deferred:
        """Remove a member for good: my suppliers refuse it from now on and the share key is renewed.

        See :mod:`bitnode.access.share_rotation` (the order of the steps, and
        what a revoked member that kept the old key can still read).
        """
        return defer.Deferred.fromCoroutine(self._revoke(key_id, user_id, timeout))

    async def _revoke(self, key_id: str, user_id: str, timeout: float) -> dict:
        registry, key_id = self.require_registry(), self._mine(key_id)
        user = str(globalid.to_global_id(user_id))
        record = registry.require(key_id)
        if user not in record["grantees"]:
            raise NotFound(f"{user} is not a member of share {key_id}")
        self._storage().require_ready()
        started = self.ctx.clock.seconds()
        absorbed = await self.keeper.absorb_now(key_id)  # the writers' files in, while their entries still open
        grantees = [g for g in record["grantees"] if g != user]
        registry.put(key_id, grantees=grantees, writers=[w for w in record["writers"] if w != user])
        store = self._keystore()
        renewed = await self.keeper.lock.run(lambda: defer.Deferred.fromCoroutine(
            share_rotation.renew_key(self.ctx.run_in_thread, store, self._storage(), key_id)))
        registry.note("revoked", key_id, user, f"key renewed ({renewed['fingerprint'][:16]}...), "
                                               f"{renewed['rewrapped']} version key(s) re-wrapped")

        def left() -> float:
            return max(1.0, timeout - (self.ctx.clock.seconds() - started))

        suppliers = await self.keeper.publish_now(key_id, readers_changed=True, force=True, timeout=left())
        made, problems = await share_rotation.envelopes(self.ctx.run_in_thread, store, self.deps.identity.fetch_identity,
                                                        key_id, grantees)
        try:
            stored = await self.keeper.publisher.put_objects(
                made, [share_scope.envelope_path(share_scope.share_alias(key_id), user)], timeout=left())
        except BitnodeError as err:
            stored = {"error": str(err)}
        regranted = await self._regrant(key_id, grantees, left())
        result = {"key_id": key_id, "user_id": user, "grantees": grantees, "suppliers": suppliers,
                  "ready": not suppliers.get("error"), "key_fingerprint": renewed["fingerprint"],
                  "rewrapped": renewed["rewrapped"], "absorbed": absorbed, "envelopes": dict(stored, problems=problems),
                  "regranted": regranted}
        self.ctx.events.publish("share-revoked", dict(result))
        return result

    async def _regrant(self, key_id: str, members: list[str], timeout: float) -> dict[str, str]:
        """The new key to every remaining member now ("sent", or why not: it finds its envelope later)."""
        exchange = self.deps.key_exchange.require_exchange()
        calls = [exchange.share(key_id, member, include_private=True, timeout=timeout) for member in members]
        outcomes = await defer.DeferredList(calls, consumeErrors=True)
        return {member: "sent" if ok else value.getErrorMessage()
                for member, (ok, value) in zip(members, outcomes, strict=True)}

    async def _pick_up_key(self, reader: ShareReader, positions: list[str], wanted: str) -> None:
        """The index is sealed with a key generation I do not hold: take it from my envelope on the suppliers."""
        store, me = self._keystore(), self._me()
        copies = await reader.fetch_envelopes(positions)
        owner = await self.deps.identity.fetch_identity(reader.owner_id)
        problems = []
        for data in copies:
            try:
                offer = await self.ctx.run_in_thread(share_rotation.open_envelope, owner.rsa_public_key(),
                                                     store.private_key(store.master_key_id), data, reader.owner_id,
                                                     me, reader.key_id)
                share_rotation.take_offer(store, offer, wanted)
            except BitnodeError as err:
                problems.append(str(err))
                continue
            self.registry.note("key-renewed", reader.key_id, reader.owner_id, "from its envelope on the suppliers")
            self.ctx.events.publish("share-key-renewed", {"key_id": reader.key_id, "fingerprint": wanted})
            return
        raise KeyOutdated(f"{reader.key_id} was sealed with a new generation of its key and no envelope for this "
                          f"node holds it: {'; '.join(problems) or 'none found'}", wanted)

    def delete(self, key_id: str) -> defer.Deferred:
        """Delete a share: mine with its files and its lists on my suppliers, or one granted to me; then its key."""
        return defer.Deferred.fromCoroutine(self._delete(key_id))

    async def _delete(self, key_id: str) -> dict:
        registry, key_id = self.require_registry(), _share_key(key_id)
        if not self._holds(key_id):
            raise NotFound(f"share {key_id} is not in the key store")
        mine = share_scope.share_owner(key_id) == self._me()
        await self._close_view(key_id)
        result: dict = {"key_id": key_id, "mine": mine, "deleted": True}
        self.keeper.deleting.add(key_id)  # no publish of it from now on; one running finishes before the withdraw
        try:
            if mine:
                result["files"] = await self._delete_files(key_id)
                try:
                    result["suppliers"] = await self.keeper.lock.run(
                        lambda: defer.Deferred.fromCoroutine(self.keeper.publisher.withdraw(key_id)))
                except BitnodeError as err:
                    result["suppliers"] = {"error": str(err)}
            self._keystore().erase(key_id)
            registry.forget(key_id)
        finally:
            self.keeper.deleting.discard(key_id)
        registry.note("deleted", key_id, self._me())
        self.ctx.events.publish("share-deleted", dict(result))
        return result

    async def _delete_files(self, key_id: str) -> dict:
        """Every file and folder under the share key, deleted like ``file_delete`` does."""
        storage = self._storage()
        storage.require_ready()
        rows = await self.ctx.run_in_thread(storage.catalog.list, key_id, "", False)
        outcome = {"items": len(rows), "versions": 0, "failed": []}
        for row in rows:
            done = await storage.delete(row["remote_path"])
            outcome["versions"] += done["versions"]
            outcome["failed"] += done["failed"]
        return outcome

    # --- the API: opening and closing ------------------------------------------------------------------

    def open(self, key_id: str) -> defer.Deferred:
        """Activate a share: mine is ready at once; one granted to me is read from its owner's suppliers."""
        key_id = _share_key(key_id)
        self.require_registry()
        if not self._holds(key_id):
            raise NotFound(f"share {key_id} was not granted to this node (its private key is not here)")
        if share_scope.share_owner(key_id) == self._me():
            return defer.Deferred.fromCoroutine(self._open_mine(key_id))
        return self._open_received(key_id)

    async def _open_mine(self, key_id: str) -> dict:
        """My own share: active at once; my writers' newest files are taken into my catalog first."""
        self.registry.put(key_id, owner_id=self._me(), mine=True, active=True)
        self.registry.note("opened", key_id, self._me())
        absorbed = await self.keeper.absorb_now(key_id)
        self.keeper.schedule_publish()
        row = dict(self.share(key_id), absorbed=absorbed)
        self.ctx.events.publish("share-opened", dict(row))
        return row

    def _open_received(self, key_id: str) -> defer.Deferred:
        owner = share_scope.share_owner(key_id)
        record = self.registry.get(key_id) or {}
        if not record.get("active"):
            self.registry.put(key_id, owner_id=owner, mine=False, active=True)
            self.registry.note("opened", key_id, owner)
            self.ctx.events.publish("share-opened", {"key_id": key_id, "owner_id": owner, "mine": False})
        coordinator = self.coordinators.get(key_id)
        if coordinator is None or coordinator.destroyed:
            coordinator = self._new_coordinator(key_id, owner)
        d = coordinator.wait()
        coordinator.event("open")
        return d.addCallback(lambda _: self.share(key_id))

    def _new_coordinator(self, key_id: str, owner: str) -> SharedAccessCoordinator:
        ctx, settings, gateway = self.ctx, self.ctx.settings, self.deps.gateway
        store = self._keystore()
        reader = ShareReader(ctx.clock, ctx.run_in_thread, gateway.require_gateway, key_id,
                             self._lookup, self.deps.identity.fetch_identity, lambda: store.private_key(key_id),
                             lambda: settings.get(PREFIX + "request-timeout"),
                             previous_keys=lambda: store.previous_private_keys(key_id))
        view = ShareView(ctx.clock, ctx.run_in_thread, reader, registry=ctx.automats,
                         segments_in_flight=lambda: settings.get(SEGMENTS_IN_FLIGHT_KEY),
                         fetch_timeout=lambda: settings.get(PREFIX + "request-timeout"),
                         max_downloads=lambda: settings.get(MAX_DOWNLOADS_KEY),
                         download_journal=self._download_journal(),
                         me=self._me(), open_writes=self._open_writes, pick_up_key=self._pick_up_key)
        coordinator = SharedAccessCoordinator(ctx.clock, key_id, owner, view, self._coordinator_news,
                                              registry=ctx.automats)
        self.coordinators[key_id] = coordinator
        self.views[key_id] = view
        return coordinator

    async def _open_writes(self, view: ShareView, published: dict | None = None) -> ShareWrites:
        """My part of a share I may write into: my catalog of it, my uploads (interrupted ones resume).

        ``published`` is my entries as the owner's suppliers hold them: an
        empty catalog of my part (a new machine) starts from them, so my next
        entries do not drop what I wrote before.
        """
        ctx, settings, store = self.ctx, self.ctx.settings, self._keystore()
        path = writes_file(ctx.basedir.metadata, view.key_id)
        catalog = await ctx.run_in_thread(_open_writes_catalog, path, ctx.clock.seconds(), published)
        key_id = view.key_id
        options = {
            "segment_size": lambda: settings.get("services/backups/segment-size"),
            "segments_in_flight": lambda: settings.get("services/backups/segments-in-flight"),
            "keep_versions": lambda: settings.get("services/backups/max-copies"),
            "store_timeout": lambda: settings.get("services/backups/store-timeout"),
            "fetch_timeout": lambda: settings.get(PREFIX + "request-timeout"),
            "max_uploads": lambda: settings.get("services/backups/max-uploads"),
            "data_blocks": lambda n: k_of_n.data_blocks(n, k_of_n.configured_data_blocks(settings)),
        }
        writes = ShareWrites(ctx.clock, ctx.run_in_thread, key_id, self._me(), catalog, view.placement,
                             lambda: view.reader.keys(), lambda: store.private_key(store.master_key_id), options,
                             registry=ctx.automats, on_changed=view.writes_changed)
        self._background.track(defer.Deferred.fromCoroutine(writes.transfers.resume_interrupted()),
                               f"resuming uploads into {key_id}", quiet=True)
        return writes

    def _lookup(self, owner_id: str) -> defer.Deferred:
        return lookup_suppliers(self.deps.dht, self.deps.identity, owner_id)

    def _coordinator_news(self, event_id: str, data: dict) -> None:
        """A coordinator connected or not: tell the bus, note changes (not every refresh) in the history."""
        key_id = data["key_id"]
        connected = event_id == "share-connected"
        if self._connected.get(key_id) != connected and self.registry is not None:
            detail = f"index {data.get('index_serial')}, {data.get('files')} file(s)" if connected else data["error"]
            self.registry.note("connected" if connected else "disconnected", key_id, data["owner_id"], detail)
        self._connected[key_id] = connected
        self.ctx.events.publish(event_id, dict(data))

    def close(self, key_id: str) -> defer.Deferred:
        """Deactivate a share: one granted to me is disconnected and its files are no longer visible."""
        key_id = _share_key(key_id)
        registry = self.require_registry()
        if not self._holds(key_id):
            raise NotFound(f"share {key_id} is not known here")

        async def run() -> dict:
            await self._close_view(key_id)
            registry.put(key_id, owner_id=share_scope.share_owner(key_id),
                         mine=share_scope.share_owner(key_id) == self._me(), active=False)
            registry.note("closed", key_id, self._me())
            row = self.share(key_id)
            self.ctx.events.publish("share-closed", dict(row))
            return row

        return defer.Deferred.fromCoroutine(run())

    async def _close_view(self, key_id: str) -> None:
        coordinator = self.coordinators.pop(key_id, None)
        view = self.views.pop(key_id, None)
        self._connected.pop(key_id, None)
        if coordinator is not None and not coordinator.destroyed:
            coordinator.event("close")
        if view is not None:
            await view.release()

    def transfer_managers(self) -> list:
        """The TransferManagers of the open views (downloads of others' files, my uploads into them)."""
        return [manager for view in self.views.values() for manager in view.transfer_managers()]

    def ready_views(self) -> list[ShareView]:
        """The open views of other users' shares whose catalog has been read, by key id."""
        return [self.views[key_id] for key_id in sorted(self.views)
                if self.views[key_id].loaded and self.views[key_id].refusal is None]

    def view_for(self, where: str) -> ShareView | None:
        """The open view of another user's share named by a remote path or key id, else None.

        Forbidden when it names a share of someone else that was not granted
        to me, Conflict when it was granted but is not open (or not read yet).
        """
        key_id = _key_of(where)
        if key_id is None or self.registry is None:
            return None
        if share_scope.share_owner(key_id) == self._me():
            return None
        view = self.views.get(key_id)
        if view is None:
            if not self._holds(key_id):
                raise Forbidden(f"share {key_id} was not granted to this node")
            raise Conflict(f"share {key_id} is not open: call share_open first")
        view.require_ready()
        return view

    # --- passing a received share key on (key_share) ------------------------------------------------------

    def _check_reshare(self, key_id: str, recipient: str, include_private: bool) -> None:
        """The owner's rule for passing its share key on, from its index (key_share asks before sending).

        The public half goes to anyone (it opens nothing). The private key
        goes only when the owner's rule (``reshare`` in its index: the
        owner's ``services/shares/reshare``) lets a member of my access pass
        it on; I must have read the index (``share_open``) to know the rule.
        Either way the recipient gets a key, not access: the owner's suppliers
        serve only the members the owner listed.
        """
        owner = share_scope.share_owner(key_id)
        if not include_private or recipient == owner:  # the owner's own key back to it (a proposal): always
            return
        view = self.views.get(key_id)
        if view is None or not view.reshare:
            raise Forbidden(f"open the share first (share_open): {owner}'s rule for passing on the key of "
                            f"{key_id} is in its index")
        allowed = (view.reshare == "members" and view.mode in share_index.MODES) or \
                  (view.reshare == "writers" and view.mode == "rw")
        if not allowed:
            who = {"nobody": "nobody but itself", "writers": "only its read-write members",
                   "members": "its members"}[view.reshare]
            raise Forbidden(f"{owner} lets {who} pass on the key of {key_id}; this node is "
                            f"{'a read-only member' if view.mode == 'ro' else 'not a member'}")

    # --- news from the node -------------------------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        if event.event_id == "key-received":
            self._key_received(event.data or {})
        elif event.event_id == "catalog-changed":
            self.keeper.schedule_publish()
        elif event.event_id == "suppliers-changed":
            self.keeper.schedule_publish(force=True)

    def _records_changed(self) -> None:
        """A share record changed: it goes into the next catalog backup (when service_backups runs)."""
        if self.deps.is_on("storage"):
            self.deps.storage.backup_needed()

    def _restore_records(self, records: list) -> None:
        """My share records from a catalog backup (a new machine): the ones not known here are taken.

        Nothing is published here: the catalog they index is imported after
        the records, and its ``catalog-changed`` (then ``suppliers-changed``)
        brings the publishing up to date.
        """
        registry = self.require_registry()
        for key_id in registry.restore(records):
            registry.note("restored", key_id, self._me(), "from the catalog backup")

    def _key_received(self, data: dict) -> None:
        key_id = data.get("key_id", "")
        if not share_scope.is_share_key(key_id) or not data.get("is_private") or self.registry is None:
            return
        if share_scope.share_owner(key_id) == self._me():
            return  # a share of mine proposed to me: _take_proposal recorded it
        sender = data.get("from", "")
        owner = share_scope.share_owner(key_id)
        self.registry.put(key_id, owner_id=owner, label=data.get("label", ""), mine=False, granted_by=sender,
                          **({"proposed_by": ""} if sender == owner else {}))  # the owner granted what I proposed
        self.registry.note("received", key_id, sender)
        self.ctx.events.publish("share-received", {"key_id": key_id, "from": sender, "label": data.get("label", "")})


def _share_key(key_id: str) -> str:
    """A share key id, checked (BadRequest otherwise)."""
    if not isinstance(key_id, str) or not share_scope.is_share_key(key_id):
        raise BadRequest(f"{key_id!r} is not a share key id (share_<id>$owner@host)")
    return str(globalid.KeyId.parse(key_id))


def _key_of(where: str) -> str | None:
    """The share key id a remote path (``key_id:path``) or key id names, else None."""
    if not isinstance(where, str):
        return None
    try:
        key_id = split_remote_path(where)[0] if ":" in where else where
    except BadRequest:
        return None
    return key_id if share_scope.is_share_key(key_id) else None


def _open_writes_catalog(path: str, now: float, published: dict | None = None) -> Catalog:
    """My catalog of one share I write into (its folder made; one that cannot be read is set aside); an empty one
    takes my published entries. Worker thread."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    catalog = open_catalog(path, now)[0]
    if published is not None and catalog.is_empty():
        catalog.import_(json.dumps(published["catalog"]).encode("utf-8"))
    return catalog
