"""In-process network: routers, nodes without a listening port (as behind NAT) and a reachable node.

Real services (identity, identity server, gateway, network, DHT, proxy server
and transport) on loopback, in one reactor, driven through the API
dispatcher.  Routers are found in the DHT; a node that does not listen gets
routed and publishes its router; a reachable node learns it is reachable
from a router's probe; when the router goes away the node moves to another.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from bitnode.dht.dht_service import DHTService
from bitnode.p2p.network_service import NetworkService
from bitnode.p2p.proxy_protocol import proxy_request
from bitnode.p2p.proxy_server_service import ProxyServerService
from bitnode.p2p.proxy_transport_service import ProxyTransportService
from bitnode.transport.commands import Command
from bitnode.transport.gateway_service import GatewayService
from bitnode.transport.packet_out import PeerRefused
from bitnode.userid.id_service import IdentityService
from tests.chat.support import ChatNetworkCase
from tests.interface.support import wait_until
from tests.p2p.test_external_address import FixedAnswerStunServer

SERVICES = [IdentityService, GatewayService, DHTService, NetworkService, ProxyServerService, ProxyTransportService]
ROUTER = {"services/proxy-server/enabled": True}
BEHIND_NAT = {"services/gateway/listen": False}


class ProxyNetworkTests(ChatNetworkCase):
    timeout = 90

    @inlineCallbacks
    def node(self, name, **overrides):
        from tests.interface.support import start_node

        node = yield start_node(self, service_classes=SERVICES, overrides=dict(self.settings, **overrides))
        yield self.ok(node, "identity_create", username=name)
        yield wait_until(lambda: node.service_driver.is_on(ProxyTransportService.name), f"{name}'s services",
                         timeout=20)
        return node

    @inlineCallbacks
    def router(self, name, **overrides):
        node = yield self.node(name, **ROUTER, **overrides)
        server = node.service_driver.get(ProxyServerService.name)
        yield wait_until(lambda: server.layer_joined, f"{name} to join the routers' layer", timeout=20)
        return node

    def receiver(self, node):
        return node.service_driver.get(ProxyTransportService.name).receiver

    def global_id(self, node):
        return node.service_driver.get(IdentityService.name).my_global_id()

    def contacts(self, node):
        return node.service_driver.get(IdentityService.name).my_identity().contacts

    def port(self, node):
        return node.service_driver.get(GatewayService.name).gateway.port

    @inlineCallbacks
    def test_a_node_without_a_port_is_routed_found_and_moved_to_another_router(self):
        router1 = yield self.router("router1")
        hidden = yield self.node("hidden", **BEHIND_NAT)
        yield wait_until(lambda: self.receiver(hidden).state == "ROUTED", "hidden to be routed", timeout=30)
        self.assertEqual(self.receiver(hidden).router, self.global_id(router1))
        self.assertEqual(self.contacts(hidden), (f"proxy://127.0.0.1:{self.port(router1)}",))
        connected = yield self.ok(hidden, "network_connected", wait_timeout=20)
        self.assertIn("identity server publishes proxy://", connected["reason"])

        # a reachable node is told so by a router that connected to it
        open_node = yield self.node("open")
        yield wait_until(lambda: self.receiver(open_node).state == "DIRECT", "open to be direct", timeout=30)
        self.assertIn("connected to us", self.receiver(open_node).reason)
        self.assertEqual(self.contacts(open_node), (f"tcp://127.0.0.1:{self.port(open_node)}",))

        # both ways through the router
        pong = yield self.ok(open_node, "user_ping", user_id=self.global_id(hidden), timeout=10)
        self.assertEqual(pong["global_id"], self.global_id(hidden))
        pong = yield self.ok(hidden, "user_ping", user_id=self.global_id(open_node), timeout=10)
        self.assertEqual(pong["global_id"], self.global_id(open_node))
        mine = yield self.ok(hidden, "network_status", proxy=True)
        self.assertEqual((mine["proxy"]["mode"], mine["proxy"]["router"]), ("routed", self.global_id(router1)))
        self.assertGreater(mine["proxy"]["packets_by_path"]["via_router"], 0)
        theirs = yield self.ok(router1, "network_status", proxy=True)
        self.assertEqual(theirs["proxy"]["mode"], "router")
        (row,) = theirs["proxy"]["routed_nodes"]
        self.assertEqual(row["global_id"], self.global_id(hidden))
        self.assertGreater(row["bytes_in"], 0)
        self.assertGreater(row["bytes_out"], 0)
        connections = yield self.ok(hidden, "connections_list")
        self.assertEqual({c["port"] for c in connections}, {self.port(router1)})
        routed = yield self.ok(hidden, "connections_list", protocols=["proxy"])
        self.assertEqual([c["proxy"] for c in routed], ["router"])

        # the router goes away: the node moves to another one and publishes it
        router2 = yield self.router("router2")
        yield router1.stopService()
        yield wait_until(lambda: self.receiver(hidden).router == self.global_id(router2), "hidden to move",
                         timeout=40)
        yield wait_until(lambda: self.receiver(hidden).state == "ROUTED", "the new route", timeout=20)
        self.assertEqual(self.contacts(hidden), (f"proxy://127.0.0.1:{self.port(router2)}",))
        self.assertEqual(self.receiver(hidden).reroutes, 1)
        pong = yield self.ok(open_node, "user_ping", user_id=self.global_id(hidden), timeout=10, retries=3)
        self.assertEqual(pong["global_id"], self.global_id(hidden))
        events = [e.event_id for e in hidden.events.since(0)[0]]
        self.assertEqual([e for e in events if e.startswith("proxy-")],
                         ["proxy-routed", "proxy-router-lost", "proxy-routed"])

    @inlineCallbacks
    def test_a_node_forced_unreachable_is_routed_though_it_listens(self):
        router = yield self.router("router")
        forced = yield self.node("forced", **{"services/proxy-transport/reachable": "no"})
        yield wait_until(lambda: self.receiver(forced).state == "ROUTED", "forced to be routed", timeout=30)
        self.assertEqual(self.contacts(forced), (f"proxy://127.0.0.1:{self.port(router)}",))
        # the setting back to auto: a router connects to it, so it goes direct again and publishes its port
        yield self.ok(forced, "config_set", key="services/proxy-transport/reachable", value="auto")
        yield wait_until(lambda: self.receiver(forced).state == "DIRECT", "forced to be direct", timeout=30)
        yield wait_until(lambda: self.contacts(forced) == (f"tcp://127.0.0.1:{self.port(forced)}",),
                         "its own contact again", timeout=10)
        server = router.service_driver.get(ProxyServerService.name)
        yield wait_until(lambda: server.relay.routed() == [], "the router to forget it", timeout=10)
        self.assertEqual(server.requests["leave"], 1)
        self.assertEqual(server.probe_stats()["dialled"], 1)

    def stun_server(self, host):
        port = reactor.listenUDP(0, FixedAnswerStunServer(host), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"127.0.0.1:{port.getHost().port}"

    @inlineCallbacks
    def test_stun_decides_reachability_when_no_router_can_dial_back(self):
        # STUN sees us behind a NAT (an address none of our interfaces has): not reachable, whatever our port
        natted = yield self.node("natted", **{"services/stun-client/servers": [self.stun_server("203.0.113.7")]})
        yield wait_until(lambda: self.receiver(natted).state == "OFFLINE", "natted to look for a router",
                         timeout=30)
        status = yield self.ok(natted, "network_status")
        decision = status["reachability"]["last"]
        self.assertEqual((decision["reachable"], decision["decided_by"], decision["stun"], decision["external_ip"]),
                         (False, "stun", "nat", "203.0.113.7"))
        self.assertIn("no router could test", decision["reason"])
        # STUN sees our own address: reachable, though no router could confirm it
        public = yield self.node("public", **{"services/stun-client/servers": [self.stun_server("127.0.0.1")]})
        yield wait_until(lambda: self.receiver(public).state == "DIRECT", "public to stay direct", timeout=30)
        status = yield self.ok(public, "network_status")
        self.assertEqual(status["reachability"]["last"]["decided_by"], "stun")
        self.assertEqual((status["reachability"]["checks"], status["reachability"]["stun_public"]), (1, 1))

    @inlineCallbacks
    def test_behind_nat_by_stun_and_refuted_by_a_router_the_node_is_routed_and_moves_back_when_the_network_changes(
            self):
        router = yield self.router("router")
        natted = yield self.node("natted", **{"services/stun-client/servers": [self.stun_server("203.0.113.7")],
                                              "services/proxy-transport/reachable": "no"})
        yield wait_until(lambda: self.receiver(natted).state == "ROUTED", "natted to be routed", timeout=30)
        transport = natted.service_driver.get(ProxyTransportService.name)
        self.assertEqual(transport.reachability.last.decided_by, "setting")
        # the setting back to auto: STUN says NAT, but the router gets in (a forwarded port): direct
        yield self.ok(natted, "config_set", key="services/proxy-transport/reachable", value="auto")
        yield wait_until(lambda: self.receiver(natted).state == "DIRECT", "natted to go direct", timeout=30)
        decision = transport.reachability.last
        self.assertEqual((decision.reachable, decision.decided_by, decision.stun, decision.dial_back),
                         (True, "stun+dial-back", "nat", "reachable"))
        self.assertIn(self.global_id(router), decision.reason)
        # the network changes: STUN (the network connector's) sees a new address, and it is decided again
        checks = transport.reachability.status()["checks"]
        natted.events.publish("external-address-changed", {"ip": "198.51.100.1"})
        yield wait_until(lambda: transport.reachability.status()["checks"] == checks + 1, "a new decision",
                         timeout=30)
        self.assertEqual(transport.reachability.status()["network_changes"], 1)

    @inlineCallbacks
    def test_without_any_router_a_node_without_a_port_is_disconnected_and_says_why(self):
        lonely = yield self.node("lonely", **BEHIND_NAT)
        yield wait_until(lambda: self.receiver(lonely).state == "OFFLINE", "lonely to give up", timeout=30)
        answer = yield self.call(lonely, "network_connected", wait_timeout=0)
        self.assertEqual(answer.code, 503)
        self.assertIn("no router", " ".join(answer.envelope["errors"]))

    @inlineCallbacks
    def test_reachability_probes_are_limited_per_address_and_a_closed_port_is_reported(self):
        # a stranger cannot make a router dial anywhere it likes, as often as it likes
        router = yield self.router("router", **{"services/proxy-server/probes-per-minute": 2})
        asker = yield self.node("asker", **{"services/proxy-transport/reachable": "yes"})  # probes nobody itself
        gateway = asker.service_driver.get(GatewayService.name).gateway
        router_id = self.global_id(router)
        answer = yield gateway.request(Command.REQUEST_SERVICE, router_id, proxy_request("probe", self.port(asker)))
        self.assertEqual(answer.command, "Ack")
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            closed = sock.getsockname()[1]
        err = yield self.assertFailure(
            gateway.request(Command.REQUEST_SERVICE, router_id, proxy_request("probe", closed)), PeerRefused)
        self.assertTrue(err.reason.startswith("unreachable"), err.reason)
        err = yield self.assertFailure(
            gateway.request(Command.REQUEST_SERVICE, router_id, proxy_request("probe", self.port(asker))),
            PeerRefused)
        self.assertIn("too many reachability probes", err.reason)
        stats = router.service_driver.get(ProxyServerService.name).probe_stats()
        self.assertEqual((stats["dialled"], stats["unreachable"], stats["rate_limited"], stats["running"]),
                         (1, 1, 1, 0))
