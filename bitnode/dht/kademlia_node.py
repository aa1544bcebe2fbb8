"""DHTNode: the facade that wires ids, routing, RPC, lookups, records and storage together.

Layers: every node is in layer 0. ``join_layer(L)`` gives the node a second
routing table for ``L`` and adds ``L`` to the layer list it advertises in every
message. A node hearing from a peer puts it in each of its own tables whose
layer the peer advertises. Lookups carry the layer id; a node answers a layer-L
FIND_NODE from its layer-L table (if it joined) merged with the layer-0
contacts that advertised ``L`` — so non-members can still point a newcomer to
members. A non-member that knows no member of ``L`` pads its answer with its
closest layer-0 contacts, so a lookup can walk towards the layer (see
:mod:`bitnode.dht.lookup`). Lookup results contain only nodes that confirmed
membership in their own answer. Records are stored per ``(layer, key)``.

Joining a layer pings every layer-0 contact (announcing the new layer) and then
looks up our own id in that layer.

Records live until the ``expires`` their writer signed. Every hour (settable)
a node re-pushes its own records and the records it holds for others to the
current k closest nodes, in small batches spread over time
(:mod:`bitnode.dht.upkeep`), so the value survives churn until then; extending
a record's life means writing it again (``set_value``), which the nickname
holder does before expiry. Which STOREs a node accepts is
:mod:`bitnode.dht.holding`; what a peer may cost it (rates per IP, answers to
unproven addresses, quotas) is :mod:`bitnode.dht.limits`.

A peer enters our routing tables only from a proven address: a matched answer
to our request, or a request carrying our token; a first request from an
unknown address gets a PING back, and the PONG adds it.

Disk: the record store is sqlite in WAL mode, used synchronously on the reactor
thread. Records are at most 6 KiB and every query is by primary key or by
index, so each call is short; the bulk scans (republish, dump) are over our own
small table.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUDP
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bitnode.dht import messages, records
from bitnode.dht.holding import RecordHolder
from bitnode.dht.ids import ID_SPACE, Contact, check_layer_id, check_user, id_from_hex, key_to_id, random_id
from bitnode.dht.limits import DHTLimits
from bitnode.dht.lookup import IterativeLookup, LookupResult
from bitnode.dht.messages import Message, Sender
from bitnode.dht.protocol import Address, RPCEngine, UDPProtocol
from bitnode.dht.records import InvalidRecord, Record, RecordConflict
from bitnode.dht.routing import RoutingTable
from bitnode.dht.simnet import SimEndpoint
from bitnode.dht.storage import RecordStore, StoredRecord
from bitnode.dht.upkeep import StoreKeeper
from bitnode.errors import BadRequest, Conflict, NotFound, Timeout, Unavailable

#: senders being pinged at once to prove their address before they enter the routing tables
MAX_ADDRESS_CHECKS = 256
#: a contact heard from in the last 15 minutes is not pinged when a newcomer finds its bucket full
#: (as BitTorrent's DHT calls a node "good"): without it every newcomer cost a PING (make sim's storm)
PING_FRESH_FOR = 900.0


class DHTNode:
    """One Kademlia node. All state hangs off the instance; time and randomness are injected.

    :param clock: ``IReactorTime`` (the reactor, or a ``Clock`` in tests).
    :param rng: a ``random.Random``: node id (unless given), request ids, random targets.
    :param signer_key: Ed25519 private key that signs our records: a
        :class:`bitnode.crypt.fastsign.Ed25519PrivateKey` or a pycryptodome ``EccKey``;
        None for a node that routes and reads but cannot write yet (see :meth:`set_signer_key`).
    :param store_path: sqlite file for held records, or ``":memory:"``.
    :param k: bucket size and replication factor.
    :param alpha: parallel requests per lookup.
    :param limits: what peers are allowed (see :mod:`bitnode.dht.limits`).
    """

    _log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        rng: random.Random,
        signer_key: records.SignerKey | None,
        store_path: str = ":memory:",
        k: int = 20,
        alpha: int = 3,
        *,
        node_id: int | None = None,
        user: str = "",
        rpc_timeout: float = 2.0,
        refresh_interval: float = 3600.0,
        republish_interval: float = 3600.0,
        replicate_interval: float = 3600.0,
        expire_interval: float = 60.0,
        max_failures: int = 2,
        ping_fresh_for: float = PING_FRESH_FOR,
        cache_values: bool = True,
        limits: DHTLimits = DHTLimits(),
    ) -> None:
        if k < 1 or alpha < 1:
            raise BadRequest("k and alpha must be >= 1")
        self._clock = clock
        self._rng = rng
        self.node_id = random_id(rng) if node_id is None else node_id
        self.k = k
        self.alpha = alpha
        self._user = check_user(user)
        self._max_failures = max_failures
        self._ping_fresh_for = ping_fresh_for
        self.refresh_interval = refresh_interval
        self.cache_values = cache_values
        self.limits = limits
        self._tables: dict[int, RoutingTable] = {0: self._new_table()}
        self._engine = RPCEngine(clock, rng, self._sender, self._handle_request, self._observe, rpc_timeout, limits)
        self._store = RecordStore(store_path, clock, limits)
        self.counters: Counter[str] = Counter()
        self._holder = RecordHolder(self._store, clock, limits, self.counters)
        self.set_signer_key(signer_key)
        self._keeper = StoreKeeper(
            self._store, clock, self._publish_row, republish_interval, replicate_interval, expire_interval, limits
        )
        self._refresh_loop: LoopingCall | None = None
        self._checking: set[Address] = set()
        self._port: IListeningPort | None = None
        self._endpoint: SimEndpoint | None = None
        self.address: Address | None = None
        self._stopped = False
        self.lookups: deque[LookupResult] = deque(maxlen=1000)

    # -- wiring -------------------------------------------------------------------

    def listen_udp(self, reactor: IReactorUDP, port: int = 0, interface: str = "127.0.0.1") -> IListeningPort:
        """Bind a real UDP socket (loopback by default) and start the node's timers."""
        self._check_running()
        self._port = reactor.listenUDP(port, UDPProtocol(self._engine), interface=interface)
        host = self._port.getHost()
        self.address = (host.host, host.port)
        self._start_timers()
        return self._port

    def attach(self, endpoint: SimEndpoint) -> None:
        """Use a simulated endpoint instead of a socket, and start the node's timers."""
        self._check_running()
        self._endpoint = endpoint
        endpoint.set_receiver(self._engine.datagram_received, takes_messages=True)
        self._engine.attach(endpoint.send, endpoint.send_message)
        self.address = endpoint.address
        self._start_timers()

    def set_signer_key(self, signer_key: records.SignerKey | None) -> None:
        """Install (or, with None, remove) the Ed25519 key that signs our records."""
        self._holder.set_signer(signer_key)

    @property
    def pubkey(self) -> str:
        """Base64 of our records' Ed25519 public key ("" while we have no signing key)."""
        return self._holder.pubkey

    def set_user(self, user: str) -> None:
        """Set the opaque text (e.g. our IDURL) sent with every message and returned in contacts."""
        self._user = check_user(user)

    @property
    def layers(self) -> tuple[int, ...]:
        """Layers this node has joined (always includes 0)."""
        return tuple(sorted(self._tables))

    def stop(self) -> Deferred:
        """Stop timers, fail pending requests, close the store and the socket/endpoint."""
        if self._stopped:
            return succeed(None)
        self._stopped = True
        if self._refresh_loop is not None and self._refresh_loop.running:
            self._refresh_loop.stop()
        self._keeper.stop()
        self._engine.close()
        self._store.close()
        if self._endpoint is not None:
            self._endpoint.close()
        if self._port is not None:
            port, self._port = self._port, None
            return maybeDeferred(port.stopListening)
        return succeed(None)

    # -- public API ---------------------------------------------------------------

    def bootstrap(self, seeds: Iterable[tuple[str, int]]) -> Deferred:
        """Ping the seeds, look up our own id, refresh far buckets, then (re)join our layers.

        Fires with the number of layer-0 contacts; fails with :class:`Unavailable` if no seed answered.
        """
        return ensureDeferred(self._bootstrap([(str(h), int(p)) for h, p in seeds]))

    def join_layer(self, layer_id: int) -> Deferred:
        """Join ``layer_id``: announce it to our contacts and find its members. Fires with the table size."""
        return ensureDeferred(self._join_layer(check_layer_id(layer_id)))

    def set_value(
        self, key: str, value: Any, record_type: str, expire: int = 3600, layer_id: int = 0
    ) -> Deferred:
        """Sign ``value`` under ``key`` and store it at the k closest nodes of the layer.

        Fires with the stored :class:`Record`. Fails with :class:`RecordConflict`
        if another writer holds the key (nickname, identity, suppliers), with
        :class:`InvalidRecord` for a bad shape, or :class:`Unavailable` if no
        peer accepted it.
        """
        if type(expire) is not int:
            raise BadRequest("expire must be an int number of seconds")
        return ensureDeferred(self._set_value(key, value, record_type, expire, check_layer_id(layer_id)))

    def get_value(self, key: str, record_type: str | None = None, layer_id: int = 0) -> Deferred:
        """Find the best valid record for ``key`` (of ``record_type`` if given); fires with it or None."""
        return ensureDeferred(self._get_value(key, record_type, check_layer_id(layer_id)))

    def find_node(self, node_id: int | str | None = None, layer_id: int = 0) -> Deferred:
        """Iterative FIND_NODE; fires with up to k contact dicts closest to ``node_id`` (default: ours).

        The result never includes this node itself.
        """
        target = self.node_id if node_id is None else (id_from_hex(node_id) if isinstance(node_id, str) else node_id)
        if type(target) is not int or not 0 <= target < ID_SPACE:
            raise BadRequest("node id must be a 256-bit id")
        d = self._lookup(target, check_layer_id(layer_id))
        return d.addCallback(lambda r: [c.to_dict() for c in r.contacts])

    def random_nodes(self, layer_id: int = 0, count: int = 1) -> Deferred:
        """Fires with up to ``count`` (at most k) random contact dicts of members of ``layer_id``.

        They are the members closest to a random id, confirmed by their own
        answer during the lookup; this node itself is never among them.
        """
        layer = check_layer_id(layer_id)
        if type(count) is not int or count < 1:
            raise BadRequest("count must be a positive int")

        def pick(result: LookupResult) -> list[dict[str, Any]]:
            found = list(result.contacts)
            return [c.to_dict() for c in self._rng.sample(found, min(count, len(found)))]

        return self._lookup(random_id(self._rng), layer).addCallback(pick)

    def routing_table(self, layer_id: int = 0) -> dict[str, Any]:
        """JSON-safe snapshot of one layer's routing table (for network_status)."""
        table = self._tables.get(layer_id)
        if table is None:
            raise NotFound(f"not a member of DHT layer {layer_id}")
        addr = self.address
        return {"layer": layer_id, "address": f"{addr[0]}:{addr[1]}" if addr else None} | table.to_dict()

    def add_contacts(self, contacts: Iterable[Contact], layer_id: int = 0) -> int:
        """Put contacts known from elsewhere into a layer's table, as if heard from; returns how many went in.

        For a simulation's warm start (a network that has run a while) or a table
        saved before a restart. Full buckets treat them like any newcomer (the
        oldest contact is pinged; the newcomer waits as a replacement).
        """
        table = self._tables.get(check_layer_id(layer_id))
        if table is None:
            raise NotFound(f"not a member of DHT layer {layer_id}")
        return sum(1 for c in contacts if table.add(c) == "added")

    def routing_state(self) -> dict[str, int]:
        """What the routing tables hold, all layers together: contacts, waiting replacements, buckets."""
        buckets = [b for t in self._tables.values() for b in t.buckets]
        return {
            "contacts": sum(len(b.contacts) for b in buckets),
            "replacements": sum(len(b.replacements) for b in buckets),
            "buckets": len(buckets),
            "pending_requests": self._engine.pending(),
        }

    def local_dump(self) -> list[dict[str, Any]]:
        """Every unexpired record held locally."""
        return self._store.dump()

    def stats(self) -> dict[str, Any]:
        """Counters (malformed, oversize, rate_limited, timeouts, store rejections...) and lookup figures."""
        hops = [r.hops for r in self.lookups]
        times = [r.elapsed for r in self.lookups]
        return (
            self._engine.stats()
            | self._keeper.stats()
            | {k: self.counters[k] for k in ("store_accepted", "store_rejected", "store_conflicts", "bad_values",
                                              "store_refused_stale", "store_refused_quota",
                                              "store_refused_full", "replicate_skipped_stale",
                                              "lookup_contacts_skipped")}
            | {
                "lookups": len(self.lookups),
                "lookup_hops_avg": sum(hops) / len(hops) if hops else 0.0,
                "lookup_hops_max": max(hops, default=0),
                "lookup_seconds_avg": sum(times) / len(times) if times else 0.0,
                "records": 0 if self._stopped else self._store.count(),
                "held_for_others": {} if self._stopped else self._store.usage(),
                "limits": dataclasses.asdict(self.limits),
                "contacts": {str(layer): len(t) for layer, t in self._tables.items()},
                "eviction_pings_skipped": sum(t.pings_skipped_fresh for t in self._tables.values()),
            }
        )

    # -- incoming -----------------------------------------------------------------

    def _sender(self) -> Sender:
        return Sender(self.node_id, self._user, self.layers)

    def _observe(self, msg: Message, address: Address, proven: bool = True) -> None:
        """Every accepted message refreshes the sender in the tables of the layers it advertises.

        A sender at an address it has not proven (its first request to us: the
        source may be forged) is pinged instead if our table has room for it;
        its answer adds it.
        """
        if msg.sender.node_id == self.node_id:
            return
        contact = Contact(msg.sender.node_id, address[0], address[1], msg.sender.user, msg.sender.layers)
        known = self._tables[0].get(contact.node_id)
        if not proven and (known is None or known.address != contact.address):
            if self._tables[0].has_room_for(contact.node_id):
                self._check_address(contact)
            return
        for layer, table in self._tables.items():
            if contact.in_layer(layer):
                table.add(contact)
            else:
                table.remove(contact.node_id)

    def _check_address(self, contact: Contact) -> None:
        """Ping a newly heard-of sender once (a bounded number at a time); its PONG puts it in our tables."""
        if contact.address in self._checking or len(self._checking) >= MAX_ADDRESS_CHECKS:
            return
        self._checking.add(contact.address)
        self.counters["address_checks"] += 1
        d = self._engine.request(contact.address, messages.PING)
        d.addErrback(lambda _: None)
        d.addBoth(lambda _: self._checking.discard(contact.address))

    def _handle_request(self, msg: Message, address: Address) -> tuple[str, dict[str, Any]] | None:
        if msg.kind == messages.PING:
            return messages.PONG, {}
        asker = msg.sender.node_id
        if msg.kind == messages.FIND_NODE:
            return messages.NODES, {"contacts": self._closest_for(msg.layer, msg.body["target"], asker, pad=True)}
        if msg.kind == messages.FIND_VALUE:
            key = msg.body["key"]
            row = self._store.get(msg.layer, key) if msg.layer in self._tables else None
            if row is not None:
                return messages.VALUE, {"record": row.record}
            return messages.NODES, {"contacts": self._closest_for(msg.layer, key_to_id(key), asker, pad=True)}
        if msg.kind == messages.STORE:
            if msg.layer not in self._tables:
                self.counters["store_rejected"] += 1
                return messages.STORED, {"ok": False, "code": "layer", "reason": f"not a member of layer {msg.layer}"}
            ok, code, reason = self._holder.accept_store(msg.layer, msg.body["record"])
            return messages.STORED, {"ok": ok, "code": code, "reason": reason}
        return None

    def _closest_for(
        self, layer: int, target: int, exclude: int | None = None, pad: bool = False
    ) -> tuple[Contact, ...]:
        """Our best contacts for ``target`` in ``layer``: the layer table plus layer-0 contacts claiming it.

        With ``pad``, a non-member that knows no member answers with its closest
        layer-0 contacts instead, as relays towards the layer.
        """
        skip = frozenset() if exclude is None else frozenset({exclude})
        if layer == 0:
            return tuple(self._tables[0].closest(target, self.k, skip))
        pool: dict[int, Contact] = {}
        if layer in self._tables:
            pool.update((c.node_id, c) for c in self._tables[layer].closest(target, self.k, skip))
        for c in self._tables[0].contacts():
            if layer in c.layers and c.node_id not in skip:  # c.in_layer(layer), inlined: a hot loop
                pool.setdefault(c.node_id, c)
        # A tuple: what a NODES answer carries (and what parsing one gives back).
        if not pool and pad and layer not in self._tables:
            return tuple(self._tables[0].closest(target, self.k, skip))
        return tuple(sorted(pool.values(), key=lambda c: c.node_id ^ target)[: self.k])

    # -- outgoing -----------------------------------------------------------------

    def _query(self, contact: Contact, kind: str, body: dict[str, Any], layer: int) -> Deferred:
        d = self._engine.request(contact.address, kind, body, layer)

        def failed(failure: Any) -> Any:
            if failure.check(Timeout):
                for table in self._tables.values():
                    table.note_failure(contact.node_id)
            return failure

        return d.addErrback(failed)

    def _ping_contact(self, contact: Contact) -> Deferred:
        return self._query(contact, messages.PING, {}, 0)

    def _lookup(
        self, target: int, layer: int, key: str | None = None, record_type: str | None = None
    ) -> Deferred:
        """Run an iterative lookup (FIND_VALUE if ``key`` is given); fires with a :class:`LookupResult`."""
        if self._stopped:
            return fail(Unavailable("DHT node stopped"))
        seeds = self._closest_for(layer, target)
        if not seeds and layer != 0:
            seeds = self._tables[0].closest(target, self.k)  # non-members relay us to members
        if layer in self._tables:
            self._tables[layer].touch(target)
        if key is None:
            kind, body = messages.FIND_NODE, {"target": target}
        else:
            kind, body = messages.FIND_VALUE, {"key": key}

        def accept(raw: dict[str, Any]) -> Record | None:
            try:
                record = records.parse_and_verify(raw, self._clock.seconds())
            except InvalidRecord:
                record = None
            if record is None or record.key != key or (record_type and record.record_type != record_type):
                self.counters["bad_values"] += 1
                return None
            return record

        lookup = IterativeLookup(
            target=target,
            seeds=seeds,
            query=lambda c: self._query(c, kind, body, layer),
            clock=self._clock,
            own_id=self.node_id,
            k=self.k,
            alpha=self.alpha,
            layer=layer,
            find_value=key is not None,
            # First-come records are chosen by majority (records.pick_best): ask all the k closest.
            values_wanted=self.k if key is not None and key.partition(":")[0] in records.FIRST_COME_TYPES else 1,
            accept=accept,
            max_per_host=self.limits.lookup_contacts_per_host,
        )
        return lookup.start().addCallback(self._note_lookup)

    def _note_lookup(self, result: LookupResult) -> LookupResult:
        self.lookups.append(result)
        self.counters["lookup_contacts_skipped"] += result.skipped
        return result

    def _store_at(self, contact: Contact, record: Record, layer: int) -> Deferred:
        """STORE at one contact; fires with the STORED body (errors become ``ok=False``)."""
        d = self._query(contact, messages.STORE, {"record": record.to_dict()}, layer)
        d.addCallback(lambda msg: msg.body)
        return d.addErrback(lambda f: {"ok": False, "code": "error", "reason": f.getErrorMessage()})

    async def _store_at_closest(self, record: Record, layer: int, closest: Iterable[Contact]) -> list[dict]:
        ds = [self._store_at(c, record, layer) for c in closest if c.node_id != self.node_id]
        results = await DeferredList(ds, consumeErrors=True)
        return [body for ok, body in results if ok]

    # -- flows ----------------------------------------------------------------------

    async def _bootstrap(self, seeds: list[tuple[str, int]]) -> int:
        self._check_running()
        others = [addr for addr in seeds if addr != self.address]
        if not others and not len(self._tables[0]):
            return 0  # we are the first node (the seed itself): nothing to join yet
        answers = await DeferredList([self._engine.request(a, messages.PING) for a in others], consumeErrors=True)
        if not any(ok for ok, _ in answers) and not len(self._tables[0]):
            raise Unavailable("no DHT bootstrap seed answered")
        await self._lookup(self.node_id, 0)
        await self._refresh_buckets(0, everything=True)
        for layer in self.layers:
            if layer != 0:
                await self._announce_and_find(layer)
        return len(self._tables[0])

    async def _join_layer(self, layer: int) -> int:
        self._check_running()
        if layer not in self._tables:
            table = self._tables[layer] = self._new_table()
            for c in self._tables[0].contacts():
                if c.in_layer(layer):
                    table.add(c)
        if len(self._tables[0]):
            await self._announce_and_find(layer)
        return len(self._tables[layer])

    async def _announce_and_find(self, layer: int) -> None:
        await DeferredList([self._ping_contact(c) for c in self._tables[0].contacts()], consumeErrors=True)
        await self._lookup(self.node_id, layer)

    async def _set_value(self, key: str, value: Any, record_type: str, expire: int, layer: int) -> Record:
        self._check_running()
        records.check_key(key, record_type)
        records.check_shape(record_type, key, value)
        if not 0 < expire <= records.MAX_TTL:
            raise BadRequest(f"expire must be 1..{records.MAX_TTL} seconds")
        signer, pubkey = self._holder.signer, self.pubkey
        if signer is None:
            raise Conflict("this DHT node has no signing key yet (no identity): it cannot write records")
        found = await self._lookup(key_to_id(key), layer, key=key, record_type=record_type)
        self._check_running()
        now = int(self._clock.seconds())
        local = self._holder.local(layer, key)
        copies = [v for _, v in found.values] + ([local] if local else [])
        existing = records.pick_best(copies, now)
        seq = max((r.seq + 1 for r in copies if r.writer_pubkey == pubkey), default=0)
        record = records.sign_record(signer, key, value, record_type, now, now + expire, seq)
        # Renewing a first-come name we hold: copies another writer planted must not stop it (holders decide).
        renewal = record_type in records.FIRST_COME_TYPES and any(
            r.writer_pubkey == pubkey and not r.is_expired(now) for r in copies)
        if not renewal:
            records.check_replace(existing, record, now)
        records.check_replace(local, record, now)
        closest = found.contacts
        if found.values:  # the value lookup stopped early: find the true k closest
            closest = (await self._lookup(key_to_id(key), layer)).contacts
        self._check_running()
        self._store.put(layer, key, record.to_dict(), record.expires, own=True)
        bodies = await self._store_at_closest(record, layer, closest)
        self._check_running()
        accepted = [b for b in bodies if b.get("ok")]
        if not accepted and any(b.get("code") == "conflict" for b in bodies):
            self._store.delete(layer, key)
            raise RecordConflict(f"{key} is held by another writer")
        if closest and not accepted:
            raise Unavailable(f"no DHT node accepted {key}")
        return record

    async def _get_value(self, key: str, record_type: str | None, layer: int) -> Record | None:
        self._check_running()
        if record_type is not None and record_type not in records.RECORD_TYPES:
            raise BadRequest(f"unknown record type {record_type!r}")
        found = await self._lookup(key_to_id(key), layer, key=key, record_type=record_type)
        local = None if self._stopped else self._holder.local(layer, key)
        if local is not None and record_type and local.record_type != record_type:
            local = None
        copies = [v for _, v in found.values] + ([local] if local else [])
        best = records.pick_best(copies, self._clock.seconds())
        if best is not None and self.cache_values and found.cache_at is not None and self._holder.fresh_enough(best):
            self._store_at(found.cache_at, best, layer)  # never fails; result unused
        return best

    async def _publish(self, row: StoredRecord) -> int:
        """Push one stored record to the current k closest nodes of its layer (republish/replicate)."""
        record = self._holder.to_push(row)
        if record is None:
            return 0
        result = await self._lookup(record.key_id, row.layer)
        bodies = await self._store_at_closest(record, row.layer, result.contacts)
        return sum(1 for b in bodies if b.get("ok"))

    def _publish_row(self, row: StoredRecord) -> Deferred:
        return ensureDeferred(self._publish(row))

    # -- timers -------------------------------------------------------------------

    def _new_table(self) -> RoutingTable:
        return RoutingTable(self.node_id, self._clock, self.k, self._ping_contact, self._max_failures,
                            fresh_for=self._ping_fresh_for)

    def _start_timers(self) -> None:
        self._keeper.start()
        if self._refresh_loop is None:
            self._refresh_loop = LoopingCall(self._refresh_all)
            self._refresh_loop.clock = self._clock
            self._refresh_loop.start(self.refresh_interval / 2, now=False).addErrback(
                lambda f: self._log.failure("DHT refresh loop died", f)
            )

    def _refresh_all(self) -> Deferred:
        d = ensureDeferred(self._refresh_layers())
        return d.addErrback(lambda f: self._log.info("DHT refresh failed: {why}", why=f.getErrorMessage()))

    async def _refresh_layers(self) -> None:
        for layer in self.layers:
            if not self._stopped:
                await self._refresh_buckets(layer)

    async def _refresh_buckets(self, layer: int, everything: bool = False) -> None:
        """Look up a random id in each stale bucket (every bucket but our own if ``everything``)."""
        table = self._tables.get(layer)
        if table is None:
            return
        if everything:
            buckets = [b for b in table.buckets if not b.covers(self.node_id)]
        else:
            buckets = table.stale_buckets(self.refresh_interval)
        lookups = [self._lookup(table.random_id_in(b, self._rng), layer) for b in buckets]
        await DeferredList(lookups, consumeErrors=True)

    def _check_running(self) -> None:
        if self._stopped:
            raise Unavailable("DHT node stopped")

