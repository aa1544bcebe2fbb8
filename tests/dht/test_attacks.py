"""Hostile peers against running DHT nodes (in-process, on the simulated network): each attack of issue 14
items 5 and 6 is reproduced, the limit is shown to hold, and honest lookups still succeed."""

from __future__ import annotations

from twisted.trial import unittest

from bitnode.crypt.fastsign import generate_ed25519
from bitnode.dht import messages, records
from tests.dht.simcluster import SimCluster

DAY = 24 * 3600
NICK = {"idurl": "http://id.local/alice.xml", "nickname": "alice"}
EVIL = {"idurl": "http://evil.local/mallory.xml", "nickname": "alice"}
MALLORY = generate_ed25519()


class FirstComeTakeoverTests(unittest.TestCase):
    """Item 5: a first-come (nickname) record backdated with an old ``created``."""

    def setUp(self) -> None:
        self.c = SimCluster(24, seed=7)
        self.addCleanup(self.c.stop)
        self.alice, self.reader = self.c.nodes[1], self.c.nodes[20]
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
