"""service_customer: hire, keep and replace the suppliers that hold my blocks.

The service wires the market machines of :mod:`bitnode.customer` to the node:

- **supplier_finder** looks for candidates in the suppliers' DHT layer
  (:data:`~bitnode.storage.wire.SUPPLIERS_LAYER`) with
  ``random_nodes``; a contact carries its user's IDURL as ``user``, which is
  turned into a global id (contacts without one, and this node, are skipped);
- **supplier_connector** (one per supplier) talks through the gateway:
  RequestService / CancelService are storage packets sent by a
  :class:`~bitnode.customer.remote_store.RemoteStorageServer`, the ping is an
  Identity ping through service_network's online-status table;
- **fire_hire** keeps ``services/customer/suppliers-number`` suppliers. A
  change of that setting applies at once (fire_hire ``restart``: it hires the
  missing ones or fires the last positions); ``dead-after``, ``ping-interval``
  and ``check-interval`` say when an offline supplier is fired and how often
  suppliers are checked.

Quota rule: every supplier holds one block of every segment, and a block is
about ``segment / k`` bytes (k of ``n`` = suppliers-number, by the one k-of-n
policy :mod:`bitnode.storage.k_of_n`). So
to keep ``needed-space`` bytes of files, each supplier is asked for
``ceil(needed-space / k)`` plus 1/16 of that for block headers and the
catalog backups. A change of needed-space or suppliers-number asks the
connected suppliers again with the new quota.

The roster (positions: position i holds block i) is ``metadata/suppliers.json``.
After every change of it the event ``suppliers-changed`` is published (with
the positions, the reason and the revision), and my signed suppliers record
is written (:mod:`bitnode.customer.suppliers_record`: signed with my master
key, living ``suppliers-record-ttl`` seconds, handed to each supplier, who
keeps it alive in the DHT while it holds my data); it is written again every
``ttl/2`` and when that setting changes. A node that starts with no roster
file at all (a recovered identity on a new machine) first reads that record
back — until the DHT answers: without DHT peers it waits and asks again, it
never hires strangers in place of suppliers it could not look for — and
takes those positions, so the catalog backup on those suppliers can be found
again; it also takes the record's k-of-n as its ``suppliers-number`` (and
``services/backups/data-blocks`` when ceil(n/2) is not k), so none of those
suppliers is fired as "not needed".

Storage (``service_backups``) gets its suppliers from this service through
the port it declares, :class:`~bitnode.storage.ports.SupplierProvider`
(``provides``): ``positions()``, ``server(supplier_id)`` (a
RemoteStorageServer over gateway requests; block commands wait
``block-timeout`` seconds, contract commands ``request-timeout``) and
``settled()`` (fire_hire is done hiring and firing). It hears of changes
through the ``suppliers-changed`` event, so the provider has no separate
subscription.

Packets: a supplier's rejection notice (a ``CancelService`` carrying
``{"rejected": true}``) is routed here by the gateway's packet router while the
service runs; storage commands reaching a node that serves no supplier are
answered "supplier service is not running" (:data:`bitnode.storage.wire.SUPPLIER_OFF`).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from bitnode import globalid
from bitnode.customer.fire_hire import DEFAULT_DEAD_SPREAD, FireHire
from bitnode.customer.remote_store import RemoteStorageServer
from bitnode.customer.roster import SupplierRoster
from bitnode.customer.supplier_connector import SupplierConnector
from bitnode.customer.supplier_finder import DEFAULT_HIRE_CHOICES, SupplierFinder
from bitnode.customer.suppliers_record import DEFAULT_TTL, TTL_KEY, RecordPublisher, find_record
from bitnode.dht.dht_service import DHTService
from bitnode.errors import BadRequest, BitnodeError, Conflict, Forbidden, NotFound, Unavailable
from bitnode.main.options import FLOAT, INTEGER, Option
from bitnode.p2p.network_service import NetworkService
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.storage import k_of_n, wire
from bitnode.storage.ports import SupplierProvider
from bitnode.transport.commands import Command
from bitnode.transport.gateway_service import GatewayService
from bitnode.transport.packet_out import PeerRefused
from bitnode.userid.id_service import IdentityService

PREFIX = "services/customer/"
WANTED_KEY = PREFIX + "suppliers-number"
NEEDED_KEY = PREFIX + "needed-space"
#: fire_hire is idle in these (storage waits for them before it checks the suppliers).
SETTLED_STATES = ("READY", "WAITING", "CLOSED")
#: Commands about the contract (answered at once); the others move blocks.
CONTRACT_COMMANDS = frozenset({Command.REQUEST_SERVICE.value, Command.CANCEL_SERVICE.value})


class CustomerService(Service):
    """Hires and keeps this node's suppliers; see the module docstring."""

    name = "service_customer"
    requires = {"gateway": GatewayService, "dht": DHTService, "network": NetworkService, "identity": IdentityService}
    provides = (SupplierProvider,)
    enabled_by_default = False
    description = "Hire suppliers for your encrypted blocks, replace dead ones (fire_hire)"
    options = (
        Option(PREFIX + "dead-after", FLOAT, 600.0,
               "Seconds a hired supplier may stay offline before it is fired and replaced.",
               minimum=0.1, maximum=30 * 86400.0),
        Option(PREFIX + "ping-interval", FLOAT, 60.0,
               "Seconds between checks that a hired supplier answers (an offline one is retried twice as often).",
               minimum=0.05, maximum=86400.0, restart_needed=True),
        Option(PREFIX + "check-interval", FLOAT, 60.0,
               "Seconds between fire_hire's reviews of the suppliers (and new tries after a shortage).",
               minimum=0.05, maximum=86400.0, restart_needed=True),
        Option(PREFIX + "dead-after-spread", FLOAT, DEFAULT_DEAD_SPREAD,
               "A silent supplier is fired after dead-after plus a random share of it, up to this many times "
               "dead-after (drawn once per silence), so the customers of a supplier that died do not all replace "
               "it and rebuild at the same moment (0: exactly dead-after).",
               minimum=0.0, maximum=10.0),
        Option(PREFIX + "hire-choices", INTEGER, DEFAULT_HIRE_CHOICES,
               "Suppliers asked at once when one is hired; the one serving the fewest customers is kept, the "
               "others' contracts are cancelled (1: the first random supplier that accepts).",
               minimum=1, maximum=8, restart_needed=True),
        Option(PREFIX + "request-timeout", FLOAT, 30.0,
               "Seconds a supplier has to answer RequestService, CancelService or a ping.",
               minimum=0.1, maximum=600.0),
        Option(PREFIX + "block-timeout", FLOAT, 120.0,
               "Seconds a supplier has to answer Data, Retrieve, ListFiles, DeleteFile or DeleteBackup.",
               minimum=0.1, maximum=3600.0),
        Option(PREFIX + "pause-tolerance", FLOAT, 30.0,
               "Seconds this process may have stood still (a late tick, or the wall clock jumping against the "
               "monotonic one) before fire_hire treats it as a pause and asks every supplier again before "
               "judging anyone.", minimum=0.05, maximum=86400.0),
        Option(TTL_KEY, INTEGER, DEFAULT_TTL,
               "Lifetime in seconds written into my signed suppliers record; I and my suppliers store it "
               "again at half of it, so it outlives my machine.", minimum=10, maximum=30 * 86400),
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.roster_file = os.path.join(ctx.basedir.metadata, "suppliers.json")
        self.roster: SupplierRoster | None = None
        self.finder: SupplierFinder | None = None
        self.fire_hire: FireHire | None = None
        self._route: Any = None
        self.publisher: RecordPublisher | None = None
        self.lookup_error = ""
        self._recovering: defer.Deferred | None = None
        self.recovered_from_dht = False
        self._my_id = ""
        self._servers: dict[str, RemoteStorageServer] = {}
        self._waiters: list[defer.Deferred] = []
        self._unsubscribe_events: Any = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Build the machines, then (after a DHT look for a lost roster) let fire_hire hire."""
        ctx, settings = self.ctx, self.ctx.settings
        gateway = self.deps.gateway.require_gateway()
        self._my_id = gateway.my_id
        fresh = not os.path.exists(self.roster_file)
        self.roster = SupplierRoster(self.roster_file)
        self.finder = SupplierFinder(ctx.clock, self._random_suppliers, self._make_connector,
                                     choices=int(settings.get(PREFIX + "hire-choices")), registry=ctx.automats)
        probe = 2 * float(settings.get(PREFIX + "request-timeout")) + 1.0
        self.fire_hire = FireHire(ctx.clock, self.roster, self.finder, self._make_connector, self.wanted,
                                  self.dead_after, self._roster_changed, registry=ctx.automats,
                                  intervals={"timer-1min": settings.get(PREFIX + "check-interval"),
                                             "timer-probe": probe},
                                  network_state=self._network_state, check_network=self._check_network,
                                  data_blocks=self.data_blocks, cancel_service=self.cancel_service,
                                  pause_tolerance=lambda: float(settings.get(PREFIX + "pause-tolerance")),
                                  dead_spread=lambda: float(settings.get(PREFIX + "dead-after-spread")))
        self.fire_hire.add_state_listener(self._fire_hire_changed)
        identity = self.deps.identity
        self.publisher = RecordPublisher(ctx.clock, ctx.call_later, ctx.run_in_thread, lambda: self.roster,
                                         self._ecc_map, identity.master_private_key,
                                         lambda: identity.my_idurl() or "", lambda: settings.get(TTL_KEY),
                                         self._dht, self._hand_record, current_id=identity.current_id)
        self._unsubscribe_events = ctx.events.subscribe(self._on_event)
        settings.add_listener(WANTED_KEY, self._wanted_changed)
        settings.add_listener(NEEDED_KEY, self._needed_changed)
        settings.add_listener(TTL_KEY, self._ttl_changed)
        self._route = gateway.router.add(Command.CANCEL_SERVICE, self._on_rejection, accepts=_is_rejection,
                                         owner=self.name)
        gateway.router.refuse(wire.MARKET_COMMANDS, wire.SUPPLIER_OFF)
        d = self._recovering = defer.Deferred.fromCoroutine(self._recover()) if fresh else defer.succeed(None)
        d.addErrback(lambda f: None if f.check(defer.CancelledError)
                     else self.log.failure("looking for my suppliers in the DHT failed", f))
        d.addCallback(self._begin)
        d.addErrback(lambda f: self.log.failure("fire_hire did not start", f))

    def _begin(self, _: Any) -> None:
        fire_hire = self.fire_hire
        if fire_hire is None or fire_hire.state != "AT_STARTUP":
            return  # stopped meanwhile
        fire_hire.event("init")
        if self.roster.hired():
            # Storage may have come up before this service (it needs no gateway) and found no
            # suppliers then: tell it they are here, e.g. to restore the catalog of a recovered identity.
            reason = "recovered from the DHT" if self.recovered_from_dht else "service started"
            self.ctx.events.publish("suppliers-changed", {"positions": list(self.roster.positions),
                                                           "reason": reason, "revision": self.roster.revision})
            self.publish_suppliers()

    def stop(self) -> None:
        """Stop the machines (contracts stay: the suppliers keep our data), release waiters."""
        settings = self.ctx.settings
        settings.remove_listener(WANTED_KEY, self._wanted_changed)
        settings.remove_listener(NEEDED_KEY, self._needed_changed)
        settings.remove_listener(TTL_KEY, self._ttl_changed)
        if self._unsubscribe_events is not None:
            self._unsubscribe_events()
            self._unsubscribe_events = None
        if self._route is not None:
            self._route.remove()
            self._route = None
        fire_hire, self.fire_hire = self.fire_hire, None
        if fire_hire is not None and not fire_hire.destroyed:
            fire_hire.event("shutdown")  # also shuts the finder and every connector down
        self.finder = None
        self.roster = None
        self._servers.clear()
        if self.publisher is not None:
            self.publisher.stop()
        if self._recovering is not None and not self._recovering.called:
            self._recovering.cancel()
        self._release_waiters()

    def status(self) -> dict:
        """Facts for service_info."""
        fire_hire, roster = self.fire_hire, self.roster
        if fire_hire is None or roster is None:
            return {}
        states = [c.state for c in fire_hire.connectors.values()]
        return {"wanted": self.wanted(), "hired": len(roster.hired()), "connected": states.count("CONNECTED"),
                "fire_hire": fire_hire.state, "supplier_finder": self.finder.state if self.finder else None,
                "shortage": fire_hire.shortage, "roster_revision": roster.revision,
                "dht_revision": self.dht_revision, "dht_error": self.dht_error,
                "suppliers_record": self.publisher.status() if self.publisher else {},
                "quota_per_supplier": self.quota_bytes(), "recovered_from_dht": self.recovered_from_dht,
                "lookup_error": self.lookup_error,
                "waiting": fire_hire.waiting, "reprobes": fire_hire.reprobes, "pauses": fire_hire.watch.pauses,
                "retiring": len(roster.retiring), "releasing": len(roster.releasing)}

    @property
    def dht_revision(self) -> int | None:
        """The revision of my suppliers record the DHT took last (None before the first)."""
        return self.publisher.dht_revision if self.publisher is not None else None

    @property
    def dht_error(self) -> str:
        """Why my suppliers record is not in the DHT now ("" when it is)."""
        return self.publisher.dht_error if self.publisher is not None else ""

    # --- settings -----------------------------------------------------------------------

    def wanted(self) -> int:
        """How many suppliers to keep."""
        return int(self.ctx.settings.get(WANTED_KEY))

    def dead_after(self) -> float:
        """Seconds offline before a supplier is fired."""
        return float(self.ctx.settings.get(PREFIX + "dead-after"))

    def data_blocks(self, n: int) -> int:
        """k for n positions, as service_backups will encode (:mod:`bitnode.storage.k_of_n`); at least 1."""
        return max(1, k_of_n.data_blocks(n, k_of_n.configured_data_blocks(self.ctx.settings)))

    def quota_bytes(self) -> int:
        """What each supplier is asked for (the quota rule of the module docstring)."""
        needed = int(self.ctx.settings.get(NEEDED_KEY))
        k = self.data_blocks(max(1, self.wanted()))
        per_supplier = -(-needed // k)
        return max(1, per_supplier + per_supplier // 16)

    def _wanted_changed(self, key: str, old: Any, new: Any) -> None:
        self._ask_new_quota()
        if self.fire_hire is not None and not self.fire_hire.destroyed:
            self.fire_hire.event("restart")

    def _needed_changed(self, key: str, old: Any, new: Any) -> None:
        self._ask_new_quota()

    def _ttl_changed(self, key: str, old: Any, new: Any) -> None:
        if self.roster is not None and self.roster.hired():
            self.publish_suppliers()  # the lifetime a record carries is the one it was signed with

    def _ask_new_quota(self) -> None:
        if self.fire_hire is None:
            return
        quota = self.quota_bytes()
        for connector in list(self.fire_hire.connectors.values()):
            if connector.needed_bytes != quota:
                connector.needed_bytes = quota
                if connector.state == "CONNECTED":
                    connector.event("connect")  # asks again; an offline one asks with it on its next retry

    # --- the machines' neighbours --------------------------------------------------------

    def _make_connector(self, supplier_id: str) -> SupplierConnector:
        ping = float(self.ctx.settings.get(PREFIX + "ping-interval"))
        return SupplierConnector(self.ctx.clock, supplier_id, self, self.quota_bytes(),
                                 intervals={"timer-ping": ping, "timer-retry": ping / 2},
                                 registry=self.ctx.automats)

    def _random_suppliers(self, count: int) -> defer.Deferred:
        if not self.deps.is_on("dht"):
            return defer.fail(Unavailable(f"{DHTService.name} is not running"))
        return self.deps.dht.random_nodes(wire.SUPPLIERS_LAYER, count).addCallback(self._global_ids)

    def _global_ids(self, contacts: list[dict]) -> list[str]:
        out: list[str] = []
        for contact in contacts:
            try:
                supplier_id = globalid.idurl_to_global_id(contact.get("user") or "")
            except BadRequest:
                continue  # a DHT node without an identity (yet) cannot be hired
            if not self._is_me(supplier_id) and supplier_id not in out:
                out.append(supplier_id)
        return out

    def _is_me(self, name: str) -> bool:
        """One of my names (my identity may have moved to another identity server: a new global id)."""
        return name == self._my_id or self.deps.identity.is_me(name)

    def request_service(self, supplier_id: str, needed_bytes: int) -> defer.Deferred:
        """Contracts neighbour: RequestService; fires with the supplier's answer dict.

        An Identity ping goes first: a node drops packets from senders it has
        no key for, and the ping is how a new customer introduces itself.
        """
        d = self.ping(supplier_id)
        return d.addCallback(lambda _: self.server(supplier_id).request_service(self._my_id, needed_bytes))

    def cancel_service(self, supplier_id: str) -> defer.Deferred:
        """Contracts neighbour: CancelService (the supplier deletes our data)."""
        return self.server(supplier_id).cancel_service(self._my_id)

    def ping(self, supplier_id: str) -> defer.Deferred:
        """Contracts neighbour: an Identity ping through the online-status table (it records the answer)."""
        timeout = self.ctx.settings.get(PREFIX + "request-timeout")
        return defer.maybeDeferred(lambda: self.deps.network.require_online().ping(
            supplier_id, timeout))

    def request(self, supplier_id: str, owner_id: str, command: str, payload: bytes,
                payload_sha256: bytes | None = None) -> defer.Deferred:
        """RemoteStorageServer's transport: one packet to the supplier, its answer as ``(command, payload,
        prefix_sha256)`` (see :meth:`~bitnode.transport.packet.Packet.streamed_prefix_sha256`).

        ``payload_sha256``: the payload's SHA-256 when the caller computed it already (trusted).
        """
        try:
            gateway = self.deps.gateway.require_gateway()
        except Unavailable as err:
            return defer.fail(err)
        if owner_id != gateway.my_id and not self._is_me(owner_id):
            return defer.fail(Forbidden(f"this node acts only for {gateway.my_id}, not {owner_id}"))
        name = str(command)
        timeout = self.ctx.settings.get(PREFIX + ("request-timeout" if name in CONTRACT_COMMANDS
                                                    else "block-timeout"))
        d = gateway.request(name, supplier_id, payload, timeout=timeout, payload_sha256=payload_sha256)
        d.addCallbacks(lambda packet: (packet.command, packet.payload, packet.streamed_prefix_sha256), _fail_answer)
        return d

    def server(self, supplier_id: str) -> RemoteStorageServer:
        """The IStorageServer of ``supplier_id`` (any valid global id or IDURL)."""
        supplier_id = str(globalid.to_global_id(supplier_id))
        server = self._servers.get(supplier_id)
        if server is None:
            server = self._servers[supplier_id] = RemoteStorageServer(self.request, supplier_id)
        return server

    def positions(self) -> list[str]:
        """SupplierProvider: position i's supplier (global id), "" where nobody is hired."""
        roster = self.roster
        return list(roster.positions) if roster is not None else []

    def retiring(self) -> list[dict]:
        """SupplierProvider: former holders still read from, ``{"supplier_id", "position"}`` (fire_hire's list)."""
        fire_hire = self.fire_hire
        if fire_hire is None or fire_hire.destroyed:
            return [{"supplier_id": r.supplier_id, "position": r.position}
                    for r in (self.roster.retiring if self.roster is not None else [])]
        return [{"supplier_id": r["supplier_id"], "position": r["position"]} for r in fire_hire.retiring()]

    def rebuild_progress(self, report: dict) -> None:
        """SupplierProvider: storage's blocks rebuilt per retiring holder (shown in suppliers_list)."""
        fire_hire = self.fire_hire
        if fire_hire is not None and not fire_hire.destroyed:
            fire_hire.rebuild_progress(report)

    def release(self, supplier_id: str) -> bool:
        """SupplierProvider: nothing depends on this retiring holder any more; its contract ends (CancelService)."""
        fire_hire = self.fire_hire
        return fire_hire is not None and not fire_hire.destroyed and fire_hire.release(supplier_id)

    def settled(self) -> defer.Deferred | None:
        """None while fire_hire is idle (READY), else a Deferred fired when it gets there."""
        fire_hire = self.fire_hire
        if fire_hire is None or fire_hire.state in SETTLED_STATES:
            return None
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def _fire_hire_changed(self, machine: Any, old: str, new: str, event: str) -> None:
        if new in SETTLED_STATES:
            self._release_waiters()

    def _network_state(self) -> str:
        """network_connector's state ("" while service_network is off): fire_hire judges only when CONNECTED."""
        connector = self.deps.network.connector
        return connector.state if connector is not None else ""

    def _check_network(self) -> None:
        """No supplier answers: maybe this node is the one cut off; let network_connector check now."""
        connector = self.deps.network.connector
        if connector is not None and not connector.destroyed:
            connector.event("check-reconnect")

    def _on_event(self, event: Any) -> None:
        if event.event_id == "identity-rotated":
            self._supplier_moved(event.data or {})
        if event.event_id in ("network-connected", "network-disconnected"):
            fire_hire = self.fire_hire
            if fire_hire is not None and not fire_hire.destroyed and fire_hire.state != "AT_STARTUP":
                fire_hire.event("restart")

    def _supplier_moved(self, data: dict) -> None:
        """A user moved to another identity server: if it is one of my suppliers, my record names its new IDURL."""
        roster, new = self.roster, str(data.get("global_id") or "")
        if roster is None or not new:
            return
        identity = self.deps.identity
        if any(identity.same_user(supplier_id, new) for supplier_id in roster.hired()):
            self.log.info("my supplier {old} moved to {new}: publishing my suppliers record again",
                          old=data.get("old_global_id"), new=new)
            self.publish_suppliers()

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    # --- roster changes -------------------------------------------------------------------

    def _roster_changed(self, positions: list[str], reason: str) -> None:
        revision = self.roster.revision if self.roster is not None else None
        self.ctx.events.publish("suppliers-changed", {"positions": list(positions), "reason": reason,
                                                       "revision": revision})
        self.publish_suppliers()

    def _ecc_map(self, n: int) -> str:
        return k_of_n.ecc_map(n, k_of_n.configured_data_blocks(self.ctx.settings))

    def publish_suppliers(self) -> None:
        """Sign my suppliers record now, store it in the DHT and hand it to my suppliers."""
        if self.roster is not None and self.publisher is not None:
            self.publisher.publish()

    def _dht(self) -> DHTService:
        if not self.deps.is_on("dht"):
            raise Unavailable(f"{DHTService.name} is not running")
        return self.deps.dht

    def _hand_record(self, supplier_id: str, payload: bytes) -> defer.Deferred:
        """A ``Contacts`` packet with my signed suppliers record; fires when the supplier acknowledged it."""
        try:
            gateway = self.deps.gateway.require_gateway()
        except Unavailable as err:
            return defer.fail(err)
        timeout = self.ctx.settings.get(PREFIX + "request-timeout")
        return gateway.request(Command.CONTACTS, supplier_id, payload, timeout=timeout)

    async def _recover(self) -> None:
        """No roster on disk: take the positions my suppliers record names, once the DHT can say (see find_record)."""
        found = await find_record(self.ctx.clock, self._dht, self.deps.identity, self._my_id, self._note_lookup)
        self.lookup_error = ""
        if found is not None:
            self._take_positions(found)

    def _note_lookup(self, problem: str) -> None:
        self.lookup_error = problem
        self.log.info("looking for my suppliers record: {problem}", problem=problem)

    def _take_positions(self, found: dict) -> None:
        roster = self.roster
        if roster is None or roster.positions or not any(found["suppliers"]):
            return
        roster.revision = found["revision"]
        roster.save(found["suppliers"])
        self.recovered_from_dht = True
        self.log.info("took my suppliers from the DHT (revision {rev}): {positions}", rev=found["revision"],
                      positions=found["suppliers"])
        self._adopt_ecc_map(found["ecc_map"], len(found["suppliers"]))

    def _adopt_ecc_map(self, ecc_map: str, n: int) -> None:
        """Keep the recovered k-of-n (fewer wanted suppliers would fire, and so empty, the last positions)."""
        settings = self.ctx.settings
        try:
            if self.wanted() != n:
                settings.set(WANTED_KEY, n)
            k, _ = k_of_n.parse_ecc_map(ecc_map)
            if k_of_n.DATA_BLOCKS_KEY in settings.keys() and self.data_blocks(n) != k:
                settings.set(k_of_n.DATA_BLOCKS_KEY, k)
        except (BitnodeError, ValueError) as err:
            self.log.warn("could not keep the recovered suppliers' {ecc_map} ({n} positions): {err}",
                          ecc_map=ecc_map, n=n, err=err)

    # --- incoming notices ----------------------------------------------------------------

    def _on_rejection(self, packet: Any, address: Any) -> defer.Deferred:
        return self.supplier_rejected(packet, self.deps.gateway.require_gateway())

    def supplier_rejected(self, packet: Any, gateway: Any) -> defer.Deferred:
        """A supplier's CancelService notice: it does not serve us any more (fire and replace it)."""
        fire_hire = self.fire_hire
        connector = fire_hire.connectors.get(packet.creator_id) if fire_hire is not None else None
        if connector is None:
            return gateway.reply(packet, Command.FAIL, b"not one of my suppliers")
        try:
            reason = str(wire.decode_json(packet.payload).get("reason") or "no reason given")
        except BadRequest:
            reason = "no reason given"
        connector.rejected(f"rejected: {reason[:200]}")
        return gateway.reply(packet, Command.ACK, b"")

    # --- what the API calls ------------------------------------------------------------------

    def require_fire_hire(self) -> FireHire:
        """The running fire_hire; Unavailable while the service is off."""
        if self.fire_hire is None or self.fire_hire.destroyed:
            raise Unavailable(f"{self.name} is not running")
        return self.fire_hire

    def suppliers(self, verbose: bool = False) -> list[dict]:
        """Each position: supplier, contract state, online, quota and used bytes (from its last answer)."""
        fire_hire = self.require_fire_hire()
        retiring = fire_hire.retiring()
        rows = []
        for position, supplier_id in enumerate(self.roster.positions):
            connector = fire_hire.connectors.get(supplier_id) if supplier_id else None
            answer = connector.answer if connector is not None else {}
            row = {"position": position, "supplier_id": supplier_id,
                   "idurl": globalid.global_id_to_idurl(supplier_id) if supplier_id else "",
                   "state": connector.state if connector is not None else ("NO_SERVICE" if supplier_id else "EMPTY"),
                   "online": connector is not None and connector.state == "CONNECTED",
                   "quota_bytes": answer.get("quota_bytes"), "used_bytes": answer.get("used_bytes")}
            rebuilding = [r for r in retiring if r["position"] == position]
            row.update({"retiring": False, "waiting": fire_hire.waiting,
                        "rebuild": [{"from": r["supplier_id"], **r["rebuild"]} for r in rebuilding]})
            if verbose:
                info = connector.info() if connector is not None else {}
                row.update({"automat": connector.id if connector is not None else None,
                            "offline_for": info.get("offline_for", 0.0), "last_seen": info.get("last_seen"),
                            "failures": info.get("failures", 0), "refusal": info.get("refusal", "")})
            rows.append(row)
        for r in retiring:
            rows.append(self._former_row(r["position"], r["supplier_id"], "RETIRING", fire_hire.waiting,
                                         reason=r["reason"], fault=r["fault"], since=r["since"],
                                         rebuild=r["rebuild"]))
        for r in fire_hire.releasing():
            rows.append(self._former_row(None, r["supplier_id"], "RELEASING", fire_hire.waiting, since=r["since"],
                                         attempts=r["attempts"], error=r["error"]))
        return rows

    @staticmethod
    def _former_row(position: int | None, supplier_id: str, state: str, waiting: str, **facts: Any) -> dict:
        """A suppliers_list row for a former holder (after the position rows)."""
        return {"position": position, "supplier_id": supplier_id, "idurl": globalid.global_id_to_idurl(supplier_id),
                "state": state, "online": None, "quota_bytes": None, "used_bytes": None, "retiring": True,
                "waiting": waiting, **facts}

    def change(self, position: int | None = None, supplier_id: str | None = None,
               new_supplier_id: str | None = None, index_or_idurl: str | None = None) -> dict:
        """Fire the supplier at a position (or with that id) and hire ``new_supplier_id`` or a random one."""
        fire_hire = self.require_fire_hire()
        positions = list(self.roster.positions)
        if position is None and supplier_id is None and index_or_idurl is not None:
            text = str(index_or_idurl).strip()
            if text.isdigit():
                position = int(text)
            else:
                supplier_id = text
        if position is None and supplier_id is None:
            raise BadRequest("say which supplier to change: position or supplier_id")
        if supplier_id is not None:
            wanted_id = str(globalid.to_global_id(supplier_id))
            if wanted_id not in positions:
                raise NotFound(f"{wanted_id} is not one of my suppliers")
            found = positions.index(wanted_id)
            if position is not None and position != found:
                raise BadRequest(f"{wanted_id} is at position {found}, not {position}")
            position = found
        new_id = None
        if new_supplier_id:
            new_id = str(globalid.to_global_id(new_supplier_id))
            if new_id == self._my_id or self._is_me(new_id):
                raise BadRequest("a node cannot be its own supplier")
            if new_id in positions:
                raise Conflict(f"{new_id} is already my supplier at position {positions.index(new_id)}")
        fire_hire.replace(position, new_id)
        # The old supplier retires: it keeps its blocks (and is read from) until they are rebuilt on the new one.
        return {"position": position, "old_supplier_id": positions[position], "new_supplier_id": new_id,
                "replacing": True, "roster": list(self.roster.positions), "retiring": fire_hire.retiring(),
                "waiting": fire_hire.waiting}

    def ping_suppliers(self) -> defer.Deferred:
        """Ask every supplier for service again now; fires with suppliers() once each answered (or timed out)."""
        fire_hire = self.require_fire_hire()
        timeout = float(self.ctx.settings.get(PREFIX + "request-timeout")) + 1.0
        waits = [self._ask_again(c, timeout) for c in list(fire_hire.connectors.values())
                 if c.state in ("CONNECTED", "DISCONNECTED", "REFUSE")]
        d = defer.DeferredList(waits, consumeErrors=True)
        # A connector's listeners hear of CONNECTED before its action stores the answer: read on the next turn.
        return d.addCallback(lambda _: task.deferLater(self.ctx.clock, 0, self.suppliers))

    def _ask_again(self, connector: SupplierConnector, timeout: float) -> defer.Deferred:
        d = defer.Deferred()

        def watch(machine, old, new, event):
            if new != "REQUEST" and not d.called:
                d.callback(new)

        connector.add_state_listener(watch)
        d.addTimeout(timeout, self.ctx.clock)
        d.addBoth(lambda result: (connector.remove_state_listener(watch), result)[1])
        connector.event("connect")
        return d

    def space(self) -> dict:
        """Needed space, quota per supplier and what the suppliers said we use."""
        rows = [r for r in self.suppliers() if not r["retiring"]]
        hired = [r for r in rows if r["supplier_id"]]
        n = max(1, self.wanted())
        return {"running": True, "needed_bytes": int(self.ctx.settings.get(NEEDED_KEY)),
                "suppliers_num": len(hired), "wanted_suppliers": self.wanted(), "data_blocks": self.data_blocks(n),
                "quota_per_supplier": self.quota_bytes(),
                "used_bytes": sum(r["used_bytes"] or 0 for r in hired),
                "suppliers": [{k: r[k] for k in ("position", "supplier_id", "state", "quota_bytes", "used_bytes")}
                              for r in rows]}


def _fail_answer(failure):
    """A supplier's Fail is an answer like any other for RemoteStorageServer (it maps the reason)."""
    failure.trap(PeerRefused)
    return Command.FAIL.value, failure.value.reason.encode("utf-8")


def _is_rejection(packet: Any) -> bool:
    """Router predicate: a supplier's rejection notice (not a customer's own CancelService)."""
    return wire.is_rejection_notice(packet.payload)
