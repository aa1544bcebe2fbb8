"""Tests for bitnode.transport.relay and the routed path of the gateway (bitnode.transport.routing).

Gateways with fake identity providers on real loopback TCP (timers on a
Clock): a router P with a :class:`Relay`, nodes routed through it that do not
listen at all (as behind NAT), and a reachable node X.  Then the relay alone
with fake connections, for its limits on a Clock.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial import unittest

from bitnode.errors import TooManyRequests, Unavailable
from bitnode.transport.commands import Command
from bitnode.transport.packet import Packet, PacketHead
from bitnode.transport.reintroduction import REFRESH_INTERVAL
from bitnode.transport.relay import Relay, RelayLimits, RelayRefused
from bitnode.transport.tcp import contact_addresses, parse_tcp_contact
from tests.interface.support import wait_until
from tests.support import clock_at
from tests.transport.test_gateway import START, Peer, PeerNetTestCase
from tests.transport.test_support import Ed25519Signer, seed

MiB = 1024 * 1024


class TamperingRelay(Relay):
    """A router that changes the last payload byte of every frame it passes on (it cannot re-sign it)."""

    def _write(self, conn, frame):
        if frame.body:
            frame.body = frame.body[:-1] + bytes([frame.body[-1] ^ 0xFF])
        return super()._write(conn, frame)


class RoutedNetworkTests(PeerNetTestCase):
    """P routes R1 and R2 (no listening port); X is reachable."""

    @inlineCallbacks
    def network(self, relay_class=Relay, limits=RelayLimits(), routed=("r1",)):
        router = Peer(self, "router", 1, self.server, self.clock)
        yield router.start()
        x = Peer(self, "x", 2, self.server, self.clock)
        yield x.start()
        nodes = [Peer(self, name, 3 + i, self.server, self.clock) for i, name in enumerate(routed)]
        everyone = [router, x, *nodes]
        for peer in everyone:
            for other in everyone:
                peer.ids.remember_identity(other.ids.identity)

        def addresses(global_id, refresh=False):
            d = router.ids.fetch_identity(global_id, refresh=refresh)
            return d.addCallback(lambda i: contact_addresses(i.contacts))

        def own():
            return {("127.0.0.1", router.gateway.port)}

        self.relay = relay_class(self.clock, router.gateway.transport, router.ids.resolve_verifier, addresses, own,
                                 limits)
        self.addCleanup(self.relay.close)

        def route(packet, address):
            self.relay.add_route(packet.creator_id, router.gateway.transport.connection_to(address))
            return router.gateway.reply(packet, Command.ACK, b"routed")

        router.gateway.router.add(Command.REQUEST_SERVICE, route)
        for node in nodes:
            yield node.gateway.request(Command.REQUEST_SERVICE, router.id, b"route me")
            link = node.gateway.route_through(router.id, router.gateway.contact)
            yield node.ids.update_contacts([link.contact])
            for peer in everyone:  # everyone learns the new contact (as from the identity server)
                peer.ids.remember_identity(node.ids.identity)
        for peer in everyone:
            peer.gateway.router.add(Command.MESSAGE, self.answer(peer))
        return router, x, nodes

    def answer(self, peer):
        def serve(packet, address):
            peer.record(packet, address)
            return peer.gateway.reply(packet, Command.ACK, b"got " + packet.payload)
        return serve

    @inlineCallbacks
    def test_a_node_without_a_port_is_reached_through_its_router_and_answers_the_same_way(self):
        router, x, (r1,) = yield self.network()
        self.assertFalse(r1.gateway.is_listening())
        self.assertEqual(r1.ids.identity.contacts, (f"proxy://127.0.0.1:{router.gateway.port}",))
        answer = yield x.gateway.request(Command.MESSAGE, r1.id, b"hello r1")
        self.assertEqual((answer.command, answer.payload, answer.creator_id), ("Ack", b"got hello r1", r1.id))
        self.assertEqual([p.creator_id for p in r1.received], [x.id])
        # and the other way: r1 starts, everything it sends goes through the router
        direct_before = r1.gateway.routing_stats()["packets"]["direct"]  # the route request itself
        answer = yield r1.gateway.request(Command.MESSAGE, x.id, b"hello x")
        self.assertEqual(answer.payload, b"got hello x")
        self.assertEqual(r1.gateway.routing_stats()["packets"]["direct"], direct_before)
        self.assertGreaterEqual(r1.gateway.routing_stats()["packets"]["via_router"], 2)
        # r1 has one connection, to its router; x talks to r1 only through the router's port
        self.assertEqual([(c["port"], c["direction"], c.get("proxy")) for c in r1.gateway.connections()],
                         [(router.gateway.port, "out", "router")])
        stats = self.relay.stats()
        self.assertEqual((stats["packets_in"], stats["packets_out"]), (2, 2))  # message+ack each way
        self.assertGreater(stats["bytes_in"], 0)
        self.assertEqual(stats["routed_nodes"][0]["global_id"], r1.id)
        self.assertEqual(stats["refused"], {})

    @inlineCallbacks
    def test_a_routed_node_learns_the_key_of_whom_it_writes_to_so_the_answer_is_not_dropped(self):
        router, x, (r1,) = yield self.network()
        r1.ids.forget(x.id)  # as for a supplier found in the DHT: never met
        fetches = self.server.fetches
        answer = yield r1.gateway.request(Command.MESSAGE, x.id, b"hello stranger", timeout=5)
        self.assertEqual((answer.creator_id, answer.payload), (x.id, b"got hello stranger"))
        self.assertEqual(self.server.fetches, fetches + 1)
        self.assertEqual(r1.gateway.stats.as_dict()["dropped"].get("unknown_sender", 0), 0)

    @inlineCallbacks
    def test_losing_the_router_fails_the_packets_waiting_for_an_answer_through_it_at_once(self):
        router, x, (r1,) = yield self.network()
        d = r1.gateway.request(Command.MESSAGE, x.id, b"anyone?", timeout=600)
        yield wait_until(lambda: any(m.state in ("SENDING", "WAITING") for m in r1.gateway._live), "the send")
        self.assertEqual(r1.gateway.router_lost("the connection closed"), 1)
        err = yield self.assertFailure(d, Unavailable)
        self.assertIn(f"router {router.id} was lost", str(err))
        self.assertIsNone(r1.gateway.link)
        self.assertEqual(r1.gateway.routing_stats()["failed_router_lost"], 1)
        self.assertEqual(r1.gateway.router_lost("again"), 0)  # not routed any more: nothing to fail

    @inlineCallbacks
    def test_two_routed_nodes_reach_each_other_through_the_router(self):
        router, x, (r1, r2) = yield self.network(routed=("r1", "r2"))
        answer = yield r1.gateway.request(Command.MESSAGE, r2.id, b"psst")
        self.assertEqual((answer.creator_id, answer.payload), (r2.id, b"got psst"))
        # each frame is counted once, on the route it came from: the message on r1's, the Ack on r2's
        stats = self.relay.stats()
        self.assertEqual((stats["packets_in"], stats["packets_out"]), (0, 2))

    @inlineCallbacks
    def test_a_tampered_forwarded_packet_is_refused_by_its_receiver(self):
        router, x, (r1,) = yield self.network(relay_class=TamperingRelay)
        d = x.gateway.request(Command.MESSAGE, r1.id, b"do not touch", timeout=5)
        yield wait_until(lambda: r1.gateway.stats.as_dict()["dropped"].get("bad_signature"), "r1 to drop it")
        self.assertEqual(r1.received, [])  # the handler never saw it
        self.assertEqual(self.relay.stats()["packets_in"], 1)  # the router did pass it on
        self.clock.advance(6)
        yield self.assertFailure(d, Exception)

    @inlineCallbacks
    def test_the_router_is_no_open_relay(self):
        router, x, (r1,) = yield self.network()
        address = parse_tcp_contact(router.gateway.contact)
        # a packet for somebody the router does not route: dropped as not ours
        stray = Packet.create(self.clock, Command.MESSAGE, x.id, x.id, "nobody@127.0.0.1_9", b"x", x.ids.signer)
        yield x.gateway.transport.send(address, stray)
        # a packet in r1's name that r1 did not sign: refused at the router
        forged = Packet.create(self.clock, Command.MESSAGE, r1.id, r1.id, x.id, b"x", Ed25519Signer(seed(99)))
        yield x.gateway.transport.send(address, forged)
        yield wait_until(lambda: self.relay.refused.get("bad_signature") and self.relay.refused.get("not_routed"),
                         "both refusals")
        dropped = router.gateway.stats.as_dict()["dropped"]
        self.assertEqual((dropped.get("wrong_recipient"), dropped.get("relay_refused")), (1, 1))
        self.assertEqual(x.received, [])
        self.assertEqual(self.relay.stats()["packets_out"], 0)

    @inlineCallbacks
    def test_a_known_sender_forged_towards_a_routed_node_is_refused_and_gets_no_reply_path(self):
        router, x, (r1,) = yield self.network()
        address = parse_tcp_contact(router.gateway.contact)
        forged = Packet.create(self.clock, Command.MESSAGE, x.id, x.id, r1.id, b"x", Ed25519Signer(seed(98)))
        yield r1.gateway.transport.send(address, forged)  # any connection will do for an attacker
        yield wait_until(lambda: self.relay.refused.get("bad_signature"), "the refusal")
        self.assertEqual(self.relay.stats()["reply_paths"], 0)
        self.assertEqual(r1.received, [])

    @inlineCallbacks
    def test_a_stale_cached_contact_is_fetched_again_before_the_frame_is_given_up(self):
        # as behind a real NAT: x first published the address STUN saw (nobody can connect there), then
        # another one; the router still caches the first
        router, x, (r1,) = yield self.network()
        closed = parse_tcp_contact(router.gateway.contact)[1] + 1000  # nothing listens there
        stale = x.ids.identity.updated(now=self.clock.seconds(), contacts=(f"tcp://127.0.0.1:{closed}",))
        stale = stale.sign(x.ids.rsa)
        current = stale.updated(now=self.clock.seconds(), contacts=(x.gateway.contact,)).sign(x.ids.rsa)
        router.ids.cache.items[x.id] = stale
        self.server.published[x.id] = current
        fetches = self.server.fetches
        answer = yield r1.gateway.request(Command.MESSAGE, x.id, b"where are you?", timeout=5)
        self.assertEqual((answer.creator_id, answer.payload), (x.id, b"got where are you?"))
        self.assertEqual(self.server.fetches, fetches + 1)
        self.assertEqual(router.ids.cache[x.id].contacts, (x.gateway.contact,))
        self.assertEqual((self.relay.stats()["contacts_refreshed"], self.relay.stats()["refused"]), (1, {}))

    @inlineCallbacks
    def test_an_unreachable_recipient_is_fetched_again_at_most_once_per_interval(self):
        router, x, (r1,) = yield self.network()
        closed = parse_tcp_contact(router.gateway.contact)[1] + 1000
        gone = x.ids.identity.updated(now=self.clock.seconds(), contacts=(f"tcp://127.0.0.1:{closed}",))
        gone = gone.sign(x.ids.rsa)
        router.ids.cache.items[x.id] = self.server.published[x.id] = gone
        fetches = self.server.fetches
        for sent in range(1, 4):
            r1.gateway.request(Command.MESSAGE, x.id, b"hello?", timeout=5).addErrback(lambda _: None)
            yield wait_until(lambda n=sent: self.relay.refused.get("unreachable", 0) >= n, "the frame to be dropped")
        self.assertEqual((self.server.fetches - fetches, self.relay.contacts_refreshed), (1, 1))
        self.clock.advance(REFRESH_INTERVAL)
        r1.gateway.request(Command.MESSAGE, x.id, b"now?", timeout=5).addErrback(lambda _: None)
        yield wait_until(lambda: self.relay.refused.get("unreachable", 0) >= 4, "the frame to be dropped")
        self.assertEqual((self.server.fetches - fetches, self.relay.contacts_refreshed), (2, 2))
        self.clock.advance(6)  # the requests time out

    @inlineCallbacks
    def test_a_lost_route_waits_its_grace_then_is_gone(self):
        router, x, (r1,) = yield self.network(limits=RelayLimits(route_grace=30.0))
        conn = r1.gateway.transport.connection_to(r1.gateway.link.address)
        closed = Deferred()
        router.gateway.transport.lost_listeners.append(lambda c: closed.called or closed.callback(None))
        conn.closeConnection()
        yield closed
        self.assertIsNotNone(self.relay.route(r1.id))
        self.assertIsNone(self.relay.connection_of(r1.id))
        self.clock.advance(31)
        self.assertIsNone(self.relay.route(r1.id))
        self.assertEqual(self.relay.stats()["routes_counts"]["expired"], 1)


class FakeConn:
    """What the relay uses of a connection: its address, whether usable, unsent bytes, send_frame."""

    def __init__(self, port: int) -> None:
        self.address = ("127.0.0.1", port)
        self.frames: list[tuple[bytes, bytes]] = []
        self.unsent = 0
        self.usable = True

    def is_usable(self) -> bool:
        return self.usable

    def unsent_bytes(self) -> int:
        return self.unsent

    def send_frame(self, head: bytes, body: bytes) -> int:
        self.frames.append((head, body))
        return len(head) + len(body)


class FakeTransport:
    def __init__(self) -> None:
        self.relay = None
        self.lost_listeners: list = []

    def connection_to(self, address):
        return None


class RelayLimitTests(unittest.TestCase):
    """The relay's limits on a Clock, with fake connections: shaping, queues, routes, grace."""

    def setUp(self) -> None:
        self.clock = clock_at(START)
        self.signer = Ed25519Signer(seed(1))
        self.sender = "s@127.0.0.1_1"

    def relay(self, **limits) -> Relay:
        relay = Relay(self.clock, FakeTransport(), lambda gid: None, lambda gid: None, set, RelayLimits(**limits))
        self.conn = FakeConn(5000)
        relay.add_route("r@127.0.0.1_2", self.conn)
        return relay

    def frame(self, size: int) -> tuple[bytes, PacketHead, bytes]:
        packet = Packet.create(self.clock, Command.DATA, self.sender, self.sender, "r@127.0.0.1_2", b"b" * size,
                               self.signer)
        head = packet.encode_header()
        return head, PacketHead.decode(head), packet.payload

    def push(self, relay: Relay, size: int) -> None:
        head_bytes, head, body = self.frame(size)
        self.assertTrue(relay.admit(FakeConn(6000), head, len(body)))
        relay.forward(FakeConn(6000), head_bytes, head, body)

    def test_a_route_is_shaped_to_its_bandwidth_and_frames_wait_in_order(self):
        relay = self.relay(bandwidth=100_000)
        for _ in range(5):
            self.push(relay, 50_000)  # 250 kB at 100 kB/s: about 2.5 s of traffic
        self.assertEqual(len(self.conn.frames), 2)  # the first second's worth goes at once (burst)
        self.assertGreater(relay.queued_total, 0)
        self.clock.advance(1.0)
        self.assertEqual(len(self.conn.frames), 4)  # a second later, a second's worth more
        for _ in range(10):
            self.clock.advance(0.5)
        self.assertEqual(len(self.conn.frames), 5)
        self.assertEqual(relay.queued_total, 0)
        self.assertEqual(relay.stats()["packets_in"], 5)

    def test_a_full_queue_refuses_by_the_header_and_counts_it(self):
        relay = self.relay(bandwidth=1000, max_queued=MiB)
        self.push(relay, 600_000)  # goes (the bucket lets one frame through and then owes)
        self.push(relay, 600_000)  # waits
        head_bytes, head, body = self.frame(600_000)
        with self.assertRaises(RelayRefused) as caught:
            relay.admit(FakeConn(6000), head, len(body))
        self.assertEqual(caught.exception.why, "queue_full")
        self.assertEqual(relay.stats()["refused"], {"queue_full": 1})
        self.assertEqual(relay.route("r@127.0.0.1_2").dropped["queue_full"], 1)

    def test_unsent_bytes_of_the_routed_connection_count_against_its_queue(self):
        relay = self.relay(max_queued=MiB)
        self.conn.unsent = 900_000
        head_bytes, head, body = self.frame(200_000)
        self.assertRaises(RelayRefused, relay.admit, FakeConn(6000), head, len(body))

    def test_one_frame_always_fits_an_empty_queue(self):
        relay = self.relay(max_queued=MiB, max_queued_total=MiB)
        self.push(relay, 3 * MiB)
        self.assertEqual(len(self.conn.frames), 1)

    def test_the_total_queue_over_all_routes_is_bounded(self):
        relay = self.relay(bandwidth=1000, max_queued=16 * MiB, max_queued_total=MiB)
        self.push(relay, 900_000)  # goes, and the bucket owes
        self.push(relay, 600_000)  # waits
        head_bytes, head, body = self.frame(600_000)
        self.assertRaises(RelayRefused, relay.admit, FakeConn(6000), head, len(body))

    def test_routes_past_the_limit_are_refused(self):
        relay = self.relay(max_routes=2)
        relay.add_route("b@127.0.0.1_3", FakeConn(5001))
        self.assertRaises(TooManyRequests, relay.add_route, "c@127.0.0.1_4", FakeConn(5002))
        relay.add_route("b@127.0.0.1_3", FakeConn(5003))  # a route moving to a new connection is no new route
        self.assertEqual(relay.stats()["refused"], {"too_many_routes": 1})

    def test_routes_from_one_address_past_its_limit_are_refused(self):
        relay = self.relay(max_routes_per_ip=2)  # r@ is routed from 127.0.0.1 already
        relay.add_route("b@127.0.0.1_3", FakeConn(5001))
        self.assertRaises(TooManyRequests, relay.add_route, "c@127.0.0.1_4", FakeConn(5002))
        other = FakeConn(5003)
        other.address = ("127.0.0.2", 5003)
        relay.add_route("c@127.0.0.1_4", other)  # another address has its own share
        relay.add_route("b@127.0.0.1_3", FakeConn(5004))  # moving to a new connection is no new route
        self.assertEqual(relay.stats()["refused"], {"too_many_routes_per_ip": 1})
        unlimited = self.relay(max_routes_per_ip=0)
        for n in range(5):
            unlimited.add_route(f"n{n}@127.0.0.1_9", FakeConn(7000 + n))
        self.assertEqual(len(unlimited.routed()), 6)

    def test_frames_for_a_node_between_connections_wait_for_it_within_the_grace(self):
        relay = self.relay(route_grace=60.0)
        relay._connection_lost(self.conn)
        self.push(relay, 1000)
        self.assertEqual(self.conn.frames, [])
        back = FakeConn(5009)
        self.clock.advance(30)
        relay.add_route("r@127.0.0.1_2", back)
        self.assertEqual(len(back.frames), 1)
        self.assertEqual(relay.counts["rebound"], 1)

    def test_frames_waiting_for_a_node_that_does_not_come_back_are_dropped(self):
        relay = self.relay(route_grace=60.0)
        relay._connection_lost(self.conn)
        self.push(relay, 1000)
        self.clock.advance(61)
        self.assertIsNone(relay.route("r@127.0.0.1_2"))
        self.assertEqual(relay.queued_total, 0)
        self.assertEqual(relay.stats()["refused"], {"route_gone": 1})

    def test_a_closed_relay_passes_nothing(self):
        relay = self.relay()
        relay.close()
        head_bytes, head, body = self.frame(10)
        self.assertFalse(relay.admit(FakeConn(6000), head, len(body)))
        self.assertEqual(relay.routed(), [])
