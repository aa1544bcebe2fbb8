"""Hostile peers against running DHT nodes (in-process, on the simulated network): each attack of issue 14
items 5 and 6 is reproduced, the limit is shown to hold, and honest lookups still succeed."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.crypt.fastsign import generate_ed25519
from bitnode.dht import messages, records
from bitnode.dht.ids import Contact
from bitnode.dht.limits import DHTLimits
from tests.dht.simcluster import SimCluster
from tests.dht.strategies import PROPERTY, mutated_bytes, mutated_json

DAY = 24 * 3600
NICK = {"idurl": "http://id.local/alice.xml", "nickname": "alice"}
EVIL = {"idurl": "http://evil.local/mallory.xml", "nickname": "alice"}
MALLORY = generate_ed25519()
ALICE = generate_ed25519()  # no other simulated node shares it (they share a few keys)


class FirstComeTakeoverTests(unittest.TestCase):
    """Item 5: a first-come (nickname) record backdated with an old ``created``."""

    def setUp(self) -> None:
        self.c = SimCluster(24, seed=7)
        self.addCleanup(self.c.stop)
        self.reader = self.c.nodes[20]
        self.alice = self.c.add_node(key=ALICE)
        self.attacker = self.c.add_node(key=MALLORY)
        self.held = self.c.run(self.alice.set_value("nickname:alice", NICK, records.NICKNAME, expire=DAY))

    def backdated(self, age: int = 20 * DAY) -> records.Record:
        now = int(self.c.clock.seconds())
        return records.sign_record(MALLORY, "nickname:alice", EVIL, records.NICKNAME, now - age, now + DAY, 0)

    def store_everywhere(self, record: records.Record) -> list[str]:
        codes = []
        for node in self.c.live():
            if node is not self.attacker:
                reply = self.c.run(self.attacker._engine.request(node.address, messages.STORE,
                                                                 {"record": record.to_dict()}))
                codes.append(reply.body["code"])
        return codes

    def test_backdated_claim_is_refused_by_every_node_and_readers_keep_the_owner(self) -> None:
        codes = self.store_everywhere(self.backdated())
        self.assertEqual(set(codes), {"stale"})
        self.assertEqual(sum(n.stats()["store_refused_stale"] for n in self.c.nodes), len(codes))
        for reader in (self.reader, self.c.nodes[5], self.c.add_node()):
            self.assertEqual(self.c.run(reader.get_value("nickname:alice", records.NICKNAME)).value, NICK)

    def test_owner_renews_although_nodes_serve_a_planted_backdated_copy(self) -> None:
        # The nodes closest to the key serve the forgery (planted, as by nodes Mallory runs there).
        closest = sorted(self.c.holders("nickname:alice"), key=lambda n: n.node_id ^ self.held.key_id)
        planted = [n for n in closest if n not in (self.alice, self.reader)][:3]
        forged = self.backdated()
        for node in planted:
            node._store.put(0, "nickname:alice", forged.to_dict(), forged.expires)
        self.c.clock.advance(600)
        renewed = self.c.run(self.alice.set_value("nickname:alice", NICK, records.NICKNAME, expire=DAY))
        self.assertEqual(renewed.seq, self.held.seq + 1)
        honest = [n for n in self.c.holders("nickname:alice") if n not in planted]
        self.assertTrue(all(n._store.get(0, "nickname:alice").record == renewed.to_dict() for n in honest))

    def test_readers_outvote_a_few_lying_holders(self) -> None:
        closest = sorted(self.c.holders("nickname:alice"), key=lambda n: n.node_id ^ self.held.key_id)
        liars = [n for n in closest if n is not self.alice][:3]  # 3 of the 8 nodes nearest the key lie
        forged = self.backdated()
        for node in liars:
            node._store.put(0, "nickname:alice", forged.to_dict(), forged.expires)
        readers = [n for n in self.c.nodes if n not in liars]
        got = [self.c.run(r.get_value("nickname:alice", records.NICKNAME)).value for r in readers]
        self.assertEqual(got, [NICK] * len(readers))

    def test_fresh_claim_of_a_held_name_is_a_conflict(self) -> None:
        with self.assertRaises(records.RecordConflict):
            self.c.run(self.attacker.set_value("nickname:alice", EVIL, records.NICKNAME))
        self.assertEqual(self.c.run(self.reader.get_value("nickname:alice", records.NICKNAME)).value, NICK)

    def test_owner_republishes_a_fresh_signature_that_new_nodes_accept(self) -> None:
        self.c.net.run_for(3600 + 60)  # one republish round
        now = self.c.clock.seconds()
        copies = [records.Record.from_dict(r["record"]) for n in self.c.holders("nickname:alice")
                  for r in n.local_dump() if r["key"] == "nickname:alice"]
        self.assertTrue(all(r.writer_pubkey == self.alice.pubkey for r in copies))
        self.assertTrue(any(now - r.created < 120 and r.seq > self.held.seq for r in copies))
        newcomer = self.c.add_node()
        self.assertEqual(self.c.run(newcomer.get_value("nickname:alice", records.NICKNAME)).value, NICK)
        # With alice gone, her holders keep her copy but do not push it (too old) to nodes that would refuse it.
        self.c.kill(self.alice)
        self.c.net.run_for(2 * 3600)
        self.assertGreater(sum(n.stats()["replicate_skipped_stale"] for n in self.c.live()), 0)
        self.assertEqual(self.c.run(self.reader.get_value("nickname:alice", records.NICKNAME)).value, NICK)


class AmplificationTests(unittest.TestCase):
    """Item 6: small requests with a forged source address must not make nodes send big answers to it."""

    def setUp(self) -> None:
        self.c = SimCluster(20, seed=3)
        self.addCleanup(self.c.stop)
        self.big = self.c.run(self.c.nodes[2].set_value("app:big", {"blob": "x" * 5000}, records.SKIP_VALIDATION,
                                                          expire=DAY))
        self.victim = self.c.net.endpoint("10.66.0.1")
        self.received: list[bytes] = []
        self.victim.set_receiver(lambda data, addr: self.received.append(data))

    def spoof(self, node, kind: str, body: dict, rid: int) -> int:
        """Send ``kind`` to ``node`` as if from the victim; returns the bytes sent."""
        data = messages.encode(messages.Message(kind, format(rid, "016x"), messages.Sender(rid), body=body))
        self.c.net.transmit(self.victim.address, node.address, data)
        return len(data)

    def test_forged_find_value_and_find_node_get_no_more_than_three_times_their_size(self) -> None:
        sent = 0
        for i, node in enumerate(self.c.nodes):
            sent += self.spoof(node, messages.FIND_VALUE, {"key": "app:big"}, 2 * i + 1)
            sent += self.spoof(node, messages.FIND_NODE, {"target": self.big.key_id}, 2 * i + 2)
        self.c.net.run_for(1)
        # Every node answered each request (small), and some pinged the forged address once to check it.
        self.assertGreaterEqual(len(self.received), 2 * len(self.c.nodes))
        self.assertLessEqual(sum(map(len, self.received)), 3 * sent)
        self.assertTrue(all(len(d) <= 3 * 300 for d in self.received), max(map(len, self.received)))
        truncated = sum(n.stats()["replies_truncated_unverified"] for n in self.c.nodes)
        self.assertGreaterEqual(truncated, len(self.c.holders("app:big")))

    def test_newcomers_and_peers_with_expired_tokens_still_read_the_big_record_and_find_nodes(self) -> None:
        for reader in (self.c.add_node(), self.c.nodes[7], self.c.add_node()):
            self.c.clock.advance(2 * reader.limits.token_lifetime)  # every token and round trip so far is stale
            self.assertEqual(self.c.run(reader.get_value("app:big")), self.big)
            found = self.c.run(reader.find_node(self.big.key_id))
            self.assertEqual([int(x["id"], 16) for x in found], self.c.brute_closest(self.big.key_id, exclude=reader))
        self.assertGreater(sum(n.stats()["retried_with_token"] for n in self.c.nodes), 0)

    def test_forged_stores_are_not_executed(self) -> None:
        now = int(self.c.clock.seconds())
        for i, node in enumerate(self.c.nodes):
            rec = records.sign_record(generate_ed25519(), f"app:junk{i}", {"j": i}, records.SKIP_VALIDATION,
                                      now, now + DAY, 0)
            self.spoof(node, messages.STORE, {"record": rec.to_dict()}, i + 1)
        self.c.net.run_for(1)
        self.assertEqual([r["key"] for n in self.c.nodes for r in n.local_dump() if r["key"].startswith("app:junk")],
                         [])
        self.assertEqual(sum(n.stats()["stores_refused_unverified"] for n in self.c.nodes), len(self.c.nodes))


class FloodTests(unittest.TestCase):
    """Item 6: one machine flooding from many ports shares one per-IP budget; real peers get through."""

    def test_flood_from_many_ports_of_one_ip_is_limited_and_lookups_still_succeed(self) -> None:
        c = SimCluster(20, seed=4)
        self.addCleanup(c.stop)
        target = c.nodes[5]
        limits = target.limits
        ping = messages.encode(messages.Message(messages.PING, "00000000000000aa", messages.Sender(9)))
        handled = target.stats()["requests_handled"]
        for i in range(2000):  # 2000 datagrams from 1000 ports within 0.5 s
            c.clock.callLater(i / 4000, c.net.transmit, ("10.99.0.1", 20000 + i % 1000), target.address, ping)
        c.net.run_for(1)
        flood_handled = target.stats()["requests_handled"] - handled
        self.assertLessEqual(flood_handled, limits.burst_per_ip + limits.rate_per_ip * 1.0)
        self.assertGreaterEqual(target.stats()["rate_limited"], 2000 - flood_handled)
        for asker in (target, c.nodes[11]):
            for key in (target.node_id ^ 1, c.nodes[14].node_id):
                found = c.run(asker.find_node(key))
                self.assertEqual([int(x["id"], 16) for x in found], c.brute_closest(key, exclude=asker))
        self.assertEqual(c.run(c.nodes[3].set_value("app:ok", {"v": 1}, records.SKIP_VALIDATION)).value, {"v": 1})
        self.assertEqual(c.run(target.get_value("app:ok")).value, {"v": 1})


class StoreFillingTests(unittest.TestCase):
    """Item 6: a peer storing records without end fills neither one writer's share nor the store."""

    def setUp(self) -> None:
        self.c = SimCluster(12, seed=8)
        self.addCleanup(self.c.stop)
        limits = DHTLimits(writer_max_records=10, store_max_records=40, store_rate_per_ip=1000.0,
                           store_burst_per_ip=1000.0)
        self.victim = self.c.add_node(limits=limits)
        self.attacker = self.c.add_node(key=MALLORY)
        self.c.run(self.attacker.find_node(self.victim.node_id))  # a round trip: the victim takes its STOREs

    def flood(self, count: int, keys) -> list[str]:
        now = int(self.c.clock.seconds())
        codes = []
        for i in range(count):
            rec = records.sign_record(keys(i), f"app:fill{i}", {"i": i}, records.SKIP_VALIDATION, now,
                                      now + records.MAX_TTL, 0)
            reply = self.c.run(self.attacker._engine.request(self.victim.address, messages.STORE,
                                                             {"record": rec.to_dict()}))
            codes.append(reply.body["code"])
        return codes

    def held(self) -> int:
        return sum(1 for r in self.victim.local_dump() if r["key"].startswith("app:fill"))

    def test_one_writer_gets_its_quota_and_no_more(self) -> None:
        codes = self.flood(100, lambda i: MALLORY)
        self.assertEqual((codes.count("ok"), codes.count("quota")), (10, 90))
        self.assertEqual(self.held(), 10)
        self.assertEqual(self.victim.stats()["store_refused_quota"], 90)

    def test_many_writers_fill_the_store_up_to_its_cap_and_no_further(self) -> None:
        writers = [generate_ed25519() for _ in range(10)]
        codes = self.flood(100, lambda i: writers[i % 10])
        self.assertEqual(codes.count("ok"), 40)
        self.assertEqual(self.held(), 40)
        self.assertEqual(self.victim.stats()["store_refused_full"], 60)
        self.assertEqual(self.victim.stats()["held_for_others"]["records"], 40)
        # The node still serves, and its own writes and the network's records work.
        writer = self.c.nodes[3]
        stored = self.c.run(writer.set_value("app:honest", {"v": 1}, records.SKIP_VALIDATION))
        self.assertEqual(self.c.run(self.victim.get_value("app:honest")), stored)
        self.assertEqual(self.c.run(self.victim.set_value("app:victims", {"v": 2}, records.SKIP_VALIDATION)).seq, 0)

    def test_stores_from_one_ip_are_rate_limited(self) -> None:
        limits = DHTLimits(store_rate_per_ip=2.0, store_burst_per_ip=5.0)
        slow = self.c.add_node(limits=limits)
        self.c.run(self.attacker.find_node(slow.node_id))
        self.victim = slow
        codes = self.flood(20, lambda i: generate_ed25519())  # ~0.05 s of simulated time each
        self.assertLess(codes.count("ok"), 10)
        self.assertGreater(codes.count("busy"), 10)
        self.assertEqual(slow.stats()["stores_rate_limited"], codes.count("busy"))


class GarbageTests(unittest.TestCase):
    """Random and mutated datagrams of every kind, with a valid token (so STOREs reach the record parser)."""

    def setUp(self) -> None:
        self.c = SimCluster(6, seed=9, limits=DHTLimits(rate_per_ip=0, rate_total=0, store_rate_per_ip=0))
        self.node = self.c.nodes[2]
        self.token = self.node._engine._tokens.issue("10.7.7.7")
        now = int(self.c.clock.seconds())
        good = records.sign_record(ALICE, "nickname:alice", NICK, records.NICKNAME, now, now + DAY, 0)
        note = records.sign_record(ALICE, "app:n", {"v": [1, "x"]}, records.SKIP_VALIDATION, now, now + DAY, 0)
        sender = messages.Sender(77, "http://id.local/x.xml", (0, 3))
        self.samples = [
            messages.Message(messages.PING, "0000000000000001", sender, token=self.token),
            messages.Message(messages.FIND_NODE, "0000000000000002", sender, body={"target": 5}, token=self.token),
            messages.Message(messages.FIND_VALUE, "0000000000000003", sender, body={"key": "nickname:alice"},
                             token=self.token),
            messages.Message(messages.STORE, "0000000000000004", sender, body={"record": good.to_dict()},
                             token=self.token),
            messages.Message(messages.STORE, "0000000000000005", sender, 3, body={"record": note.to_dict()},
                             token=self.token),
            messages.Message(messages.NODES, "0000000000000006", sender,
                             body={"contacts": (Contact(9, "10.1.1.1", 7000),)}),
            messages.Message(messages.VALUE, "0000000000000007", sender, body={"record": good.to_dict()}),
        ]

        self.addCleanup(self.c.stop)

    def feed(self, data: bytes) -> None:
        self.node._engine.datagram_received(data, ("10.7.7.7", 7000))

    @PROPERTY
    @given(st.data())
    def test_mutated_datagrams_of_every_kind_never_break_the_node(self, data: st.DataObject) -> None:
        msg = data.draw(st.sampled_from(self.samples))
        wire_bytes = messages.encode(msg)
        self.feed(data.draw(mutated_bytes(wire_bytes)))
        self.feed(json.dumps(data.draw(mutated_json(json.loads(wire_bytes)))).encode())
        self.feed(data.draw(st.binary(max_size=300)))
        self.assertEqual(self.node.stats()["handler_errors"], 0)

    def test_the_node_still_serves_after_the_garbage(self) -> None:
        for i in range(3):
            self.feed(messages.encode(self.samples[i]))
        found = self.c.run(self.c.nodes[4].find_node(self.node.node_id))
        self.assertEqual(int(found[0]["id"], 16), self.node.node_id)
        self.assertEqual(self.node.stats()["handler_errors"], 0)
