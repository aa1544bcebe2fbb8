"""Tests for bitnode.dht.lookup: iterative FIND_NODE / FIND_VALUE over a fake network."""

from __future__ import annotations

import random

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.dht import messages
from bitnode.dht.ids import Contact
from bitnode.dht.lookup import IterativeLookup, LookupResult
from bitnode.dht.messages import Message, Sender
from bitnode.dht.routing import RoutingTable
from bitnode.errors import Timeout

K = 4


class FakeNetwork:
    """Nodes with real routing tables; queries answered after 10 ms from each node's own table."""

    def __init__(self, clock: Clock, count: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.clock = clock
        self.ids = [rng.getrandbits(256) for _ in range(count)]
        self.contacts = {i: Contact(i, "10.0.0.1", n + 1) for n, i in enumerate(self.ids)}
        self.tables: dict[int, RoutingTable] = {}
        for i in self.ids:
            table = self.tables[i] = RoutingTable(i, clock, k=K)
            for j in self.ids:
                table.add(self.contacts[j])
        self.dead: set[int] = set()
        self.layers: dict[int, tuple[int, ...]] = {}
        self.values: dict[int, object] = {}
        self.impostor: set[int] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.asked: list[int] = []

    def query(self, target: int, find_value: bool = False):
        def send(contact: Contact) -> Deferred:
            self.asked.append(contact.node_id)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            d: Deferred = Deferred()
            self.clock.callLater(0.01, self._answer, d, contact.node_id, target, find_value)
            return d

        return send

    def _answer(self, d: Deferred, node_id: int, target: int, find_value: bool) -> None:
        self.in_flight -= 1
        if node_id in self.dead:
            d.errback(Timeout("dead"))
            return
        layers = self.layers.get(node_id, (0,))
        sender = Sender(node_id + 1 if node_id in self.impostor else node_id, "", layers)
        if find_value and node_id in self.values:
            d.callback(Message(messages.VALUE, "0" * 16, sender, body={"record": self.values[node_id]}))
            return
        closest = self.tables[node_id].closest(target, K)
        d.callback(Message(messages.NODES, "0" * 16, sender, body={"contacts": tuple(closest)}))

    def brute(self, target: int, exclude: int, count: int = K, alive_only: bool = True) -> list[int]:
        pool = [i for i in self.ids if i != exclude and not (alive_only and i in self.dead)]
        return sorted(pool, key=lambda i: i ^ target)[:count]


class LookupTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.net = FakeNetwork(self.clock, 120)
        self.me = self.net.ids[0]

    def run_lookup(self, target: int, **kw: object) -> LookupResult:
        seeds = self.net.tables[self.me].closest(target, K)
        lookup = IterativeLookup(target=target, seeds=seeds, query=self.net.query(target, kw.get("find_value", False)),
                                 clock=self.clock, own_id=self.me, k=K, alpha=kw.pop("alpha", 2), **kw)
        d = lookup.start()
        for _ in range(2000):
            if d.called:
                break
            self.clock.advance(0.01)
        return self.successResultOf(d)

    def test_find_node_converges_on_the_true_k_closest(self) -> None:
        rng = random.Random(7)
        for _ in range(20):
            target = rng.getrandbits(256)
            result = self.run_lookup(target)
            self.assertEqual([c.node_id for c in result.contacts], self.net.brute(target, self.me))
            self.assertNotIn(self.me, [c.node_id for c in result.contacts])
            self.assertGreaterEqual(result.hops, 1)
            self.assertEqual(result.failed, 0)
            self.assertAlmostEqual(result.elapsed, 0.01 * round(result.elapsed / 0.01))

    def test_at_most_alpha_requests_in_flight(self) -> None:
        self.run_lookup(random.Random(3).getrandbits(256), alpha=3)
        self.assertEqual(self.net.max_in_flight, 3)

    def test_dead_nodes_are_skipped_and_left_out(self) -> None:
        target = random.Random(8).getrandbits(256)
        seeds = [c.node_id for c in self.net.tables[self.me].closest(target, K)]
        dead = seeds[:2] + self.net.brute(target, self.me, count=1)
        self.net.dead.update(dead)
        for node_id, table in self.net.tables.items():
            if node_id != self.me:  # the others already evicted them; our seeds still hold them
                for d in dead:
                    table.remove(d)
        result = self.run_lookup(target)
        self.assertEqual([c.node_id for c in result.contacts], self.net.brute(target, self.me))
        self.assertGreaterEqual(result.failed, 2)

    def test_answer_from_a_different_id_counts_as_failure(self) -> None:
        target = random.Random(9).getrandbits(256)
        closest = self.net.brute(target, self.me, count=1)[0]
        self.net.impostor.add(closest)
        result = self.run_lookup(target)
        self.assertNotIn(closest, [c.node_id for c in result.contacts])

    def test_find_value_stops_early_and_names_a_cache_node(self) -> None:
        target = random.Random(10).getrandbits(256)
        holders = self.net.brute(target, self.me, count=K)[1:]  # every close node but the closest has it
        for h in holders:
            self.net.values[h] = {"v": h}
        result = self.run_lookup(target, find_value=True, accept=lambda rec: rec["v"])
        self.assertTrue(result.values)
        self.assertTrue(all(v in holders for _, v in result.values))
        self.assertLess(result.queried, len(self.net.ids))
        if result.cache_at is not None:
            self.assertNotIn(result.cache_at.node_id, holders)

    def test_find_value_can_collect_copies_from_all_the_k_closest(self) -> None:
        target = random.Random(10).getrandbits(256)
        holders = self.net.brute(target, self.me, count=K)
        for h in holders:
            self.net.values[h] = {"v": h}
        one = self.run_lookup(target, find_value=True, accept=lambda rec: rec["v"])
        every = self.run_lookup(target, find_value=True, accept=lambda rec: rec["v"], values_wanted=K)
        self.assertLess(len(one.values), K)
        self.assertEqual(sorted(v for _, v in every.values), sorted(holders))

    def test_one_answer_cannot_aim_the_lookup_at_many_ports_of_one_foreign_host(self) -> None:
        liar = Contact(1, "10.0.0.9", 7000)
        victims = tuple(Contact(100 + i, "10.66.0.1", 1000 + i) for i in range(20))
        neighbours = tuple(Contact(200 + i, "10.0.0.9", 2000 + i) for i in range(5))  # the liar's own host
        asked: list[Contact] = []

        def query(contact: Contact) -> Deferred:
            asked.append(contact)
            body = {"contacts": victims + neighbours} if contact is liar else {"contacts": ()}
            return succeed(Message(messages.NODES, "0" * 16, Sender(contact.node_id), body=body))

        lookup = IterativeLookup(target=0, seeds=[liar], query=query, clock=self.clock, own_id=2**200, k=40)
        result = self.successResultOf(lookup.start())
        self.assertEqual(sum(1 for c in asked if c.host == "10.66.0.1"), 2)
        self.assertEqual(sum(1 for c in asked if c.host == "10.0.0.9"), 6)
        self.assertEqual(result.skipped, 18)

    def test_rejected_value_does_not_stop_the_lookup(self) -> None:
        target = random.Random(11).getrandbits(256)
        forger, honest = self.net.brute(target, self.me, count=2)
        self.net.values[forger] = {"v": "forged"}
        self.net.values[honest] = {"v": "good"}
        result = self.run_lookup(target, find_value=True, accept=lambda rec: rec["v"] if rec["v"] == "good" else None)
        self.assertEqual([v for _, v in result.values], ["good"])

    def test_find_value_without_value_behaves_like_find_node(self) -> None:
        target = random.Random(12).getrandbits(256)
        result = self.run_lookup(target, find_value=True, accept=lambda rec: rec)
        self.assertEqual(result.values, ())
        self.assertIsNone(result.cache_at)
        self.assertEqual([c.node_id for c in result.contacts], self.net.brute(target, self.me))

    def test_max_queries_caps_the_lookup(self) -> None:
        result = self.run_lookup(random.Random(13).getrandbits(256), max_queries=3)
        self.assertEqual(result.queried, 3)

    def test_layer_lookup_returns_only_confirmed_members(self) -> None:
        members = self.net.ids[60:75]
        for m in members:
            self.net.layers[m] = (0, 5)
        target = random.Random(14).getrandbits(256)
        result = self.run_lookup(target, layer=5)
        got = [c.node_id for c in result.contacts]
        self.assertTrue(got)
        self.assertTrue(set(got) <= set(members))
        self.assertTrue(all(c.in_layer(5) for c in result.contacts))

    def test_layer_lookup_with_no_members_stops_after_max_relays(self) -> None:
        result = self.run_lookup(random.Random(15).getrandbits(256), layer=9, max_relays=10)
        self.assertEqual(result.contacts, ())
        self.assertLessEqual(result.queried, 10 + 2)  # the cap plus what alpha had in flight

    def test_no_seeds_finishes_at_once_and_sync_failures_finish_once(self) -> None:
        lookup = IterativeLookup(target=1, seeds=[], query=lambda c: fail(Timeout("x")), clock=self.clock,
                                 own_id=self.me)
        self.assertEqual(self.successResultOf(lookup.start()).contacts, ())
        seeds = [self.net.contacts[i] for i in self.net.ids[1:10]]
        lookup = IterativeLookup(target=1, seeds=seeds, query=lambda c: fail(Timeout("x")), clock=self.clock,
                                 own_id=self.me)
        result = self.successResultOf(lookup.start())
        self.assertEqual((result.failed, result.contacts), (9, ()))
