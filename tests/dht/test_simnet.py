"""Tests for bitnode.dht.simnet: latency, loss, partitions, clock driving."""

from __future__ import annotations

import random

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.dht import messages
from bitnode.dht.messages import Message, Sender
from bitnode.dht.simnet import SimClock, SimNetwork
from bitnode.errors import BadRequest, Conflict, Timeout


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


def ping(rid: int, kind: str = messages.PING) -> Message:
    return Message(kind, f"{rid:016x}", Sender(rid, "u", (0, 5)))


class CarriedMessageTests(unittest.TestCase):
    """A sender may hand the network the message its bytes encode; one datagram in parse_every is parsed again."""

    def setUp(self) -> None:
        self.clock = SimClock()
        self.got: list[tuple[bytes, tuple, Message | None]] = []

    def network(self, parse_every: int) -> tuple[SimNetwork, object, object]:
        net = SimNetwork(self.clock, random.Random(1), latency=0.05, jitter=0.0, parse_every=parse_every)
        a, b = net.endpoint("10.0.0.1"), net.endpoint("10.0.0.2")
        b.set_receiver(lambda data, addr, message: self.got.append((data, addr, message)), takes_messages=True)
        return net, a, b

    def test_receiver_gets_the_carried_message_and_every_nth_is_parsed_and_compared(self) -> None:
        net, a, b = self.network(parse_every=4)
        sent = [ping(i) for i in range(1, 9)]
        for msg in sent:
            a.send_message(messages.encode(msg), msg, b.address)
        net.run_for(1)
        self.assertEqual([m for _, _, m in self.got], sent)
        carried = [m is s for (_, _, m), s in zip(self.got, sent, strict=True)]
        self.assertEqual(carried, [True, True, True, False] * 2)  # the 4th and 8th are fresh parses
        self.assertEqual((net.counters["parse_checks"], net.counters["parse_mismatches"]), (2, 0))

    def test_a_message_that_is_not_what_the_bytes_say_is_counted_and_the_parse_wins(self) -> None:
        net, a, b = self.network(parse_every=2)
        for i in range(1, 5):
            a.send_message(messages.encode(ping(i)), ping(i, messages.PONG), b.address)
        a.send_message(b"not json", ping(9), b.address)
        a.send_message(b"still not json", ping(10), b.address)
        net.run_for(1)
        self.assertEqual([m.kind if m else None for _, _, m in self.got],
                         [messages.PONG, messages.PING, messages.PONG, messages.PING, messages.PING, None])
        self.assertEqual((net.counters["parse_checks"], net.counters["parse_mismatches"]), (3, 3))

    def test_by_default_every_datagram_is_parsed_by_its_receiver(self) -> None:
        net, a, b = self.network(parse_every=1)
        a.send_message(messages.encode(ping(1)), ping(1), b.address)
        a.send(b"raw", b.address)
        net.run_for(1)
        self.assertEqual([(d, m) for d, _, m in self.got], [(messages.encode(ping(1)), None), (b"raw", None)])
        self.assertEqual(net.counters["parse_checks"], 0)
        self.assertRaises(BadRequest, SimNetwork, self.clock, random.Random(1), parse_every=0)

    def test_datagrams_in_flight_are_not_delayed_calls_and_keep_time_order_with_them(self) -> None:
        net, a, b = self.network(parse_every=1)
        order: list[str] = []
        b.set_receiver(lambda data, addr, message: order.append(data.decode()), takes_messages=True)
        self.clock.callLater(0.04, order.append, "timer-0.04")
        self.clock.callLater(0.06, order.append, "timer-0.06")
        a.send(b"datagram-0.05", b.address)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        self.assertEqual(self.clock.next_time(), 0.04)
        net.run_for(1)
        self.assertEqual(order, ["timer-0.04", "datagram-0.05", "timer-0.06"])

