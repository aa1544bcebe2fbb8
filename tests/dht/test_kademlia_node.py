"""Tests for bitnode.dht.kademlia_node: the DHTNode facade on a small simulated network."""

from __future__ import annotations

import json

from twisted.trial import unittest

from bitnode.dht import messages, records
from bitnode.dht.ids import Contact, key_to_id
from bitnode.dht.kademlia_node import DHTNode
from bitnode.dht.records import InvalidRecord, RecordConflict
from bitnode.errors import BadRequest, Conflict, NotFound, Unavailable
from tests.dht.simcluster import KEYS, SimCluster

NICK = {"idurl": "http://id.local/alice.xml", "nickname": "alice"}


class DHTNodeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.c = SimCluster(8, seed=2)
        self.addCleanup(self.c.stop)
        self.a, self.b = self.c.nodes[1], self.c.nodes[6]

    def test_bootstrap_fills_routing_tables(self) -> None:
        self.c.net.run_for(1)  # the pings that prove the last newcomers' addresses
        for node in self.c.nodes:
            self.assertEqual(sum(len(b["contacts"]) for b in node.routing_table()["buckets"]), 7)
            self.assertEqual(node.stats()["contacts"]["0"], 7)

    def test_contacts_known_from_elsewhere_enter_the_table_and_count_in_routing_state(self) -> None:
        self.c.net.run_for(1)
        fresh = self.c.add_node(bootstrap=False)
        self.assertEqual(fresh.routing_state(), {"contacts": 0, "replacements": 0, "buckets": 1,
                                                 "pending_requests": 0})
        known = [Contact(n.node_id, *n.address) for n in self.c.nodes[:5]]
        self.assertEqual(fresh.add_contacts(known + known[:2]), 5)  # the repeated two are updates
        self.assertEqual(fresh.routing_state()["contacts"], 5)
        found = self.c.run(fresh.find_node(self.c.nodes[7].node_id))
        self.assertEqual(int(found[0]["id"], 16), self.c.nodes[7].node_id)
        with self.assertRaises(NotFound):
            fresh.add_contacts(known, layer_id=5)

    def test_first_node_bootstraps_alone_and_dead_seeds_fail(self) -> None:
        lonely = self.c.add_node(bootstrap=False)
        self.assertEqual(self.c.run(lonely.bootstrap([lonely.address])), 0)
        self.assertEqual(self.c.run(lonely.bootstrap([])), 0)
        self.c.net.set_down("10.9.9.9")
        with self.assertRaises(Unavailable):
            self.c.run(lonely.bootstrap([("10.9.9.9", 7000)]))

    def test_set_on_one_get_from_another(self) -> None:
        record = self.c.run(self.a.set_value("nickname:alice", NICK, records.NICKNAME, expire=600))
        self.assertEqual((record.value, record.seq, record.writer_pubkey), (NICK, 0, self.a.pubkey))
        got = self.c.run(self.b.get_value("nickname:alice", records.NICKNAME))
        self.assertEqual(got, record)
        self.assertEqual(self.c.run(self.b.get_value("nickname:alice")), record)
        self.assertIsNone(self.c.run(self.b.get_value("nickname:alice", records.IDENTITY)))
        self.assertIsNone(self.c.run(self.b.get_value("nickname:nobody")))
        self.assertEqual(len(self.c.holders("nickname:alice")), 8)

    def test_same_writer_updates_with_higher_seq(self) -> None:
        self.c.run(self.a.set_value("app:note", {"v": 1}, records.SKIP_VALIDATION))
        self.c.clock.advance(5)
        second = self.c.run(self.a.set_value("app:note", {"v": 2}, records.SKIP_VALIDATION))
        self.assertEqual(second.seq, 1)
        self.assertEqual(self.c.run(self.b.get_value("app:note")).value, {"v": 2})

    def test_other_writer_cannot_take_a_held_nickname(self) -> None:
        self.c.run(self.a.set_value("nickname:alice", NICK, records.NICKNAME))
        taker = self.c.nodes[2]
        self.assertNotEqual(taker.pubkey, self.a.pubkey)
        with self.assertRaises(RecordConflict):
            self.c.run(taker.set_value("nickname:alice", dict(NICK, idurl="http://id.local/eve.xml"), "nickname"))
        self.assertEqual(self.c.run(self.b.get_value("nickname:alice")).value, NICK)

    def test_skip_validation_records_are_last_writer_wins(self) -> None:
        self.c.run(self.a.set_value("abcd", {"text": "A"}, records.SKIP_VALIDATION))
        self.c.clock.advance(2)
        self.c.run(self.c.nodes[2].set_value("abcd", {"text": "B"}, records.SKIP_VALIDATION))
        self.assertEqual(self.c.run(self.b.get_value("abcd")).value, {"text": "B"})

    def test_bad_values_are_refused_before_any_traffic(self) -> None:
        sent = self.a.stats()["sent"]
        self.failureResultOf(self.a.set_value("nickname:alice", dict(NICK, nickname="bob"), "nickname"),
                             InvalidRecord)
        self.failureResultOf(self.a.set_value("app:x", 1, records.SKIP_VALIDATION, expire=0), BadRequest)
        self.failureResultOf(self.a.set_value("app:x", 1, "weird"), InvalidRecord)
        self.failureResultOf(self.a.get_value("app:x", "weird"), BadRequest)
        self.assertRaises(BadRequest, self.a.set_value, "app:x", 1, records.SKIP_VALIDATION, 60, -1)
        self.assertRaises(BadRequest, self.a.set_value, "app:x", 1, records.SKIP_VALIDATION, "60")
        self.assertEqual(self.a.stats()["sent"], sent)

    def test_forged_store_is_rejected_and_counted(self) -> None:
        good = records.sign_record(KEYS[3], "app:f", {"v": 1}, records.SKIP_VALIDATION,
                                   int(self.c.clock.seconds()), int(self.c.clock.seconds()) + 60, 0)
        forged = dict(good.to_dict(), value={"v": 2})
        d = self.a._engine.request(self.b.address, messages.STORE, {"record": forged})
        reply = self.c.run(d)
        self.assertEqual((reply.body["ok"], reply.body["code"]), (False, "invalid"))
        self.assertEqual(self.b.stats()["store_rejected"], 1)
        self.assertEqual(self.b.local_dump(), [])

    def test_store_in_a_layer_we_did_not_join_is_refused(self) -> None:
        rec = records.sign_record(KEYS[0], "app:l", 1, records.SKIP_VALIDATION, int(self.c.clock.seconds()),
                                  int(self.c.clock.seconds()) + 60, 0)
        reply = self.c.run(self.a._engine.request(self.b.address, messages.STORE, {"record": rec.to_dict()}, 3))
        self.assertEqual(reply.body["code"], "layer")

    def test_find_node_returns_k_closest_contact_dicts_without_self(self) -> None:
        found = self.c.run(self.a.find_node(self.b.node_id))
        ids = [int(c["id"], 16) for c in found]
        self.assertEqual(ids, self.c.brute_closest(self.b.node_id, exclude=self.a))
        self.assertEqual(ids[0], self.b.node_id)
        self.assertEqual(found[0]["user"], "http://id.local/node6.xml")
        self.assertEqual(self.c.run(self.a.find_node(format(self.b.node_id, "064x")))[0]["id"], found[0]["id"])
        self.assertNotIn(self.a.node_id, [int(c["id"], 16) for c in self.c.run(self.a.find_node())])
        self.assertRaises(BadRequest, self.a.find_node, "xyz")
        self.assertRaises(BadRequest, self.a.find_node, -1)
        self.assertRaises(BadRequest, self.a.find_node, 2**256)

    def test_random_nodes(self) -> None:
        picked = self.c.run(self.a.random_nodes(count=3))
        self.assertEqual(len(picked), 3)
        self.assertEqual(len({p["id"] for p in picked}), 3)
        self.assertNotIn(format(self.a.node_id, "064x"), [p["id"] for p in picked])
        self.assertEqual(len(self.c.run(self.a.random_nodes(count=50))), 7)
        self.assertRaises(BadRequest, self.a.random_nodes, 0, 0)

    def test_layers_and_routing_table_snapshot(self) -> None:
        self.assertRaises(NotFound, self.a.routing_table, 4)
        self.c.run(self.a.join_layer(4))
        self.c.run(self.b.join_layer(4))
        self.assertEqual(self.a.layers, (0, 4))
        snap = json.loads(json.dumps(self.a.routing_table(4)))
        self.assertEqual(snap["layer"], 4)
        self.assertEqual([c["id"] for b in snap["buckets"] for c in b["contacts"]], [format(self.b.node_id, "064x")])
        members = {format(n.node_id, "064x") for n in (self.a, self.b)}
        for asker in (self.c.nodes[3], self.a):  # a non-member and a member
            picked = self.c.run(asker.random_nodes(layer_id=4, count=5))
            self.assertEqual({p["id"] for p in picked}, members - {format(asker.node_id, "064x")})
        self.assertRaises(BadRequest, self.a.join_layer, -1)

    def test_value_set_in_a_layer_is_not_visible_in_another(self) -> None:
        for n in self.c.nodes[:5]:
            self.c.run(n.join_layer(2))
        self.c.run(self.a.set_value("nickname:alice", {"idurl": "http://id.local/alice.xml", "nickname": "alice"},
                                    records.NICKNAME, layer_id=2))
        self.assertEqual(self.c.run(self.c.nodes[3].get_value("nickname:alice", layer_id=2)).value["nickname"], "alice")
        self.assertIsNone(self.c.run(self.c.nodes[3].get_value("nickname:alice", layer_id=0)))
        self.assertTrue(all(r["layer"] == 2 for n in self.c.nodes for r in n.local_dump()))

    def test_get_value_caches_at_the_closest_node_without_it(self) -> None:
        self.c.run(self.a.set_value("app:c", {"v": 1}, records.SKIP_VALIDATION))
        closest = min((n for n in self.c.nodes if n not in (self.a, self.b)), key=lambda n: n.node_id ^ key_to_id("app:c"))
        closest._store.delete(0, "app:c")  # as if it had joined after the value was stored
        self.assertEqual(self.c.run(self.b.get_value("app:c")).value, {"v": 1})
        self.c.net.run_for(1)
        self.assertEqual([r["record"]["value"] for r in closest.local_dump()], [{"v": 1}])

    def test_local_dump_and_stats(self) -> None:
        self.c.run(self.a.set_value("app:d", [1, 2], records.SKIP_VALIDATION, expire=60))
        dump = self.b.local_dump()
        self.assertEqual([(r["key"], r["own"], r["record"]["value"]) for r in dump], [("app:d", False, [1, 2])])
        mine = self.a.local_dump()
        self.assertTrue(mine[0]["own"])
        stats = self.a.stats()
        self.assertGreater(stats["lookups"], 0)
        self.assertGreater(stats["lookup_hops_avg"], 0)
        self.assertEqual(stats["records"], 1)
        self.assertEqual(key_to_id("app:d"), records.Record.from_dict(dump[0]["record"]).key_id)

    def test_stop_is_idempotent_and_later_calls_fail(self) -> None:
        d = self.a.get_value("app:zz")
        self.successResultOf(self.a.stop())
        self.successResultOf(self.a.stop())
        self.assertIsNone(self.c.run(d))  # the lookup in flight ends cleanly
        self.failureResultOf(self.a.get_value("app:zz"), Unavailable)
        self.failureResultOf(self.a.set_value("app:zz", 1, records.SKIP_VALIDATION), Unavailable)
        self.failureResultOf(self.a.find_node(), Unavailable)
        self.assertEqual(self.a.stats()["records"], 0)

    def test_stale_buckets_are_refreshed_and_dead_contacts_dropped(self) -> None:
        before = len(self.a.lookups)
        self.c.kill(self.b)
        self.c.net.run_for(3600)
        self.assertEqual(len(self.a.lookups), before)  # checked every 30 min; nothing is an hour old yet
        self.c.net.run_for(1800 + 10)  # + the RPC timeouts of the lookups that ask the dead node
        self.assertGreater(len(self.a.lookups), before)
        now = self.c.clock.seconds()
        self.c.run(self.a.find_node())  # a second unanswered request drops it (max_failures=2)
        table = self.a.routing_table()
        self.assertTrue(all(now - b["last_touched"] < 3600 for b in table["buckets"]))
        ids = [c["id"] for b in table["buckets"] for c in b["contacts"]]
        self.assertNotIn(format(self.b.node_id, "064x"), ids)
        self.assertEqual(len(ids), 6)
        self.assertGreater(self.a.stats()["timeouts"], 0)

    def test_node_without_signing_key_reads_but_cannot_write_until_given_one(self) -> None:
        self.c.run(self.a.set_value("app:k", 1, records.SKIP_VALIDATION))
        keyless = self.c.add_node(key=None)
        keyless.set_signer_key(None)
        self.assertEqual(keyless.pubkey, "")
        self.assertEqual(self.c.run(keyless.get_value("app:k")).value, 1)
        self.failureResultOf(keyless.set_value("app:k2", 2, records.SKIP_VALIDATION), Conflict)
        keyless.set_signer_key(KEYS[3])
        self.assertEqual(self.c.run(keyless.set_value("app:k2", 2, records.SKIP_VALIDATION)).seq, 0)
        self.assertTrue(keyless.local_dump()[-1]["own"])

    def test_bad_constructor_arguments(self) -> None:
        self.assertRaises(BadRequest, DHTNode, self.c.clock, self.c.rng, KEYS[0], k=0)
        self.assertRaises(BadRequest, DHTNode, self.c.clock, self.c.rng, "not a key")
