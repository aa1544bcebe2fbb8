"""service_supplier: donate disk space to other users' encrypted blocks.

The service owns a :class:`~bitnode.supplier.disk_store.DiskStore` under
``basedir/customers/`` and a :class:`~bitnode.supplier.desk.SupplierDesk`
whose contracts live in ``basedir/metadata/customers.json``; the space it may
promise is the setting ``services/supplier/donated-space``.

Packets: the storage commands (RequestService, CancelService, Data, Retrieve,
ListFiles, DeleteFile, DeleteBackup) reach :meth:`SupplierService.handle_packet`
through the route this service adds to the gateway's packet router
(:mod:`bitnode.transport.router`) while it runs. The
packet's signature was checked by the transport, so its creator is who sent
it; the owner field names whose space is meant, and both must be the same: a
packet acting for someone else is answered ``Fail "forbidden: ..."`` and
counted (``refused["foreign_owner"]``) — except a read of the owner's shared
files by a member the owner listed, and a write of a writer the owner listed
into its own part of the share (:mod:`bitnode.supplier.shared_access`).
The desk's answer goes back with the request's packet id. A RequestService
answer also carries ``used_bytes`` (what the customer stores here now), so the
customer's suppliers_list can show it.

While the service is not running (off, or stopping), every storage command is
answered ``Fail "supplier service is not running"`` — the customer learns at
once instead of waiting for a timeout.

Being found: the service joins the DHT layer :data:`bitnode.storage.wire.SUPPLIERS_LAYER`;
customers pick candidates there with ``random_nodes(SUPPLIERS_LAYER, n)``.
The DHT re-announces its layers on every bootstrap, so a supplier that started
before the DHT knew anyone is still found later.

Customers' suppliers records: a customer hands its signed suppliers record
over in a ``Contacts`` packet; the :class:`~bitnode.supplier.record_keeper.RecordKeeper`
(``self.records``, files under ``basedir/metadata/customer-records/``) checks
it, keeps it and stores it again in the DHT every ``ttl/2`` while the
customer is one of ours, so the record outlives the customer's machine.

``customer_reject`` ends a contract from this side: the customer's data is
deleted, it may not come back, and it is told with a ``CancelService`` packet
whose JSON payload says ``{"rejected": true, "reason": ...}``
(:func:`bitnode.storage.wire.rejection_notice`; the receiving node's customer
side routes such notices to itself).

Limits (settings under ``services/supplier/``, counters in ``service_info``):

- per requester, ``request-rate``/``request-burst`` storage commands and
  ``list-rate``/``list-burst`` listings (:mod:`bitnode.supplier.request_limits`);
  over them: ``Fail "rate limited: ..."``, counted in ``rate_limited``;
- per customer, its quota charged at least ``min-file-charge`` per file and
  ``min-dir-charge`` per directory, at most ``max-files-per-customer`` files,
  only the customer side's path scheme, and ``disk-reserve`` bytes of the disk
  always left free (:mod:`bitnode.supplier.disk_store`; refusals in ``store_refused``);
- a new customer is granted at most ``new-customer-quota`` (:mod:`bitnode.supplier.desk`).

Contracts (:mod:`bitnode.supplier.contracts`): every packet the gateway
accepts from a customer renews its contract; a customer silent (while this
supplier ran and was connected) for ``contract-period`` + ``contract-grace``
seconds is pinged, its suppliers record asked about (:meth:`SupplierService.set_record_check`),
and if neither shows life its data is removed. When a contract ends (cancelled,
rejected, expired) ``customer-contract-ended`` is published with
``{"customer_id", "reason"}``. At start the supplier walks every customer's
space once in the background: it removes temp files of interrupted writes
(never counted in a quota) and checks the block index.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from bitnode import globalid
from bitnode.dht.dht_service import DHTService
from bitnode.errors import BadRequest, BitnodeError, NotFound, Unavailable
from bitnode.main.options import DISK_SPACE, FLOAT, INTEGER, Option
from bitnode.p2p.network_connector import CONNECTED
from bitnode.p2p.network_service import NetworkService
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.storage import wire
from bitnode.supplier import mailbox, mailbox_wire, shared_access
from bitnode.supplier.contracts import DAY, ContractSweeper, ContractTerms
from bitnode.supplier.desk import SupplierDesk
from bitnode.supplier.disk_store import DiskStore, StoreLimits, tree_size
from bitnode.supplier.mailbox import Mailbox, MailboxStore
from bitnode.supplier.record_keeper import RecordKeeper
from bitnode.supplier.request_limits import RateSettings, RequestLimits
from bitnode.transport.commands import Command
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService

PREFIX = "services/supplier/"
DONATED_KEY = PREFIX + "donated-space"
NOT_RUNNING = wire.SUPPLIER_OFF
FOREIGN_OWNER = "forbidden: a packet's owner must be its sender"
NOTICE_TIMEOUT = 10.0
#: The block index (sizes and hashes of the stored blocks) in basedir/metadata.
BLOCK_INDEX_NAME = "supplier-blocks.sqlite"
#: Private messages queued here for offline customers (bitnode.supplier.mailbox), in basedir/metadata.
MAILBOX_NAME = "supplier-mailbox.sqlite"
#: Seconds since a customer's last packet within which it counts as online (for mailbox notices).
RECENTLY_SEEN = 300.0


def _answer(gateway: Any, packet: Any, command: str, payload: bytes) -> defer.Deferred:
    d = gateway.reply(packet, command, payload)
    d.addErrback(lambda f: SupplierService.log.info("could not answer {who}: {err}", who=packet.creator_id,
                                                    err=f.getErrorMessage()))
    return d


def _open(root: str, contracts_file: str, run_in_thread, clock, settings: dict) -> SupplierDesk:
    """Build the store and desk (creates the folder, opens the index, reads the contracts): in a worker thread."""
    store = DiskStore(root, run_in_thread, settings["limits"],
                      index_path=os.path.join(os.path.dirname(contracts_file), BLOCK_INDEX_NAME))
    return SupplierDesk(store, contracts_file, settings["donated"], clock, settings["accepting"], run_in_thread,
                        settings["new_customer_quota"], settings["on_ended"])


class SupplierService(Service):
    """Stores customers' blocks within the donated space; see the module docstring."""

    name = "service_supplier"
    requires = {"gateway": GatewayService, "dht": DHTService, "identity": IdentityService}
    optional = {"network": NetworkService}
    enabled_by_default = False
    description = "Keep other users' encrypted blocks in the disk space you donate"
    options = (
        Option(PREFIX + "new-customer-quota", DISK_SPACE, 1024 ** 3,
               "The most a new customer is granted at first (0: what it asks); a customer asking again gets "
               "up to twice what it really stores.", minimum=0),
        Option(PREFIX + "max-files-per-customer", INTEGER, 500_000, "Files one customer may keep here.",
               minimum=1),
        Option(PREFIX + "min-file-charge", DISK_SPACE, 4096,
               "Bytes each stored file counts for at least against its customer's quota.", minimum=0,
               maximum=1024 ** 2),
        Option(PREFIX + "min-dir-charge", DISK_SPACE, 4096,
               "Bytes each directory of a customer counts for against its quota.", minimum=0, maximum=1024 ** 2),
        Option(PREFIX + "disk-reserve", DISK_SPACE, 1024 ** 3,
               "Free disk space no customer's block may take: stores are refused below it.", minimum=0),
        Option(PREFIX + "group-commit-blocks", INTEGER, 16, "Blocks of one customer that arrive while one of its "
               "writes runs are written and flushed together: at most this many at once.", minimum=1),
        Option(PREFIX + "group-commit-bytes", DISK_SPACE, 64 * 1024 ** 2,
               "... and at most this many bytes of them (memory held by one batch).", minimum=1),
        Option(PREFIX + "store-queue-bytes", DISK_SPACE, 256 * 1024 ** 2,
               "Bytes of one customer's blocks that may wait to be written; a block beyond is refused as busy "
               "(a slow disk or a customer that does not wait for its acks cannot make memory grow).", minimum=1),
        Option(PREFIX + "request-rate", FLOAT, 1000.0,
               "Storage commands per second one peer may send (0: no limit).", minimum=0),
        Option(PREFIX + "request-burst", INTEGER, 2000, "Storage commands one peer may send at once.", minimum=1),
        Option(PREFIX + "list-rate", FLOAT, 1.0, "Block listing pages (ListFiles, 10000 blocks each) per second "
               "one peer may ask for (0: no limit).", minimum=0),
        Option(PREFIX + "list-burst", INTEGER, 60, "Block listing pages one peer may ask for at once.", minimum=1),
        Option(PREFIX + "contract-period", FLOAT, 30 * DAY,
               "Seconds of silence after which a customer's contract expires (any packet from it renews it).",
               minimum=60.0),
        Option(PREFIX + "contract-grace", FLOAT, 30 * DAY,
               "Seconds an expired contract's data is still kept before it is removed.", minimum=0.0),
        Option(PREFIX + "contract-check-interval", FLOAT, 3600.0,
               "Seconds between rounds that count customers' silence.", minimum=1.0, maximum=DAY),
    ) + mailbox.OPTIONS
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.root = ctx.basedir.path("customers")
        self.contracts_file = os.path.join(ctx.basedir.metadata, "customers.json")
        self.desk: SupplierDesk | None = None
        self.accepting = False
        self.refused: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.layer_joined = False
        self.layer_error = ""
        self._busy: set[defer.Deferred] = set()
        self.records: RecordKeeper | None = None
        self.limits = RequestLimits(ctx.clock, self._rate_settings())
        self.sweeper: ContractSweeper | None = None
        self.contracts_ended: Counter[str] = Counter()
        self._record_check: Any = None
        self._gateway: Any = None
        self._route: Any = None
        self.mailbox: Mailbox | None = None
        self._mailbox_route: Any = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Open the store and contracts off the reactor, route packets here, join the suppliers' layer."""
        gateway = self.deps.gateway.require_gateway()
        settings = self.ctx.settings
        wiring = {"donated": lambda: settings.get(DONATED_KEY), "accepting": lambda: self.accepting,
                  "limits": self._store_limits, "new_customer_quota": lambda: settings.get(PREFIX + "new-customer-quota"),
                  "on_ended": self._contract_ended}
        d = self.ctx.run_in_thread(_open, self.root, self.contracts_file, self.ctx.run_in_thread,
                                    self.ctx.clock, wiring)
        d.addCallback(self._opened, gateway)
        return d

    def _opened(self, desk: SupplierDesk, gateway: Any) -> defer.Deferred:
        self.desk = desk
        d = self.ctx.run_in_thread(MailboxStore, os.path.join(self.ctx.basedir.metadata, MAILBOX_NAME))
        return d.addCallback(self._mailbox_opened, desk, gateway)

    def _mailbox_opened(self, store: MailboxStore, desk: SupplierDesk, gateway: Any) -> defer.Deferred:
        self.mailbox = Mailbox(store, self.ctx.run_in_thread, self.ctx.clock.seconds,
                               lambda: mailbox.limits_from(self.ctx.settings.get),
                               lambda user: self._kept_name(user, user, desk), self._notify_recipient)
        self.records = RecordKeeper(self.ctx.clock, self.ctx.run_in_thread,
                                    os.path.join(self.ctx.basedir.metadata, "customer-records"), self._dht,
                                    self._master_key_of, lambda customer_id: customer_id in desk.customers,
                                    renew=self.renew_contract)
        return self.records.start().addCallback(self._ready, desk, gateway)

    def _ready(self, _: Any, desk: SupplierDesk, gateway: Any) -> None:
        self.accepting = True
        self._gateway = gateway
        self.limits.configure(self._rate_settings())
        self.ctx.settings.add_listener(PREFIX, self._settings_changed)
        gateway.add_listener(self._traffic)
        self._route = gateway.router.add(wire.MARKET_COMMANDS, self._on_packet, owner=self.name)
        self._mailbox_route = gateway.router.add(Command.CORRESPONDENT, self._on_mailbox, owner=self.name)
        self.mailbox.start_sweeps(self.ctx.clock)
        self.sweeper = ContractSweeper(self.ctx.clock, desk.book, self._contract_terms, self._can_judge,
                                       self._customer_alive, self._expire)
        self.sweeper.start()
        self._track(defer.Deferred.fromCoroutine(self._join_layer()))
        # Counts every space once (removing temp files of interrupted writes, mending the block index).
        self._track(desk.store.load_all(sorted(desk.customers)))
        if desk.orphans_adopted:
            self._track(desk.book.save())
        self.log.info("supplier: {n} customer(s), {donated} bytes donated", n=len(desk.customers),
                      donated=self.ctx.settings.get(DONATED_KEY))

    # --- settings -----------------------------------------------------------------------

    def _store_limits(self) -> StoreLimits:
        get = self.ctx.settings.get
        return StoreLimits(min_file_charge=get(PREFIX + "min-file-charge"), min_dir_charge=get(PREFIX + "min-dir-charge"),
                           max_files=get(PREFIX + "max-files-per-customer"), reserve_bytes=get(PREFIX + "disk-reserve"),
                           batch_blocks=get(PREFIX + "group-commit-blocks"),
                           batch_bytes=get(PREFIX + "group-commit-bytes"),
                           queue_bytes=get(PREFIX + "store-queue-bytes"))

    def _rate_settings(self) -> RateSettings:
        get = self.ctx.settings.get
        return RateSettings(get(PREFIX + "request-rate"), get(PREFIX + "request-burst"),
                            get(PREFIX + "list-rate"), get(PREFIX + "list-burst"))

    def _contract_terms(self) -> ContractTerms:
        get = self.ctx.settings.get
        return ContractTerms(get(PREFIX + "contract-period"), get(PREFIX + "contract-grace"),
                             get(PREFIX + "contract-check-interval"))

    def _settings_changed(self, key: str, old: Any, new: Any) -> None:
        if key in {PREFIX + name for name in ("request-rate", "request-burst", "list-rate", "list-burst")}:
            self.limits.configure(self._rate_settings())
        if key == PREFIX + "contract-check-interval" and self.sweeper is not None:
            self.sweeper.reschedule()

    # --- contracts ----------------------------------------------------------------------

    def renew_contract(self, customer_id: str, when: float | None = None) -> bool:
        """A sign of life of a customer at ``when`` (e.g. a newer revision of its signed suppliers record).

        False when it is not a customer here (or the service is off).
        """
        desk = self.desk
        return desk is not None and desk.book.renew(customer_id, when)

    def set_record_check(self, check: Any) -> None:
        """``check(customer_id)`` -> Deferred[bool]: is the customer's suppliers record alive (None: no check).

        Asked before a silent customer's data is removed; True keeps it.
        """
        self._record_check = check

    def _traffic(self, peer_id: str, what: str) -> None:
        # Any packet the gateway accepted (its signature checked) is the customer alive.
        if what == "received" and self.desk is not None:
            self.desk.book.renew(peer_id)

    def _can_judge(self) -> bool:
        network = self.deps.network
        if network is None:
            return False
        connector = network.connector
        return connector is not None and connector.state == CONNECTED

    async def _customer_alive(self, customer_id: str) -> bool:
        """The last check before a silent customer's data goes: its record, then a ping (see ContractSweeper)."""
        check = self._record_check
        if check is not None:
            if await defer.maybeDeferred(check, customer_id):
                return True
        elif self._renew_from_record(customer_id):
            return False  # its record is a recent enough sign of life: no need to ask the customer
        ping = await self._ping(customer_id)
        return bool(ping["online"])

    def _renew_from_record(self, customer_id: str) -> bool:
        """Count the customer's kept ``suppliers:`` record as a sign of life; whether that took it off the list.

        The customer re-signs its record at every publish (at least every TTL/2 while it runs), so the
        record's ``signed_at`` is a moment it was alive — if the record still names this supplier (a
        customer that moved its data elsewhere does not keep it here).
        """
        records = getattr(self, "records", None)  # the record keeper (engineer "record"), when there is one
        value = records.latest(customer_id) if records is not None else None
        desk = self.desk
        if not isinstance(value, dict) or desk is None:
            return False
        try:
            signed_at = float(value["signed_at"])
            me = self._gateway.my_id if self._gateway is not None else None
            named = {str(globalid.to_global_id(entry)) for entry in value.get("suppliers", []) if entry}
        except (KeyError, TypeError, ValueError, BitnodeError):
            return False
        if me not in named or not desk.book.renew(customer_id, signed_at):
            return False
        terms = self._contract_terms()
        return desk.customers[customer_id].silent_for < terms.period + terms.grace

    def _expire(self, customer_id: str) -> defer.Deferred:
        desk = self.require_desk()
        return desk.cancel(customer_id, reason="expired")

    def _contract_ended(self, customer_id: str, reason: str) -> None:
        self.contracts_ended[reason] += 1
        if self.mailbox is not None:
            self._track(self.mailbox.drop(customer_id))
        self.ctx.events.publish("customer-contract-ended", {"customer_id": customer_id, "reason": reason})

    async def _join_layer(self) -> None:
        try:
            await self.deps.dht.join_layer(wire.SUPPLIERS_LAYER)
        except BitnodeError as err:
            # The DHT re-announces joined layers when it bootstraps; this only says why not yet.
            self.layer_error = str(err)
            self.log.info("joining the suppliers' DHT layer: {err}", err=err)
            return
        self.layer_joined, self.layer_error = True, ""

    def _dht(self) -> DHTService:
        if not self.deps.is_on("dht"):
            raise Unavailable(f"{DHTService.name} is not running")
        return self.deps.dht

    def _master_key_of(self, customer_id: str) -> defer.Deferred:
        d = self.deps.identity.fetch_identity(customer_id)
        return d.addCallback(lambda identity: identity.rsa_public_key())

    def stop(self) -> defer.Deferred:
        """Refuse new work ("not running"), let the commands being served finish, then close."""
        self.accepting = False
        self.ctx.settings.remove_listener(PREFIX, self._settings_changed)
        if self._gateway is not None:
            self._gateway.remove_listener(self._traffic)
            self._gateway = None
        waits = list(self._busy) + ([self.records.stop()] if self.records is not None else [])
        if self.sweeper is not None:
            waits.append(self.sweeper.stop())
        if self._mailbox_route is not None:
            self._mailbox_route.remove(refusal=NOT_RUNNING)
            self._mailbox_route = None
        d = defer.DeferredList(waits, consumeErrors=True)
        desk = self.desk
        queued = self.mailbox

        def saved(_):
            # The silence counted since the last round, and renewals, are kept for the next start.
            return desk.book.save() if desk is not None else None

        def closed(_):
            closing = queued.close() if queued is not None else defer.succeed(None)
            if desk is not None:
                closing.addCallback(lambda _: self.ctx.run_in_thread(desk.store.close))
            return closing

        def cleared(_):
            self.desk = None
            self.sweeper = None
            self.records = None
            self.mailbox = None
            self.layer_joined = False
            if self._route is not None:
                # The gateway keeps answering "not running" (a customer learns at once, not after a timeout).
                self._route.remove(refusal=NOT_RUNNING)
                self._route = None

        d.addCallback(saved)
        d.addErrback(lambda f: self.log.failure("saving the contracts at stop failed", f))
        return d.addCallback(closed).addCallback(cleared)

    def status(self) -> dict:
        """Facts for service_info."""
        desk = self.desk
        return {
            "accepting": self.accepting,
            "customers": len(desk.customers) if desk else 0,
            "donated_bytes": self.ctx.settings.get(DONATED_KEY),
            "allocated_bytes": desk.allocated_bytes() if desk else 0,
            "dht_layer": wire.SUPPLIERS_LAYER, "layer_joined": self.layer_joined, "layer_error": self.layer_error,
            "served": dict(self.served), "refused": dict(self.refused),
            "store_refused": dict(desk.store.refused) if desk else {},
            "rate_limited": dict(self.limits.limited),
            "temp_files_removed": desk.store.temp_files_removed if desk else 0,
            "blocks_rehashed": desk.store.rehashed if desk else 0,
            "group_commit": dict(desk.store.batches) if desk else {},
            "block_index_problem": desk.store.index_problem if desk else "",
            "orphans_adopted": len(desk.orphans_adopted) if desk else 0,
            "contracts": dict(self.sweeper.counters, ended=dict(self.contracts_ended),
                              writes=desk.book.writes) if desk and self.sweeper else {},
            "customer_records": self.records.status() if self.records is not None else {},
            "mailbox": self.mailbox.status() if self.mailbox is not None else {},
        }

    # --- packets ------------------------------------------------------------------------

    def _on_packet(self, packet: Any, address: Any) -> defer.Deferred:
        gateway = self.deps.gateway.require_gateway()
        if packet.command == Command.CANCEL_SERVICE.value and wire.is_rejection_notice(packet.payload):
            # A supplier's rejection notice: this node's customer side (which routes those first) is off.
            return _answer(gateway, packet, Command.FAIL, wire.NOT_A_CUSTOMER.encode("utf-8"))
        return self.handle_packet(packet, gateway)

    def _on_mailbox(self, packet: Any, address: Any) -> defer.Deferred:
        """A ``Correspondent`` packet: a message queued for a customer, or a customer fetching its queue."""
        gateway = self.deps.gateway.require_gateway()
        box = self.mailbox
        refusal = self._gate(packet, box)
        if refusal or box is None:
            return _answer(gateway, packet, Command.FAIL, refusal.encode("utf-8"))
        d = box.handle(packet.creator_id, packet.payload)
        return self._track(d.addCallback(lambda reply: _answer(gateway, packet, reply[0], reply[1])))

    def _gate(self, packet: Any, part: Any) -> str:
        """The first checks of every packet served (running, per-requester rate): "" or the refusal, counted."""
        if not self.accepting or part is None:
            self.refused["not_running"] += 1
            return NOT_RUNNING
        limited = self.limits.check(packet.creator_id, packet.command)
        if limited:
            self.refused["rate_limited"] += 1
        return limited

    def _notify_recipient(self, customer_id: str) -> None:
        """Messages were queued for a customer: tell it now if it seems online (else it fetches at its start)."""
        online, gateway, desk = self._online_table(), self._gateway, self.desk
        contract = desk.customers.get(customer_id) if desk is not None else None
        heard = contract is not None and self.ctx.clock.seconds() - contract.last_seen < RECENTLY_SEEN
        if gateway is None or not (heard or (online is not None and online.status(customer_id)["online"])):
            return
        d = gateway.request(Command.CORRESPONDENT, customer_id, mailbox_wire.encode_notify(), wait_response=False)
        d.addErrback(lambda f: self.log.info("mailbox notice to {who}: {err}", who=customer_id,
                                             err=f.getErrorMessage()))

    def handle_packet(self, packet: Any, gateway: Any) -> defer.Deferred:
        """Serve one storage command and answer it with the same packet id."""
        desk = self.desk
        refusal = self._gate(packet, desk)
        if refusal or desk is None:
            return _answer(gateway, packet, Command.FAIL, refusal.encode("utf-8"))
        if packet.owner_id != packet.creator_id and not self._same_user(packet.owner_id, packet.creator_id):
            # perhaps the customer's identity moved (a new global id; its space keeps the old name): ask
            d = self.deps.identity.fetch_identity(packet.owner_id, stranger=True)
            d.addErrback(lambda _failure: None)
            return self._track(d.addCallback(lambda _: self._dispatch(packet, gateway, desk)))
        return self._dispatch(packet, gateway, desk)

    def _same_user(self, owner: str, creator: str) -> bool:
        same_user = getattr(self.deps.identity, "same_user", None)
        return same_user is not None and same_user(owner, creator)

    def _account(self, packet: Any, desk: SupplierDesk) -> str | None:
        """The name the sender's space is kept under, or None when the packet acts for someone else.

        A customer whose identity moved to another identity server signs with
        its new global id; its space (and contract) keep the name they were
        made under, and the customer is served under any of its names.
        """
        owner, creator = packet.owner_id, packet.creator_id
        if owner != creator and not self._same_user(owner, creator):
            return None
        return self._kept_name(owner, creator, desk) or owner

    def _kept_name(self, name: str, user: str, desk: SupplierDesk) -> str | None:
        """The name ``user``'s space is kept under (``name`` first, then its other names); None if no customer."""
        names = getattr(self.deps.identity, "names", None)
        for candidate in [name, *(names(user) if names is not None else ())]:
            if candidate in desk.customers:
                return candidate
        return None

    def _dispatch(self, packet: Any, gateway: Any, desk: SupplierDesk) -> defer.Deferred:
        customer_id = self._account(packet, desk)
        if customer_id is None and shared_access.is_shared(packet):
            d = shared_access.serve(desk, packet, self.refused, self.served)  # a member of the owner's share?
            return self._track(d.addCallback(lambda reply: _answer(gateway, packet, reply[0], reply[1])))
        if customer_id is None:
            self.refused["foreign_owner"] += 1
            self.log.warn("refused {command} from {creator} acting for {owner}", command=packet.command,
                          creator=packet.creator_id, owner=packet.owner_id)
            return _answer(gateway, packet, Command.FAIL, FOREIGN_OWNER.encode("utf-8"))
        if customer_id != packet.creator_id:
            self.served["moved_customer"] += 1
        self.served[packet.command] += 1
        if packet.command == Command.CONTACTS.value:
            d = self._keep_record(customer_id, packet.payload)
            return self._track(d.addCallback(lambda reply: _answer(gateway, packet, reply[0], reply[1])))
        d = desk.handle(customer_id, packet.command, packet.payload,
                        prefix_sha256=getattr(packet, "streamed_prefix_sha256", None))
        if packet.command == Command.REQUEST_SERVICE.value:
            d.addCallback(self._with_usage, desk, customer_id)
        d.addCallback(lambda reply: _answer(gateway, packet, reply[0], reply[1]))
        return self._track(d)

    def _keep_record(self, customer_id: str, payload: bytes) -> defer.Deferred:
        """A customer's Contacts packet: keep its signed suppliers record (Ack) or say why not (Fail)."""
        d = defer.maybeDeferred(lambda: self.records.receive(customer_id, wire.parse_contacts_payload(payload)))
        d.addCallback(lambda answer: (Command.ACK.value, wire.encode_json(answer)))

        def refused(failure):
            failure.trap(BitnodeError)
            return Command.FAIL.value, failure.getErrorMessage().encode("utf-8")

        return d.addErrback(refused)

    def _with_usage(self, reply: tuple[str, bytes], desk: SupplierDesk, customer_id: str):
        command, payload = reply
        if command != Command.ACK.value:
            return reply
        answer = wire.decode_json(payload)
        return desk.store.used_bytes(customer_id).addCallback(
            lambda used: (command, wire.encode_json(dict(answer, used_bytes=used))))

    # --- what the API calls -------------------------------------------------------------

    def require_desk(self) -> SupplierDesk:
        """The running desk; Unavailable while the service is off."""
        if self.desk is None or not self.accepting:
            raise Unavailable(f"{self.name} is not running")
        return self.desk

    def customers(self) -> defer.Deferred:
        """Every customer with its contract and the bytes it stores here, sorted by id."""
        return defer.Deferred.fromCoroutine(self._customers())

    async def _customers(self) -> list[dict]:
        desk = self.require_desk()
        online = self._online_table()
        terms = self._contract_terms()
        rows = []
        for customer_id in sorted(desk.customers):
            usage = await desk.store.usage(customer_id)
            if customer_id not in desk.customers:
                continue  # its contract ended while we counted
            rows.append(dict(desk.book.terms(customer_id, terms), customer_id=customer_id, idurl=_idurl(customer_id),
                             used_bytes=usage["charged_bytes"], stored_bytes=usage["bytes"], files=usage["files"],
                             online=online.status(customer_id)["online"] if online is not None else None))
        return rows

    def ping_customers(self) -> defer.Deferred:
        """Ping every customer at once; fires with ``[{"customer_id", "online", "round_trip" | "error"}]``."""
        desk = self.require_desk()
        customers = sorted(desk.customers)
        return defer.gatherResults([defer.Deferred.fromCoroutine(self._ping(c)) for c in customers],
                                   consumeErrors=True)

    async def _ping(self, customer_id: str) -> dict:
        started = self.ctx.clock.seconds()
        try:
            online = self._online_table()
            if online is not None:
                await online.ping(customer_id, NOTICE_TIMEOUT)
            else:
                await self.deps.gateway.require_gateway().ping(customer_id, NOTICE_TIMEOUT)
        except BitnodeError as err:
            return {"customer_id": customer_id, "online": False, "error": str(err)}
        return {"customer_id": customer_id, "online": True,
                "round_trip": round(self.ctx.clock.seconds() - started, 6)}

    def _online_table(self) -> Any:
        network = self.deps.network
        return network.online if network is not None else None

    def reject(self, customer_id: str) -> defer.Deferred:
        """End a customer's contract for good: delete its data, refuse it from now on, tell it."""
        return defer.Deferred.fromCoroutine(self._reject(customer_id))

    async def _reject(self, customer_id: str) -> dict:
        desk = self.require_desk()
        customer_id = str(globalid.to_global_id(customer_id))
        if customer_id not in desk.customers:
            raise NotFound(f"{customer_id} is not a customer of this supplier")
        freed = await desk.cancel(customer_id, reject=True)
        notified, problem = True, ""
        gateway = self.deps.gateway.require_gateway()
        try:
            await gateway.request(Command.CANCEL_SERVICE, customer_id,
                                  wire.rejection_notice("the supplier rejected you (customer_reject)"),
                                  timeout=NOTICE_TIMEOUT)
        except BitnodeError as err:
            notified, problem = False, str(err)
        self.log.info("rejected customer {customer}: {freed} bytes freed, notified: {notified}",
                      customer=customer_id, freed=freed, notified=notified)
        result = {"customer_id": customer_id, "rejected": True, "freed_bytes": freed, "notified": notified}
        if problem:
            result["notify_error"] = problem
        return result

    def space(self) -> defer.Deferred:
        """Donated, promised and used bytes (real disk usage of basedir/customers)."""
        return defer.Deferred.fromCoroutine(self._space())

    async def _space(self) -> dict:
        donated = self.ctx.settings.get(DONATED_KEY)
        desk = self.desk if self.accepting else None
        if desk is None:
            used = await self.ctx.run_in_thread(tree_size, self.root)
            return {"running": False, "donated_bytes": donated, "allocated_bytes": 0, "used_bytes": used,
                    "free_bytes": max(0, donated - used), "customers_num": 0, "customers": []}
        used = await desk.store.total_used()
        customers = await self._customers()
        return {"running": True, "donated_bytes": donated, "allocated_bytes": desk.allocated_bytes(),
                "used_bytes": used, "free_bytes": max(0, donated - used),
                "unallocated_bytes": max(0, donated - desk.allocated_bytes()),
                "customers_num": len(customers), "customers": customers}

    # --- helpers --------------------------------------------------------------------------

    def _track(self, d: defer.Deferred) -> defer.Deferred:
        """Work the service must wait for when stopping (commands being served)."""
        self._busy.add(d)

        def done(result):
            self._busy.discard(d)
            return result

        def failed(failure):
            self.log.failure("supplier work failed", failure)

        d.addBoth(done)
        d.addErrback(failed)
        return d


def _idurl(global_id: str) -> str:
    try:
        return globalid.global_id_to_idurl(global_id)
    except BadRequest:
        return ""
