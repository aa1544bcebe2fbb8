"""Print DHT figures: simulated lookups on N nodes, and real loopback-UDP lookups on 10 nodes.

Run: ``python -m tests.dht.figures [sim_nodes]``. Not a test: nothing is asserted,
the numbers are for the issue tracker and for spotting regressions by eye.
"""

from __future__ import annotations

import random
import statistics
import sys
import time

from twisted.internet import task
from twisted.internet.defer import DeferredList, ensureDeferred

from bitnode.dht import records
from bitnode.dht.kademlia_node import DHTNode
from tests.dht.simcluster import KEYS, SimCluster


def simulated(count: int, lookups: int = 100) -> None:
    """Bootstrap ``count`` nodes on a SimNetwork (20-40 ms links) and time lookups."""
    wall = time.perf_counter()
    c = SimCluster(count, seed=5)
    boot = time.perf_counter() - wall
    rng = random.Random(1)
    exact = 0
    sent_before = c.net.counters["sent"]
    for _ in range(lookups):
        asker, target = rng.choice(c.nodes), rng.getrandbits(256)
        found = c.run(asker.find_node(target))
        exact += [int(x["id"], 16) for x in found] == c.brute_closest(target, exclude=asker)
    results = [n.lookups[-1] for n in c.nodes if n.lookups]
    hops = [r.hops for r in results]
    secs = [r.elapsed for r in results]
    print(f"simulated: {count} nodes (k={c.k}, alpha={c.alpha}, links 20-40 ms), bootstrap {boot:.2f}s wall, "
          f"{c.net.counters['sent']} datagrams")
    print(f"  {lookups} FIND_NODE lookups: exact k-closest {exact}/{lookups}; hops avg {statistics.mean(hops):.2f} "
          f"max {max(hops)}; simulated latency avg {statistics.mean(secs) * 1000:.0f} ms max {max(secs) * 1000:.0f} ms; "
          f"{c.net.counters['sent'] - sent_before} datagrams")
    c.stop()


async def loopback(reactor, count: int = 10, rounds: int = 50) -> None:
    """Bootstrap ``count`` real nodes on 127.0.0.1 and time get_value / find_node."""
    nodes = []
    for i in range(count):
        node = DHTNode(reactor, random.Random(i), KEYS[i % len(KEYS)], k=8, rpc_timeout=0.5)
        node.listen_udp(reactor, 0, "127.0.0.1")
        nodes.append(node)
    for node in nodes:
        await node.bootstrap([nodes[0].address])
    await nodes[1].set_value("app:figures", {"v": 1}, records.SKIP_VALIDATION, expire=600)
    gets, finds = [], []
    rng = random.Random(2)
    for _ in range(rounds):
        reader = rng.choice(nodes[2:])
        t0 = reactor.seconds()
        await reader.get_value("app:figures")
        gets.append(reactor.seconds() - t0)
        t0 = reactor.seconds()
        await reader.find_node(rng.getrandbits(256))
        finds.append(reactor.seconds() - t0)
    print(f"loopback UDP: {count} nodes, {rounds} rounds: get_value median {statistics.median(gets) * 1000:.1f} ms "
          f"(max {max(gets) * 1000:.1f}), find_node median {statistics.median(finds) * 1000:.1f} ms "
          f"(max {max(finds) * 1000:.1f})")
    await DeferredList([n.stop() for n in nodes])


def main() -> None:
    """Print both sets of figures."""
    simulated(int(sys.argv[1]) if len(sys.argv) > 1 else 55)
    task.react(lambda reactor: ensureDeferred(loopback(reactor)))


if __name__ == "__main__":
    main()
