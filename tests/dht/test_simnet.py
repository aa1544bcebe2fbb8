"""Tests for bitnode.dht.simnet: latency, loss, partitions, clock driving."""

from __future__ import annotations

import random

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.dht.simnet import SimNetwork
from bitnode.errors import Conflict, Timeout


class SimNetworkTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.net = SimNetwork(self.clock, random.Random(1), latency=0.05, jitter=0.0)
        self.a = self.net.endpoint("10.0.0.1")
        self.b = self.net.endpoint("10.0.0.2")
        self.got: list[tuple[bytes, tuple]] = []
        self.b.set_receiver(lambda data, addr: self.got.append((data, addr)))

    def test_datagram_arrives_after_latency_with_source_address(self) -> None:
        self.a.send(b"hi", self.b.address)
        self.clock.advance(0.049)
        self.assertEqual(self.got, [])
        self.clock.advance(0.002)
        self.assertEqual(self.got, [(b"hi", ("10.0.0.1", 7000))])

    def test_down_host_and_partition_drop_datagrams(self) -> None:
        self.net.set_down("10.0.0.2")
        self.a.send(b"1", self.b.address)
        self.net.set_down("10.0.0.2", False)
        self.net.partition(["10.0.0.1"], ["10.0.0.2"])
        self.a.send(b"2", self.b.address)
        self.net.heal()
        self.a.send(b"3", self.b.address)
        self.net.run_for(1)
        self.assertEqual([d for d, _ in self.got], [b"3"])
        self.assertEqual(self.net.counters["dropped"], 2)

    def test_drop_rate_loses_about_that_fraction(self) -> None:
        self.net.drop_rate = 0.5
        for _ in range(400):
            self.a.send(b"x", self.b.address)
        self.net.run_for(1)
        self.assertTrue(150 < len(self.got) < 250, len(self.got))

    def test_closed_endpoint_receives_nothing_and_cannot_send(self) -> None:
        self.a.send(b"x", self.b.address)
        self.b.close()
        self.net.run_for(1)
        self.assertEqual(self.got, [])
        self.assertRaises(OSError, self.b.send, b"x", self.a.address)
        self.net.endpoint("10.0.0.2")  # address free again
        self.assertRaises(Conflict, self.net.endpoint, "10.0.0.2")

    def test_run_until_steps_clock_to_the_result(self) -> None:
        d: Deferred = Deferred()
        self.clock.callLater(12.5, d.callback, "done")
        self.assertEqual(self.net.run_until(d), "done")
        self.assertEqual(self.clock.seconds(), 12.5)
        self.assertRaises(Timeout, self.net.run_until, Deferred(), 5)
