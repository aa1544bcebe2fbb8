"""A simulated network of 50+ in-process DHT nodes (SimNetwork + SimClock, no sockets, no sleeps)."""

from __future__ import annotations

import random

from twisted.logger import Logger
from twisted.trial import unittest

from bitnode.dht import records
from bitnode.dht.ids import key_to_id
from tests.dht.simcluster import KEYS, SimCluster

NODES = 55
NICK = {"idurl": "http://id.local/alice.xml", "nickname": "alice"}
HOUR = 3600

log = Logger()


class SimulatedNetworkTests(unittest.TestCase):
    def make(self, count: int = NODES, seed: int = 11, **kw: object) -> SimCluster:
        cluster = SimCluster(count, seed=seed, **kw)
        self.addCleanup(cluster.stop)
        return cluster

    def test_lookups_converge_on_the_true_k_closest(self) -> None:
        c = self.make()
        rng = random.Random(4)
        hops, seconds, queried = [], [], []
        for _ in range(30):
            asker = rng.choice(c.nodes)
            target = rng.getrandbits(256)
            found = c.run(asker.find_node(target))
            self.assertEqual([int(x["id"], 16) for x in found], c.brute_closest(target, exclude=asker))
            result = asker.lookups[-1]
            hops.append(result.hops)
            seconds.append(result.elapsed)
            queried.append(result.queried)
        # Figures for the issue: simulated 20-40 ms links, k=8, alpha=3.
        log.info("DHT sim: {n} nodes, 30 lookups: hops avg {h:.2f} max {hm}, latency avg {s:.3f}s max {sm:.3f}s, "
                 "queries avg {q:.1f}", n=len(c.nodes), h=sum(hops) / 30, hm=max(hops), s=sum(seconds) / 30,
                 sm=max(seconds), q=sum(queried) / 30)
        self.assertLessEqual(max(hops), 6)
        self.assertLess(sum(seconds) / 30, 0.5)

    def test_set_on_one_get_from_any_other(self) -> None:
        c = self.make()
        record = c.run(c.nodes[7].set_value("nickname:alice", NICK, records.NICKNAME, expire=HOUR))
        holders = c.holders("nickname:alice")
        self.assertLessEqual(len(holders), c.k + 1)  # the k closest, plus the writer's own copy
        closest = set(c.brute_closest(key_to_id("nickname:alice")))
        self.assertTrue(closest <= {n.node_id for n in holders})
        for reader in c.nodes[::5]:
            self.assertEqual(c.run(reader.get_value("nickname:alice", records.NICKNAME)), record)

    def test_value_survives_when_most_holders_die(self) -> None:
        c = self.make()
        writer, reader = c.nodes[3], c.nodes[40]
        c.run(writer.set_value("app:precious", {"v": 42}, records.SKIP_VALIDATION, expire=HOUR))
        holders = [n for n in c.holders("app:precious") if n not in (writer, reader)]
        doomed = holders[: len(holders) // 2 + 1]
        for node in doomed + [writer]:
            c.kill(node)
        self.assertGreater(len(doomed), len(holders) - len(doomed))
        got = c.run(reader.get_value("app:precious"))
        self.assertEqual(got.value, {"v": 42})
        newcomer = c.add_node()
        self.assertEqual(c.run(newcomer.get_value("app:precious")).value, {"v": 42})

    def test_expiry_and_republish_over_simulated_hours(self) -> None:
        # Bucket refresh is tested in test_node; here it would only add traffic to simulate.
        c = self.make(expire_interval=300.0, refresh_interval=24 * HOUR)
        writer = c.nodes[9]
        c.run(writer.set_value("app:hours", {"v": 1}, records.SKIP_VALIDATION, expire=int(3.5 * HOUR)))
        # Churn every half hour: the current holders' majority leaves, fresh nodes join.
        for _ in range(5):
            c.net.run_for(HOUR / 2)
            holders = [n for n in c.holders("app:hours") if n is not writer]
            for node in holders[: len(holders) // 2 + 1]:
                c.kill(node)
            for _ in range(3):
                c.add_node()
        c.net.run_for(HOUR / 2)  # 3 h: a republish round has run since the last churn
        reader = c.live()[-1]
        self.assertEqual(c.run(reader.get_value("app:hours")).value, {"v": 1})
        target = key_to_id("app:hours")
        holders = {n.node_id for n in c.holders("app:hours")}
        closest = c.brute_closest(target)
        self.assertGreaterEqual(len(holders & set(closest)), c.k - 2, "republish reached the current k closest")
        c.net.run_for(HOUR / 2 + 300)  # past expiry (3.5 h) and one expire round
        self.assertIsNone(c.run(reader.get_value("app:hours")))
        self.assertEqual(c.holders("app:hours"), [])

    def test_forged_records_are_rejected_on_store_and_ignored_on_read(self) -> None:
        c = self.make()
        writer, reader = c.nodes[1], c.nodes[30]
        good = c.run(writer.set_value("nickname:alice", NICK, records.NICKNAME, expire=HOUR))
        forged = dict(good.to_dict(), value=dict(NICK, idurl="http://evil.local/mallory.xml"))
        # Storing the forgery through the protocol is refused by every node.
        target = key_to_id("nickname:alice")
        closest = sorted(c.nodes, key=lambda n: n.node_id ^ target)
        for node in closest[:4]:
            reply = c.run(c.nodes[2]._engine.request(node.address, "STORE", {"record": forged}))
            self.assertEqual(reply.body["code"], "invalid")
        # Compromised nodes nearest the key serve the forgery anyway: readers ignore it.
        liars = [n for n in closest if n not in (writer, reader)][:3]
        for node in liars:
            node._store.put(0, "nickname:alice", forged, good.expires)
        got = c.run(reader.get_value("nickname:alice"))
        self.assertEqual(got.value, NICK)
        self.assertGreater(reader.stats()["bad_values"], 0)
        # A key that only has forged copies reads as absent.
        lone = records.sign_record(KEYS[2], "app:lone", {"v": 1}, records.SKIP_VALIDATION,
                                   int(c.clock.seconds()), int(c.clock.seconds()) + 600, 0)
        bad = dict(lone.to_dict(), value={"v": 2})
        for node in sorted(c.nodes, key=lambda n: n.node_id ^ lone.key_id)[:c.k]:
            if node is not reader:
                node._store.put(0, "app:lone", bad, lone.expires)
        self.assertIsNone(c.run(reader.get_value("app:lone")))

    def test_layer_members_are_found_and_non_members_never_returned(self) -> None:
        c = self.make()
        members = c.nodes[5::6]  # 9 of 55
        for node in members:
            c.run(node.join_layer(5))
        member_ids = {n.node_id for n in members}
        outsider = c.nodes[4]
        seen: set[int] = set()
        for asker in (outsider, members[0], c.nodes[20]):
            for _ in range(3):
                picked = c.run(asker.random_nodes(layer_id=5, count=c.k))
                ids = {int(p["id"], 16) for p in picked}
                self.assertTrue(ids, "some layer-5 members were found")
                self.assertTrue(ids <= member_ids, "only layer-5 members are returned")
                self.assertTrue(all(5 in p["layers"] for p in picked))
                seen |= ids
        self.assertGreaterEqual(len(seen), len(member_ids) - 1)
        target = random.Random(2).getrandbits(256)
        found = c.run(outsider.find_node(target, layer_id=5))
        self.assertEqual([int(x["id"], 16) for x in found], c.brute_closest(target, layer=5))
        # A value in layer 5 is stored on members only.
        c.run(members[1].set_value("app:layer", {"v": 5}, records.SKIP_VALIDATION, layer_id=5))
        self.assertTrue({n.node_id for n in c.holders("app:layer", layer=5)} <= member_ids)
        self.assertEqual(c.run(members[2].get_value("app:layer", layer_id=5)).value, {"v": 5})
