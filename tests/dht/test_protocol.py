"""Tests for bitnode.dht.protocol: RPC round trips, timeouts, bad datagrams, rate limits."""

from __future__ import annotations

import random

from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.dht import messages
from bitnode.dht.ids import id_to_hex
from bitnode.dht.limits import DHTLimits
from bitnode.dht.messages import Message, Sender
from bitnode.dht.protocol import RPCEngine
from bitnode.dht.simnet import SimClock, SimNetwork
from bitnode.errors import Timeout, Unavailable


class Peer:
    """An RPCEngine on a simulated endpoint that answers PING and FIND_NODE."""

    def __init__(self, net: SimNetwork, host: str, node_id: int, carry: bool = False, **kw: object) -> None:
        self.seen: list[tuple[str, tuple]] = []
        self.stored: list[dict] = []
        self.silent = False
        self.engine = RPCEngine(net.clock, random.Random(node_id), lambda: Sender(node_id, "u", (0,)),
                                self.handle, lambda m, a, proven: self.seen.append((m.kind, a)), **kw)
        self.endpoint = net.endpoint(host)
        if carry:  # messages travel beside their bytes (a simulation's network)
            self.endpoint.set_receiver(self.engine.datagram_received, takes_messages=True)
            self.engine.attach(self.endpoint.send, self.endpoint.send_message)
        else:
            self.endpoint.set_receiver(self.engine.datagram_received)
            self.engine.attach(self.endpoint.send)

    def handle(self, msg: Message, address: tuple) -> tuple[str, dict] | None:
        if self.silent:
            return None
        if msg.kind == messages.FIND_NODE:
            raise RuntimeError("handler bug")
        if msg.kind == messages.FIND_VALUE:
            return messages.VALUE, {"record": {"blob": "x" * 5000}}
        if msg.kind == messages.STORE:
            self.stored.append(msg.body["record"])
            return messages.STORED, {"ok": True, "code": "ok", "reason": ""}
        return messages.PONG, {}


class RPCEngineTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.net = SimNetwork(self.clock, random.Random(3), latency=0.05, jitter=0.0)
        limits = DHTLimits(rate_per_ip=5.0, burst_per_ip=10.0)
        self.a = Peer(self.net, "10.0.0.1", 1, timeout=1.0, limits=limits)
        self.b = Peer(self.net, "10.0.0.2", 2, timeout=1.0, limits=limits)

    def raw(self, data: bytes, src: str = "10.0.0.9") -> None:
        """Deliver raw bytes to b as if sent from ``src``."""
        self.net.transmit((src, 7000), self.b.endpoint.address, data)
        self.net.run_for(0.1)

    def test_round_trip_matches_response_and_tells_the_observer(self) -> None:
        d = self.a.engine.request(self.b.endpoint.address, messages.PING)
        reply = self.net.run_until(d)
        self.assertEqual((reply.kind, reply.sender.node_id), (messages.PONG, 2))
        self.assertAlmostEqual(self.clock.seconds(), 0.1)
        self.assertEqual(self.b.seen, [(messages.PING, ("10.0.0.1", 7000))])
        self.assertEqual(self.a.seen, [(messages.PONG, ("10.0.0.2", 7000))])
        self.assertEqual(self.a.engine.stats()["pending"], 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the timeout timer was cancelled

    def test_silent_peer_times_out(self) -> None:
        self.b.silent = True
        d = self.a.engine.request(self.b.endpoint.address, messages.PING)
        self.clock.advance(0.99)
        self.assertNoResult(d)
        self.clock.advance(0.02)
        self.failureResultOf(d, Timeout)
        self.assertEqual(self.a.engine.stats()["timeouts"], 1)

    def test_handler_exception_is_counted_and_becomes_a_timeout(self) -> None:
        d = self.a.engine.request(self.b.endpoint.address, messages.FIND_NODE, {"target": 5})
        self.net.run_for(2)
        self.failureResultOf(d, Timeout)
        self.assertEqual(self.b.engine.stats()["handler_errors"], 1)
        self.flushLoggedErrors(RuntimeError)

    def test_malformed_datagrams_are_ignored_and_counted(self) -> None:
        for data in (b"\x00\x01garbage", b"{}", b'{"v":1,"t":"PING"}', b"[1,2]", "é".encode("latin-1")):
            self.raw(data)
        self.assertEqual(self.b.engine.stats()["malformed"], 5)
        self.assertEqual(self.b.seen, [])
        # b still works afterwards
        self.assertEqual(self.net.run_until(self.a.engine.request(self.b.endpoint.address, "PING")).kind, "PONG")

    def test_oversize_datagram_is_dropped_before_parsing(self) -> None:
        self.raw(b"{" + b" " * messages.MAX_DATAGRAM + b"}")
        self.assertEqual(self.b.engine.stats()["oversize"], 1)
        self.assertEqual(self.b.engine.stats()["malformed"], 0)

    def test_oversize_request_fails_without_sending(self) -> None:
        record = {"blob": "x" * messages.MAX_DATAGRAM}
        d = self.a.engine.request(self.b.endpoint.address, messages.STORE, {"record": record})
        self.failureResultOf(d, messages.OversizeMessage)
        self.assertEqual(self.a.engine.stats()["sent"], 0)

    def test_flood_from_one_peer_is_rate_limited_others_unaffected(self) -> None:
        ping = messages.encode(Message(messages.PING, "00000000000000aa", Sender(9)))
        for _ in range(30):
            self.net.transmit(("10.0.0.9", 7000), self.b.endpoint.address, ping)
        self.net.run_for(0.1)
        stats = self.b.engine.stats()
        self.assertEqual((stats["requests_handled"], stats["rate_limited"]), (10, 20))
        # Another peer still gets answers.
        self.assertEqual(self.net.run_until(self.a.engine.request(self.b.endpoint.address, "PING")).kind, "PONG")
        # The flooder's bucket refills at 5/s.
        self.clock.advance(1.0)
        self.raw(ping)
        self.assertEqual(self.b.engine.stats()["requests_handled"], 12)

    def test_one_ip_shares_one_budget_whatever_its_ports(self) -> None:
        ping = messages.encode(Message(messages.PING, "00000000000000aa", Sender(9)))
        for port in range(30):
            self.net.transmit(("10.0.0.9", 1000 + port), self.b.endpoint.address, ping)
        self.net.run_for(0.1)
        stats = self.b.engine.stats()
        self.assertEqual((stats["requests_handled"], stats["rate_limited"]), (10, 20))
        self.assertEqual(self.net.run_until(self.a.engine.request(self.b.endpoint.address, "PING")).kind, "PONG")

    def test_all_sources_together_are_limited_too(self) -> None:
        c = Peer(self.net, "10.0.0.3", 3, limits=DHTLimits(rate_total=5.0, burst_total=10.0))
        ping = messages.encode(Message(messages.PING, "00000000000000aa", Sender(9)))
        for host in range(30):
            self.net.transmit((f"10.1.0.{host}", 7000), c.endpoint.address, ping)
        self.net.run_for(0.1)
        self.assertEqual((c.engine.stats()["requests_handled"], c.engine.stats()["rate_limited_total"]), (10, 20))

    def test_forged_source_gets_no_amplified_answer_and_cannot_store(self) -> None:
        victim = self.net.endpoint("10.0.0.66")
        received: list[bytes] = []
        victim.set_receiver(lambda data, addr: received.append(data))
        ask = messages.encode(Message(messages.FIND_VALUE, "00000000000000ab", Sender(9), body={"key": "app:x"}))
        self.net.transmit(victim.address, self.b.endpoint.address, ask)
        store = messages.encode(Message(messages.STORE, "00000000000000ac", Sender(9), body={"record": {"a": 1}}))
        self.net.transmit(victim.address, self.b.endpoint.address, store)
        self.net.run_for(0.2)
        self.assertEqual(len(received), 2)
        self.assertLessEqual(len(received[0]), 3 * len(ask))
        answer = messages.decode(received[0])
        self.assertEqual((answer.kind, answer.truncated, answer.body), (messages.NODES, True, {"contacts": ()}))
        self.assertEqual(len(answer.token), messages.TOKEN_LEN)
        stored = messages.decode(received[1])
        self.assertEqual((stored.body["code"], stored.truncated), ("unverified", True))
        self.assertEqual(self.b.stored, [])
        stats = self.b.engine.stats()
        self.assertEqual((stats["replies_truncated_unverified"], stats["stores_refused_unverified"]), (1, 1))
        # The token works only from the address it was given to.
        stolen = messages.encode(Message(messages.STORE, "00000000000000ad", Sender(9), body={"record": {"a": 1}},
                                         token=answer.token))
        self.raw(stolen, src="10.0.0.67")
        self.assertEqual(self.b.stored, [])

    def test_a_peer_proves_its_address_with_the_token_and_then_gets_everything(self) -> None:
        found = self.net.run_until(self.a.engine.request(self.b.endpoint.address, messages.FIND_VALUE,
                                                         {"key": "app:x"}))
        self.assertEqual(found.body["record"], {"blob": "x" * 5000})  # too big for a padded request: asked again
        self.assertEqual(self.a.engine.stats()["retried_with_token"], 1)
        stored = self.net.run_until(self.a.engine.request(self.b.endpoint.address, messages.STORE,
                                                          {"record": {"a": 1}}))
        self.assertTrue(stored.body["ok"])
        self.assertEqual(self.b.stored, [{"a": 1}])
        self.assertEqual(self.a.engine.stats()["retried_with_token"], 1)  # the token was sent at once
        self.assertEqual(self.b.engine.stats()["stores_refused_unverified"], 0)

    def test_store_from_a_new_peer_is_asked_again_with_the_token(self) -> None:
        stored = self.net.run_until(self.a.engine.request(self.b.endpoint.address, messages.STORE,
                                                          {"record": {"a": 2}}))
        self.assertTrue(stored.body["ok"])
        self.assertEqual(self.b.stored, [{"a": 2}])
        self.assertEqual((self.a.engine.stats()["retried_with_token"],
                          self.b.engine.stats()["stores_refused_unverified"]), (1, 1))

    def test_tokens_expire_after_two_periods(self) -> None:
        self.net.run_until(self.a.engine.request(self.b.endpoint.address, messages.PING))
        self.clock.advance(DHTLimits().token_lifetime * 2)
        stored = self.net.run_until(self.a.engine.request(self.b.endpoint.address, messages.STORE,
                                                          {"record": {"a": 3}}))
        self.assertTrue(stored.body["ok"])
        self.assertEqual(self.b.engine.stats()["stores_refused_unverified"], 1)  # old token refused, new one used
        self.assertEqual(self.a.engine.stats()["retried_with_token"], 1)

    def test_response_from_the_wrong_address_or_unknown_rid_is_unmatched(self) -> None:
        self.b.silent = True
        d = self.a.engine.request(self.b.endpoint.address, messages.PING)
        rid = next(iter(self.a.engine._pending))
        pong = messages.encode(Message(messages.PONG, rid, Sender(2)))
        self.net.transmit(("10.0.0.66", 7000), self.a.endpoint.address, pong)  # spoofed source
        wrong_kind = messages.encode(Message(messages.NODES, rid, Sender(2), body={"contacts": ()}))
        self.net.transmit(self.b.endpoint.address, self.a.endpoint.address, wrong_kind)
        self.net.run_for(0.1)
        self.assertNoResult(d)
        self.assertEqual(self.a.engine.stats()["unmatched"], 2)
        self.net.transmit(self.b.endpoint.address, self.a.endpoint.address, pong)
        self.net.run_for(0.1)
        self.assertEqual(self.successResultOf(d).kind, messages.PONG)

    def test_close_fails_pending_and_later_requests(self) -> None:
        self.b.silent = True
        d = self.a.engine.request(self.b.endpoint.address, messages.PING)
        self.a.engine.close()
        self.failureResultOf(d, Unavailable)
        self.failureResultOf(self.a.engine.request(self.b.endpoint.address, messages.PING), Unavailable)
        self.assertEqual(self.a.engine.stats()["pending"], 0)
        self.net.run_for(5)  # the datagram already in flight is answered into the void
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertTrue(self.a.engine.closed)

    def test_send_error_fails_the_request(self) -> None:
        self.a.endpoint.close()
        d = self.a.engine.request(self.b.endpoint.address, messages.PING)
        self.failureResultOf(d, Unavailable)
        self.assertEqual(self.a.engine.stats()["send_errors"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unsendable_address_fails_the_request(self) -> None:
        def refuse(data: bytes, address: tuple) -> None:
            raise ValueError("not an IP address")  # what Twisted's UDP port raises for a host name

        self.a.engine.attach(refuse)
        self.failureResultOf(self.a.engine.request(("evil.example", 1), messages.PING), Unavailable)
        self.assertEqual(self.a.engine.stats()["send_errors"], 1)

    def test_non_request_kind_is_refused(self) -> None:
        self.failureResultOf(self.a.engine.request(self.b.endpoint.address, messages.PONG),
                             messages.MalformedMessage)

    def test_replies_keep_the_request_layer_and_id(self) -> None:
        d = self.a.engine.request(self.b.endpoint.address, messages.PING, layer=7)
        reply = self.net.run_until(d)
        self.assertEqual(reply.layer, 7)
        self.assertEqual(id_to_hex(reply.sender.node_id)[-1], "2")


class CarriedMessageTests(unittest.TestCase):
    """Engines on a network that carries each datagram's message: nothing parsed, the same behaviour."""

    def setUp(self) -> None:
        self.clock = SimClock()
        self.net = SimNetwork(self.clock, random.Random(3), latency=0.05, jitter=0.0, parse_every=10**9)
        self.a = Peer(self.net, "10.0.0.1", 1, carry=True, timeout=1.0)
        self.b = Peer(self.net, "10.0.0.2", 2, carry=True, timeout=1.0)

    def test_truncated_answer_and_retry_with_token_carry_the_messages_their_bytes_encode(self) -> None:
        sent: list[tuple[bytes, Message]] = []

        def spy(peer: Peer) -> None:
            def send(data: bytes, message: Message, address: tuple) -> None:
                sent.append((data, message))
                peer.endpoint.send_message(data, message, address)

            peer.engine.attach(peer.endpoint.send, send)

        spy(self.a)
        spy(self.b)
        found = self.net.run_until(self.a.engine.request(self.b.endpoint.address, messages.FIND_VALUE,
                                                         {"key": "app:x"}))
        self.assertEqual(found.body["record"], {"blob": "x" * 5000})
        self.assertEqual(self.a.engine.stats()["retried_with_token"], 1)
        # The first ask, its answer cut short (unproven address), the ask with the token, the full answer.
        self.assertEqual([(m.kind, m.truncated) for _, m in sent],
                         [(messages.FIND_VALUE, False), (messages.NODES, True), (messages.FIND_VALUE, False),
                          (messages.VALUE, False)])
        for data, message in sent:
            self.assertEqual(messages.decode(data), message)
        self.assertEqual(self.a.engine.stats()["malformed"] + self.b.engine.stats()["malformed"], 0)
        self.assertEqual(self.net.counters["parse_checks"], 0)

    def test_oversize_bytes_are_refused_even_with_a_message_beside_them(self) -> None:
        msg = Message(messages.PING, "00000000000000ab", Sender(9))
        self.b.engine.datagram_received(b" " * (messages.MAX_DATAGRAM + 1), ("10.0.0.9", 7000), msg)
        self.assertEqual(self.b.engine.stats()["oversize"], 1)
        self.assertEqual(self.b.seen, [])

