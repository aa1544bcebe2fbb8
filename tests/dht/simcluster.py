"""Test helper: a network of in-process DHTNodes on a SimNetwork driven by a SimClock."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.defer import Deferred

from bitnode.crypt.fastsign import generate_ed25519
from bitnode.dht.kademlia_node import DHTNode
from bitnode.dht.simnet import SimClock, SimNetwork

#: a few writer keys shared by all test clusters (key generation is not what we test)
KEYS = [generate_ed25519() for _ in range(4)]


class SimCluster:
    """``count`` nodes bootstrapped one after the other from the first one."""

    def __init__(self, count: int, seed: int = 1, k: int = 8, alpha: int = 3, **node_kw: Any) -> None:
        self.clock = SimClock()
        self.clock.advance(1_700_000_000)  # a realistic epoch: records carry wall-clock times
        self.rng = random.Random(seed)
        self.net = SimNetwork(self.clock, self.rng, latency=0.02, jitter=0.01)
        self.k = k
        self.alpha = alpha
        self.node_kw = node_kw
        self.nodes: list[DHTNode] = []
        for _ in range(count):
            self.add_node()

    def add_node(self, key: Any = None, bootstrap: bool = True, **kw: Any) -> DHTNode:
        """Create, attach and (unless told not to) bootstrap one more node from the first live one."""
        n = len(self.nodes)
        node = DHTNode(self.clock, random.Random(self.rng.getrandbits(64)), key or KEYS[n % len(KEYS)],
                       k=self.k, alpha=self.alpha, user=f"http://id.local/node{n}.xml", **(self.node_kw | kw))
        node.attach(self.net.endpoint())
        self.nodes.append(node)
        if bootstrap:
            self.run(node.bootstrap([self.live()[0].address]))
        return node

    def run(self, d: Deferred, max_seconds: float = 600.0) -> Any:
        """Drive the simulation until ``d`` fires; its result (or raise its failure)."""
        return self.net.run_until(d, max_seconds)

    def kill(self, node: DHTNode) -> None:
        """Take a node off the network abruptly (it does not say goodbye)."""
        self.net.set_down(node.address[0])
        node.stop()

    def live(self) -> list[DHTNode]:
        """Nodes still running."""
        return [n for n in self.nodes if not n._stopped]

    def holders(self, key: str, layer: int = 0) -> list[DHTNode]:
        """Running nodes holding a record for ``key`` locally."""
        return [n for n in self.live() if any(r["key"] == key and r["layer"] == layer for r in n.local_dump())]

    def brute_closest(self, target: int, exclude: DHTNode | None = None, layer: int = 0) -> list[int]:
        """The true k closest running members of ``layer`` to ``target``."""
        pool = [n.node_id for n in self.live() if n is not exclude and layer in n.layers]
        return sorted(pool, key=lambda i: i ^ target)[: self.k]

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()
