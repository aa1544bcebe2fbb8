"""Internet scale by simulation: the real DHT, market and rebuild code on a simulated network and clock.

Run by ``make sim`` (``scripts/sim.py``); small versions run as unit tests
(``tests/sim``). Nothing here re-implements an algorithm: the modules build
many real :class:`~bitnode.dht.kademlia_node.DHTNode` s on a
:class:`~bitnode.dht.simnet.SimNetwork`, drive the customer's real
``SupplierFinder`` and the storage rebuild scheduling, and measure.
"""
