"""In-process network: an identity server node and two ordinary Nodes in one reactor, over loopback.

Real services (identity, identity server, gateway, network), real HTTP and
TCP on 127.0.0.1 with free ports, 2048-bit keys.  Everything goes through
the API dispatcher, the way a client calls it.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from bitnode.p2p.network_service import NetworkService
from bitnode.transport.commands import Command
from bitnode.transport.gateway_service import GatewayService
from bitnode.transport.packet import Packet
from bitnode.userid.id_service import IdentityService
from tests.interface.support import DispatcherCalls, start_id_server, start_node, wait_until
from tests.transport.test_support import Ed25519Signer, seed

NODE_SERVICES = [IdentityService, GatewayService, NetworkService]


class NetworkOfNodesTests(DispatcherCalls, unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        _server, self.settings = yield start_id_server(self)

    @inlineCallbacks
    def fresh_node(self):
        """A node without identity: service_gateway fails to start (the driver logs why, no traceback)."""
        node = yield start_node(self, service_classes=NODE_SERVICES, overrides=self.settings)
        return node

    @inlineCallbacks
    def joined_node(self, name):
        """A node that creates its identity; its gateway and network services then start by themselves."""
        node = yield self.fresh_node()
        yield self.ok(node, "identity_create", username=name)
        for _ in range(200):
            if node.service_driver.is_on("service_network"):
                break
            yield deferLater(reactor, 0.02, lambda: None)
        yield self.connected(node)
        return node

    @inlineCallbacks
    def connected(self, node):
        """``network_connected``, then one reactor turn: the caller is outside the connector again.

        When the call has to wait, its answer fires from inside the
        connector's ``announce_up`` action, and so does the caller's code
        after it: an event it fires there (``reconnect``) is only queued
        behind that action, and the connector still says CONNECTED. The
        turn lets the action finish first.
        """
        status = yield self.ok(node, "network_connected", wait_timeout=10)
        self.assertEqual(status["state"], "CONNECTED")
        yield deferLater(reactor, 0, lambda: None)
        return status

    @inlineCallbacks
    def test_without_identity_the_gateway_says_why(self):
        node = yield self.fresh_node()
        info = node.service_driver.info("service_gateway")
        self.assertEqual(info["state"], "FAILED")
        self.assertIn("no identity: call identity_create first", info["reason"])
        answer = yield self.call(node, "network_connected", wait_timeout=0)
        self.assertEqual(answer.code, 503)
        answer = yield self.call(node, "packets_stats")
        self.assertEqual(answer.code, 503)
        self.assertIn("identity_create", answer.envelope["errors"][0])

    @inlineCallbacks
    def test_network_connected_waits_for_the_network_service_to_come_up(self):
        node = yield self.fresh_node()
        waiting = self.ok(node, "network_connected", wait_timeout=10)
        yield self.ok(node, "identity_create", username="carol")  # the gateway, then the network start now
        status = yield waiting
        self.assertEqual(status["state"], "CONNECTED")
        yield deferLater(reactor, 0, lambda: None)

    @inlineCallbacks
    def test_network_connected_on_a_node_that_never_comes_up_says_why_after_the_wait(self):
        node = yield self.fresh_node()
        started = reactor.seconds()
        answer = yield self.call(node, "network_connected", wait_timeout=0.3)
        self.assertEqual(answer.code, 503)
        self.assertIn("service_network is not running", answer.envelope["errors"][0])
        self.assertGreaterEqual(reactor.seconds() - started, 0.3)

    @inlineCallbacks
    def test_alice_pings_bob_through_the_api(self):
        alice = yield self.joined_node("alice")
        bob = yield self.joined_node("bob")
        bob_id = bob.service_driver.get("service_identity").my_global_id()
        alice_id = alice.service_driver.get("service_identity").my_global_id()
        # the contact published is where bob's gateway really listens
        bob_gateway = bob.service_driver.get("service_gateway").gateway
        published = yield alice.service_driver.get("service_identity").fetch_identity(bob_id, refresh=True)
        self.assertEqual(published.contacts, (bob_gateway.contact,))

        before = yield self.ok(alice, "user_status", user_id=bob_id)
        self.assertEqual(before["state"], "UNKNOWN")
        pong = yield self.ok(alice, "user_ping", user_id=bob_id, timeout=5, retries=0)
        self.assertEqual((pong["state"], pong["attempts"]), ("CONNECTED", 1))
        self.assertGreaterEqual(pong["round_trip"], 0)
        # bob did not know alice: her Identity packet introduced her
        status = yield self.ok(bob, "user_status", user_id=alice_id)
        self.assertEqual(status["state"], "CONNECTED")
        checked = yield self.ok(alice, "user_status_check", user_id=bob_id, timeout=5)
        self.assertTrue(checked["online"])

        stats = yield self.ok(alice, "packets_stats")
        self.assertEqual(stats["out"]["by_command"]["Identity"], 1)
        self.assertEqual(stats["in"]["by_command"]["Ack"], 1)
        packets = yield self.ok(alice, "packets_list")
        self.assertEqual([(p["command"], p["state"]) for p in packets], [("Identity", "DONE")])
        connections = yield self.ok(alice, "connections_list", protocols=["tcp"])
        self.assertEqual(connections[0]["peers"], [bob_id])
        self.assertEqual((yield self.ok(alice, "connections_list", protocols=["udp"])), [])
        self.assertEqual((yield self.ok(alice, "streams_list")), [])
        network = yield self.ok(alice, "network_status", tcp=True, cache=True, dht=True)
        self.assertTrue(network["connected"])
        self.assertEqual(network["tcp"]["contact"], alice.service_driver.get("service_gateway").gateway.contact)
        self.assertIn(bob_id, [item["global_id"] for item in network["cache"]["items"]])
        # what strangers may cost, and what they did, where an operator looks
        self.assertEqual(network["tcp"]["limits"]["connections"]["max_per_ip"], 64)
        self.assertEqual(network["tcp"]["limits"]["introductions"]["rate_limited"], 0)
        self.assertEqual(network["cache"]["limits"]["max_entries"], 10_000)
        self.assertIn("negative_cached", network["cache"]["fetches"])
        self.assertFalse(network["dht"]["available"])
        network = yield self.ok(alice, "network_status", udp=True, proxy=True)
        self.assertIn("tcp", network["udp"]["reason"])
        self.assertIn("service_proxy_transport is NOT_INSTALLED", network["proxy"]["reason"])
        config = yield self.ok(alice, "network_configuration")
        self.assertEqual(config["tcp"]["port"], 0)
        self.assertIsNotNone(config["tcp"]["listening_port"])
        events = [event.event_id for event in alice.events.since(0)[0]]
        self.assertIn("network-connected", events)

        # a forged packet (bob's name, someone else's key) is dropped and counted
        forged = Packet.create(reactor, Command.IDENTITY, bob_id, bob_id, alice_id, b"x", Ed25519Signer(seed(9)))
        address = ("127.0.0.1", alice.service_driver.get("service_gateway").gateway.port)
        yield bob_gateway.transport.send(address, forged)
        def dropped():
            return self.ok(alice, "packets_stats").addCallback(lambda stats: stats["dropped"]["bad_signature"])

        self.assertEqual((yield wait_until(dropped, "the forged packet to be dropped")), 1)

        # bob goes away: the ping fails with 503 and his status turns OFFLINE
        yield bob.stopService()
        answer = yield self.call(alice, "user_ping", user_id=bob_id, timeout=2, retries=0)
        self.assertEqual(answer.code, 503, answer.envelope)
        status = yield self.ok(alice, "user_status", user_id=bob_id)
        self.assertEqual(status["state"], "OFFLINE")

    @inlineCallbacks
    def test_network_reconnect_goes_round_to_connected(self):
        alice = yield self.joined_node("alice")
        answer = yield self.ok(alice, "network_reconnect")
        self.assertEqual(answer["reconnect"], "started")
        self.assertNotEqual(answer["state"], "CONNECTED")  # handled at once: we are not inside the connector
        yield self.connected(alice)
        legacy = yield self.call(alice, "reconnect")
        self.assertEqual(legacy.code, 200, legacy.envelope)
        yield self.connected(alice)
        transitions = [m for m in alice.automats.list() if m["name"] == "network_connector"][0]["transitions"]
        path = [(t["from"], t["event"], t["to"]) for t in transitions]
        round_trip = [("CONNECTED", "reconnect", "TRANSPORTS?"), ("TRANSPORTS?", "all-network-transports-ready",
                                                                     "CONNECTED?"), ("CONNECTED?", "network-up", "CONNECTED")]
        self.assertEqual(path[-6:], round_trip * 2, path)

    @inlineCallbacks
    def test_gateway_settings_reach_the_gateway(self):
        alice = yield self.joined_node("alice")
        gateway = alice.service_driver.get("service_gateway").gateway
        self.assertEqual(gateway.packet_timeout, 30.0)
        yield self.ok(alice, "config_set", key="services/gateway/packet-timeout", value="12.5")
        self.assertEqual(gateway.packet_timeout, 12.5)
        info = yield self.ok(alice, "service_info", service_name="service_gateway")
        self.assertEqual(info["status"]["contact"], gateway.contact)
        self.assertIn("services/gateway/flood-limit", [c["key"] for c in info["configs"]])

    @inlineCallbacks
    def test_erasing_the_identity_takes_the_gateway_down(self):
        alice = yield self.joined_node("alice")
        yield self.ok(alice, "identity_erase", erase_private_key=True)
        for _ in range(200):
            if alice.service_driver.info("service_gateway")["state"] == "FAILED":
                break
            yield deferLater(reactor, 0.02, lambda: None)
        info = alice.service_driver.info("service_gateway")
        self.assertEqual(info["state"], "FAILED")
        self.assertIn("no identity", info["reason"])
        self.assertFalse(alice.service_driver.is_on("service_network"))
        answer = yield self.call(alice, "user_status", user_id="bob@127.0.0.1_8084")
        self.assertEqual(answer.code, 503)
