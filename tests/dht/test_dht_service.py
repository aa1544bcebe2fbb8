"""Tests for bitnode.dht.dht_service (service_entangled_dht) and the dht_* API methods, on loopback UDP."""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from bitnode.app import api_server
from bitnode.crypt.fastsign import generate_ed25519
from bitnode.dht import records
from bitnode.dht.dht_service import DHTService, parse_seed
from bitnode.errors import BadRequest, Conflict, NotFound, Unavailable
from bitnode.interface.api_dht import DHTMethods
from bitnode.main.basedir import Basedir
from bitnode.main.events import EventBus
from bitnode.main.schema import SCHEMA
from bitnode.main.settings import Settings
from bitnode.services.deps import Deps
from bitnode.userid.id_service import IdentityService
from tests.interface.support import start_node

FAST = {"services/entangled-dht/udp-port": 0, "services/entangled-dht/rpc-timeout": 0.3}


class FakeIdentity:
    """What the DHT uses of service_identity."""

    def __init__(self, name: str) -> None:
        self.key = generate_ed25519()
        self.idurl = f"http://127.0.0.1:8084/{name}.xml"

    def packet_private_key(self):
        return self.key

    def my_idurl(self) -> str:
        return self.idurl


class FakeDriver:
    def __init__(self) -> None:
        self.services: dict = {}

    def running(self, kind: type):
        if kind.name not in self.services:
            raise Unavailable(f"{kind.name} is not running (OFF)")
        return self.services[kind.name]

    def is_on(self, name: str) -> bool:
        return name in self.services

    def get(self, name: str):
        return self.services[name]

    def names(self) -> list[str]:
        return ["service_entangled_dht"]

    def info(self, name: str) -> dict:
        return {"name": name, "state": "ON" if name in self.services else "OFF"}


class FakeNode:
    """basedir, settings, reactor/clock, events, threads (inline) and a service driver."""

    def __init__(self, root: str, overrides: dict | None = None) -> None:
        self.basedir = Basedir.at(root)
        self.basedir.create()
        self.settings = Settings(self.basedir.settings_file, SCHEMA, dict(FAST, **(overrides or {})))
        for option in DHTService.options:
            self.settings.register(option)
        self.reactor = self.clock = reactor
        self.events = EventBus(reactor)
        self.service_driver = FakeDriver()

    def run_in_thread(self, fn, *args, **kwargs) -> defer.Deferred:
        return defer.maybeDeferred(fn, *args, **kwargs)


class Api(DHTMethods):
    def __init__(self, node) -> None:
        self.node = node


class DHTServiceTests(unittest.TestCase):
    async def start(self, name: str, seeds: list[str] = (), identity: bool = True, **settings) -> DHTService:
        node = FakeNode(self.mktemp(), {"services/entangled-dht/known-nodes": list(seeds), **settings})
        if identity:
            node.service_driver.services["service_identity"] = FakeIdentity(name)
        service = DHTService(node)
        services = node.service_driver.services  # read at each use: an identity may appear later
        service.deps = Deps(DHTService.name, {"identity": "service_identity"}, {}, (), services.get,
                            services.__contains__)
        node.service_driver.services[DHTService.name] = service
        await service.start()
        self.addCleanup(service.stop)
        return service

    def seed_of(self, service: DHTService) -> str:
        host, port = service.dht.address
        return f"{host}:{port}"

    async def test_set_on_one_get_from_another_through_the_api(self) -> None:
        a = await self.start("alice")
        b = await self.start("bob", [self.seed_of(a)])
        self.assertEqual(await b.bootstrap(), 1)
        api_a, api_b = Api(a.ctx), Api(b.ctx)
        stored = await api_a.dht_value_set("abcd", {"text": "A-B-C-D"})
        self.assertEqual((stored["key"], stored["value"], stored["record_type"]), ("abcd", {"text": "A-B-C-D"},
                                                                                   "skip_validation"))
        self.assertEqual(stored["expires"] - stored["created"], 24 * 3600)
        got = await api_b.dht_value_get("abcd")
        self.assertEqual(got, stored)
        nick = await api_a.dht_value_set("nickname:alice", {"idurl": a.ctx.service_driver.get(
            "service_identity").idurl, "nickname": "alice"}, expire=60, record_type="nickname")
        self.assertEqual((await api_b.dht_value_get("nickname:alice"))["value"], nick["value"])  # any type
        self.assertEqual((await api_b.dht_value_get("nickname:alice", "nickname"))["seq"], 0)
        with self.assertRaises(NotFound):
            await api_b.dht_value_get("nickname:alice", "identity")
        with self.assertRaises(NotFound):
            await api_b.dht_value_get("missing")
        dump = api_b.dht_local_db_dump()
        self.assertEqual(sorted(r["key"] for r in dump), ["abcd", "nickname:alice"])
        with self.assertRaises(records.RecordConflict):
            await api_b.dht_value_set("nickname:alice", {"idurl": "http://x/bob.xml", "nickname": "alice"},
                                      record_type="nickname")

    async def test_found_nodes_and_random_users_carry_the_idurl(self) -> None:
        a = await self.start("alice")
        b = await self.start("bob", [self.seed_of(a)])
        await b.bootstrap()
        api_b = Api(b.ctx)
        users = await api_b.dht_user_random(count=3)
        self.assertEqual([u["user"] for u in users], ["http://127.0.0.1:8084/alice.xml"])
        found = await api_b.dht_node_find(format(a.dht.node_id, "064x"))
        self.assertEqual(found["closest_nodes"][0]["id"], format(a.dht.node_id, "064x"))
        self.assertEqual(found["my_dht_id"], format(b.dht.node_id, "064x"))
        self.assertEqual(len((await api_b.dht_node_find())["lookup"]), 64)
        for bad in ("4271c8f079695d77f80186ac9365e3df949ff74d", "zz" * 32, 5):
            self.assertRaises(BadRequest, api_b.dht_node_find, bad)
        self.assertRaises(BadRequest, api_b.dht_user_random, -1)
        status = b.status()
        self.assertEqual((status["contacts"]["0"], status["can_write"]), (1, True))
        self.assertEqual(status["routing_tables"]["0"]["size"], 1)

    async def test_limits_are_settings_and_their_counters_show_in_the_status(self) -> None:
        a = await self.start("alice", **{"services/entangled-dht/rate-limit-per-ip": 7.0,
                                         "services/entangled-dht/first-come-max-age": 120.0})
        self.assertEqual((a.dht.limits.rate_per_ip, a.dht.limits.first_come_max_age), (7.0, 120.0))
        self.assertEqual(a.dht.limits.unverified_reply_factor, 3.0)  # defaults for the rest
        status = a.status()
        for counter in ("rate_limited", "rate_limited_total", "replies_truncated_unverified",
                        "stores_refused_unverified", "store_refused_stale"):
            self.assertEqual(status[counter], 0, counter)
        self.assertEqual(status["limits"]["rate_per_ip"], 7.0)

    async def test_cached_answers_within_use_cache_ttl(self) -> None:
        a = await self.start("alice")
        api = Api(a.ctx)
        await api.dht_value_set("app:c", 1, expire=600)
        self.assertEqual((await api.dht_value_get("app:c", use_cache_ttl=60))["value"], 1)
        a.dht._store.delete(0, "app:c")  # gone locally: only the cache still knows it
        self.assertEqual((await api.dht_value_get("app:c", use_cache_ttl=60))["value"], 1)
        with self.assertRaises(NotFound):
            await api.dht_value_get("app:c")
        self.assertRaises(BadRequest, api.dht_value_get, "app:c", use_cache_ttl=-5)

    async def test_without_identity_reads_work_and_writes_wait_for_a_key(self) -> None:
        a = await self.start("alice", identity=False)
        api = Api(a.ctx)
        self.assertRaises(Conflict, api.dht_value_set, "app:x", 1)
        self.assertFalse(a.status()["can_write"])
        a.ctx.service_driver.services["service_identity"] = FakeIdentity("alice")
        a.ctx.events.publish("my-identity-created", {})
        self.assertTrue(a.status()["can_write"])
        self.assertEqual(a.dht._user, "http://127.0.0.1:8084/alice.xml")
        self.assertEqual((await api.dht_value_set("app:x", 1))["value"], 1)

    async def test_node_id_persists_across_restarts(self) -> None:
        a = await self.start("alice")
        first = a.dht.node_id
        await a.stop()
        self.assertIsNone(a.dht)
        self.assertRaises(Unavailable, Api(a.ctx).dht_local_db_dump)
        await a.start()
        self.assertEqual(a.dht.node_id, first)
        with open(a.id_file) as f:
            self.assertEqual(f.read().strip(), format(first, "064x"))
        self.assertEqual(oct(os.stat(os.path.dirname(a.id_file)).st_mode & 0o777), "0o700")

    async def test_unreachable_seed_is_reported_and_retried(self) -> None:
        a = await self.start("alice", ["127.0.0.1:9", "not-a-seed"])
        with self.assertRaises(Unavailable):
            await a.bootstrap()
        self.assertIn("no DHT bootstrap seed answered", a.status()["last_bootstrap_error"])
        b = await self.start("bob")
        a.ctx.settings.set("services/entangled-dht/known-nodes", [self.seed_of(b)])
        await a.bootstrap()
        self.assertEqual(a.status()["last_bootstrap_error"], "")
        self.assertEqual(a.status()["contacts"]["0"], 1)

    def test_api_answers_503_when_the_service_is_off(self) -> None:
        api = Api(FakeNode(self.mktemp()))
        self.assertRaises(Unavailable, api.dht_value_get, "abcd")
        self.assertRaises(Unavailable, api.dht_user_random)

    def test_parse_seed(self) -> None:
        self.assertEqual(parse_seed("127.0.0.1:14441"), ("127.0.0.1", 14441))
        self.assertEqual(parse_seed(" seed.example.net:7 "), ("seed.example.net", 7))
        self.assertEqual(parse_seed("[::1]:7"), ("::1", 7))
        for bad in ("127.0.0.1", ":7", "host:0", "host:99999", "host:x"):
            self.assertRaises(BadRequest, parse_seed, bad)


class RealNodeTests(unittest.TestCase):
    """service_entangled_dht inside a real Node started by the service driver."""

    @defer.inlineCallbacks
    def test_two_nodes_join_through_known_nodes(self):
        a = yield start_node(self, (IdentityService, DHTService), dict(FAST))
        self.assertTrue(a.service_driver.is_on("service_entangled_dht"))
        host, port = a.service_driver.get("service_entangled_dht").dht.address
        b = yield start_node(self, (IdentityService, DHTService),
                             dict(FAST, **{"services/entangled-dht/known-nodes": [f"{host}:{port}"]}))
        service_b = b.service_driver.get("service_entangled_dht")
        yield service_b.bootstrap()
        found = yield api_server(b).api.dht_node_find()
        self.assertEqual(len(found["closest_nodes"]), 1)
        self.assertEqual(api_server(b).api.dht_local_db_dump(), [])
        self.assertRaises(Conflict, api_server(b).api.dht_value_set, "abcd", {"text": "no identity yet"})
