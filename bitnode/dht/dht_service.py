"""service_entangled_dht: this node's Kademlia node on UDP, joined to the network through the known nodes.

The service owns one :class:`bitnode.dht.kademlia_node.DHTNode`:

* its id is random once, then kept in ``basedir/dht/node_id`` (Kademlia peers
  remember ids, so a restarted node takes its old place);
* its records live in ``basedir/dht/records.sqlite`` (WAL);
* it signs records with the Ed25519 packet key of ``service_identity`` and
  advertises my IDURL as its ``user`` text; without an identity yet it routes
  and reads but refuses to write (409), and picks the key up once an identity
  exists;
* it bootstraps from ``services/entangled-dht/known-nodes`` (``host:port``;
  names are resolved first), retrying every minute while it knows nobody, and
  again whenever that setting changes. Start-up does not wait for the network.

API methods (:mod:`bitnode.interface.api_dht`) call the methods below; other
services declare it (``requires = {"dht": DHTService}``) and use ``self.deps.dht``.
"""

from __future__ import annotations

import ipaddress
import os
import random
from collections import OrderedDict
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bitnode.dht import records
from bitnode.dht.ids import ID_HEX_LEN, check_layer_id, id_from_hex, id_to_hex, random_id
from bitnode.dht.kademlia_node import DHTNode
from bitnode.dht.limits import LIMIT_OPTIONS, limits_from_settings
from bitnode.dht.records import Record
from bitnode.errors import BadRequest, Conflict, NotFound, Unavailable
from bitnode.main.fileutil import atomic_write, ensure_dir, read_limited
from bitnode.main.options import FLOAT, INTEGER, STRING, Option
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.userid.id_service import IdentityService

PORT_KEY = "services/entangled-dht/udp-port"
SEEDS_KEY = "services/entangled-dht/known-nodes"
DEFAULT_EXPIRE = 24 * 3600
GET_CACHE_SIZE = 1000


def parse_seed(text: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> ``(host, port)``; raises :class:`BadRequest`."""
    host, sep, port = str(text).strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BadRequest(f"DHT seed must look like host:port, got {text!r}")
    return host, int(port)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class DHTService(Service):
    """Runs the node's DHT node; see the module docstring."""

    name = "service_entangled_dht"
    requires = {"identity": IdentityService}
    enabled_by_default = True
    description = "Kademlia DHT on UDP: finds peers, stores signed nickname/identity/supplier records"
    options = (
        Option("services/entangled-dht/interface", STRING, "127.0.0.1",
               "Address the DHT UDP port listens on (0.0.0.0 for every interface).",
               pattern=r"[0-9A-Fa-f.:]+", restart_needed=True),
        Option("services/entangled-dht/rpc-timeout", FLOAT, 5.0, "Seconds to wait for a DHT peer to answer.",
               minimum=0.05, maximum=60.0, restart_needed=True),
        Option("services/entangled-dht/bootstrap-retry", FLOAT, 60.0,
               "Seconds between bootstrap attempts while no DHT peer is known.", minimum=1.0),
        Option("services/entangled-dht/k", INTEGER, 20, "Kademlia bucket size and replication factor.",
               minimum=2, maximum=64, restart_needed=True),
        *LIMIT_OPTIONS,
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.dht: DHTNode | None = None
        self.last_bootstrap_error = ""
        self._retry: LoopingCall | None = None
        self._unsubscribe = None
        self._get_cache: OrderedDict[tuple, tuple[float, Record | None]] = OrderedDict()
        self.folder = ctx.basedir.path("dht")
        self.id_file = os.path.join(self.folder, "node_id")

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> Deferred:
        """Read (or create) the node id off the reactor, then listen and start joining."""
        return self.ctx.run_in_thread(self._load_node_id).addCallback(self._started)

    def _load_node_id(self) -> int:
        ensure_dir(self.folder)
        try:
            return id_from_hex(read_limited(self.id_file, 1024).decode("ascii").strip())
        except (FileNotFoundError, UnicodeDecodeError, BadRequest):
            node_id = random_id(random.SystemRandom())
            atomic_write(self.id_file, (id_to_hex(node_id) + "\n").encode("ascii"))
            return node_id

    def _started(self, node_id: int) -> None:
        settings = self.ctx.settings
        # The sqlite connection must be opened on the reactor thread, which uses it.
        dht = DHTNode(self.ctx.clock, random.SystemRandom(), None, os.path.join(self.folder, "records.sqlite"),
                      k=settings.get("services/entangled-dht/k"), node_id=node_id,
                      rpc_timeout=settings.get("services/entangled-dht/rpc-timeout"),
                      limits=limits_from_settings(settings))
        try:
            dht.listen_udp(self.ctx.reactor, settings.get(PORT_KEY), settings.get("services/entangled-dht/interface"))
        except Exception:
            dht.stop()
            raise
        self.dht = dht
        self.refresh_identity()
        self._unsubscribe = self.ctx.events.subscribe(self._on_event)
        settings.add_listener(SEEDS_KEY, self._seeds_changed)
        self._retry = LoopingCall(self._retry_bootstrap)
        self._retry.clock = self.ctx.clock
        self._retry.start(settings.get("services/entangled-dht/bootstrap-retry"), now=True).addErrback(
            lambda f: self.log.failure("DHT bootstrap loop died", f))
        self.log.info("DHT node {id} on udp {host}:{port}", id=id_to_hex(node_id)[:12], host=dht.address[0],
                      port=dht.address[1])

    def stop(self) -> Deferred:
        """Stop joining, close the socket and the record store."""
        if self.dht is not None:
            self.ctx.settings.remove_listener(SEEDS_KEY, self._seeds_changed)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._retry is not None and self._retry.running:
            self._retry.stop()
        self._retry = None
        dht, self.dht = self.dht, None
        self._get_cache.clear()
        return dht.stop() if dht is not None else succeed(None)

    def status(self) -> dict[str, Any]:
        """Facts for service_info and network_status(dht=True): address, id, counters, routing tables."""
        if self.dht is None:
            return {}
        host, port = self.dht.address
        return {"udp": f"{host}:{port}", "node_id": id_to_hex(self.dht.node_id), "layers": list(self.dht.layers),
                "can_write": bool(self.dht.pubkey), "last_bootstrap_error": self.last_bootstrap_error,
                **self.dht.stats(),
                "routing_tables": {str(layer): self.dht.routing_table(layer) for layer in self.dht.layers}}

    # -- identity and joining ----------------------------------------------------

    def refresh_identity(self) -> None:
        """Take the signing key and IDURL from service_identity (they appear when an identity is created)."""
        ident = self.deps.identity if self.deps.is_on("identity") else None
        dht = self.dht
        if dht is None:
            return
        key = ident.packet_private_key() if ident is not None else None
        if (records.public_key_b64(key) if key is not None else "") != dht.pubkey:
            dht.set_signer_key(key)
        dht.set_user((ident.my_idurl() if ident is not None else None) or "")

    def _on_event(self, event: Any) -> None:
        if "identity" in getattr(event, "event_id", ""):
            self.refresh_identity()

    def _seeds_changed(self, key: str, old: Any, new: Any) -> None:
        self.bootstrap().addErrback(lambda f: None)

    def _retry_bootstrap(self) -> Deferred | None:
        if self.dht is None or self.dht.stats()["contacts"].get("0"):
            return None
        d = self.bootstrap()
        d.addErrback(lambda f: None)  # remembered in last_bootstrap_error; tried again next round
        return d

    def seeds(self) -> list[tuple[str, int]]:
        """The known nodes from settings; malformed entries are skipped (and logged)."""
        out = []
        for text in self.ctx.settings.get(SEEDS_KEY):
            try:
                out.append(parse_seed(text))
            except BadRequest as err:
                self.log.warn("ignoring DHT seed: {err}", err=err)
        return out

    def bootstrap(self) -> Deferred:
        """Join through the known nodes now; fires with the number of contacts."""
        return ensureDeferred(self._bootstrap())

    async def _bootstrap(self) -> int:
        dht = self._require()
        self.refresh_identity()
        seeds = []
        for host, port in self.seeds():
            if not _is_ip(host):
                try:
                    host = await self.ctx.reactor.resolve(host)
                except Exception as err:  # a DNS failure of one seed must not stop the others
                    self.log.info("cannot resolve DHT seed {host}: {err}", host=host, err=err)
                    continue
            seeds.append((host, port))
        try:
            count = await dht.bootstrap(seeds)
        except Exception as err:
            self.last_bootstrap_error = str(err)
            raise
        self.last_bootstrap_error = ""
        return count

    # -- what the API calls ------------------------------------------------------

    def _require(self) -> DHTNode:
        if self.dht is None:
            raise Unavailable("service_entangled_dht is not running")
        return self.dht

    def find_node(self, node_id_64: str | None = None, layer_id: int = 0) -> Deferred:
        """The k nodes closest to ``node_id_64`` (64 hex characters; a random id if None)."""
        dht = self._require()
        if node_id_64 is None or node_id_64 == "":
            target = random_id(random.SystemRandom())
        elif isinstance(node_id_64, str) and len(node_id_64) == ID_HEX_LEN:
            target = id_from_hex(node_id_64.lower())
        else:
            raise BadRequest(f"node_id_64 must be {ID_HEX_LEN} hex characters (DHT ids are 256-bit)")
        layer = check_layer_id(layer_id)
        d = dht.find_node(target, layer)
        return d.addCallback(lambda found: {"my_dht_id": id_to_hex(dht.node_id), "lookup": id_to_hex(target),
                                            "layer_id": layer, "closest_nodes": found})

    def random_nodes(self, layer_id: int = 0, count: int = 1) -> Deferred:
        """Up to ``count`` random live members of ``layer_id`` (contact dicts; ``user`` is their IDURL)."""
        return self._require().random_nodes(check_layer_id(layer_id), count)

    def get_value(self, key: str, record_type: str | None = records.SKIP_VALIDATION, layer_id: int = 0,
                  use_cache_ttl: int | None = None) -> Deferred:
        """The best valid record for ``key``; fails with :class:`NotFound` if there is none.

        ``record_type`` ``skip_validation`` (the API default) or None accepts a
        record of any type; signatures are always checked. With
        ``use_cache_ttl``, an answer this service got less than that many
        seconds ago is returned without a lookup.
        """
        dht = self._require()
        layer = check_layer_id(layer_id)
        if record_type == records.SKIP_VALIDATION:
            record_type = None
        if use_cache_ttl is not None and (type(use_cache_ttl) is not int or use_cache_ttl < 0):
            raise BadRequest("use_cache_ttl must be a number of seconds >= 0")
        cache_key = (layer, key, record_type)
        now = self.ctx.clock.seconds()
        if use_cache_ttl and cache_key in self._get_cache:
            stamp, cached = self._get_cache[cache_key]
            if now - stamp <= use_cache_ttl and (cached is None or not cached.is_expired(now)):
                return maybeDeferred(self._found, key, cached, layer)
        d = dht.get_value(key, record_type, layer)

        def remember(record: Record | None) -> Record | None:
            self._get_cache[cache_key] = (self.ctx.clock.seconds(), record)
            self._get_cache.move_to_end(cache_key)
            while len(self._get_cache) > GET_CACHE_SIZE:
                self._get_cache.popitem(last=False)
            return record

        return d.addCallback(remember).addCallback(lambda rec: self._found(key, rec, layer))

    @staticmethod
    def _found(key: str, record: Record | None, layer: int) -> Any:
        if record is None:
            raise NotFound(f"no DHT record for {key!r} in layer {layer}")
        return record_as_dict(record, layer)

    def set_value(self, key: str, value: Any, expire: int | None = None,
                  record_type: str = records.SKIP_VALIDATION, layer_id: int = 0) -> Deferred:
        """Sign and store ``value`` under ``key`` (default lifetime a day); fires with the record."""
        dht = self._require()
        self.refresh_identity()
        if not dht.pubkey:
            raise Conflict("this node has no identity yet: create one before writing to the DHT")
        layer = check_layer_id(layer_id)
        d = dht.set_value(key, value, record_type, DEFAULT_EXPIRE if expire is None else expire, layer)

        def stored(record: Record) -> dict[str, Any]:
            for cached in [c for c in self._get_cache if c[:2] == (layer, key)]:
                del self._get_cache[cached]
            return record_as_dict(record, layer)

        return d.addCallback(stored)

    def local_dump(self) -> list[dict[str, Any]]:
        """Every unexpired record this node holds."""
        return self._require().local_dump()

    def routing_table(self, layer_id: int = 0) -> dict[str, Any]:
        """One layer's routing table (for network_status(dht=True))."""
        return self._require().routing_table(check_layer_id(layer_id))

    def join_layer(self, layer_id: int) -> Deferred:
        """Join a DHT layer (suppliers join theirs); fires with the layer's table size."""
        return self._require().join_layer(layer_id)


def record_as_dict(record: Record, layer: int) -> dict[str, Any]:
    """The API form of a record: its fields plus the layer it was found in."""
    return {"key": record.key, "value": record.value, "record_type": record.record_type, "layer_id": layer,
            "writer_pubkey": record.writer_pubkey, "created": record.created, "expires": record.expires,
            "seq": record.seq}
