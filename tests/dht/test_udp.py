"""Ten real DHTNodes on loopback UDP (port 0) in the trial reactor."""

from __future__ import annotations

import random

from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.logger import Logger
from twisted.trial import unittest

from bitnode.dht import records
from bitnode.dht.kademlia_node import DHTNode
from tests.dht.simcluster import KEYS

COUNT = 10
log = Logger()


class LoopbackUDPTests(unittest.TestCase):
    # rpc_timeout is generous: on a loaded 2-core CI machine a live peer may take a few hundred ms to answer.
    async def start_nodes(self) -> list[DHTNode]:
        nodes = []
        for i in range(COUNT):
            node = DHTNode(reactor, random.Random(100 + i), KEYS[i % len(KEYS)], k=8, alpha=3,
                           rpc_timeout=1.5, user=f"http://127.0.0.1/node{i}.xml")
            node.listen_udp(reactor, 0, "127.0.0.1")
            self.addCleanup(node.stop)
            nodes.append(node)
        seed = nodes[0].address
        self.assertEqual(await nodes[0].bootstrap([seed]), 0)
        for node in nodes[1:]:
            await node.bootstrap([seed])
        return nodes

    async def test_set_on_one_get_from_another_then_without_the_holder(self) -> None:
        nodes = await self.start_nodes()
        self.assertTrue(all(n.address[0] == "127.0.0.1" and n.address[1] > 0 for n in nodes))
        self.assertTrue(all(n.stats()["contacts"]["0"] >= COUNT - 2 for n in nodes))
        writer, reader = nodes[2], nodes[7]
        record = await writer.set_value("nickname:alice", {"idurl": "http://127.0.0.1/alice.xml",
                                                           "nickname": "alice"}, records.NICKNAME, expire=600)
        started = reactor.seconds()
        got = await reader.get_value("nickname:alice", records.NICKNAME)
        get_seconds = reactor.seconds() - started
        self.assertEqual(got, record)
        found = await reader.find_node(writer.node_id)
        self.assertEqual(int(found[0]["id"], 16), writer.node_id)
        find_seconds = reader.lookups[-1].elapsed
        log.info("DHT loopback UDP, {n} nodes: get_value {g:.4f}s ({h} hops), find_node {f:.4f}s",
                 n=COUNT, g=get_seconds, h=reader.lookups[-2].hops, f=find_seconds)

        # The writer and the three holders nearest the key go away; replicas still answer.
        target = record.key_id
        gone = [writer] + sorted((n for n in nodes if n not in (writer, reader)), key=lambda n: n.node_id ^ target)[:3]
        await DeferredList([n.stop() for n in gone])
        again = await reader.get_value("nickname:alice", records.NICKNAME)
        self.assertEqual(again, record)
        other = next(n for n in nodes if n not in gone and n is not reader)
        self.assertEqual((await other.get_value("nickname:alice")).value["nickname"], "alice")
