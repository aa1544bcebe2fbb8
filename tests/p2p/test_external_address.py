"""My external address from STUN (issue 16.2): the decision with fakes and a Clock, then real nodes on loopback."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from bitnode.app import api_server
from bitnode.errors import Timeout
from bitnode.p2p import stun
from bitnode.p2p.external_address import ExternalAddress, host_to_advertise
from bitnode.p2p.network_service import NetworkService
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService
from tests.interface.support import DispatcherCalls, start_id_server, start_node, wait_until

SERVER = "stun.example.net:3478"
ANSWER = {"local_port": 40000, "ip": "203.0.113.7", "port": 40001, "server": SERVER}


class Neighbours:
    """Fakes of what ExternalAddress calls: the STUN query and the gateway."""

    def __init__(self) -> None:
        self.servers = [SERVER]
        self.interface = "0.0.0.0"
        self.enabled = True
        self.queries: list[defer.Deferred] = []
        self.advertised: list[str] = []

    def query(self, servers: list) -> defer.Deferred:
        d = defer.Deferred()
        self.queries.append(d)
        return d

    def advertise(self, host: str) -> defer.Deferred:
        changed = not self.advertised or self.advertised[-1] != host
        self.advertised.append(host)
        return defer.succeed(changed)


class ExternalAddressTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.fakes = Neighbours()
        self.external = ExternalAddress(
            self.clock, self.fakes.query, lambda: self.fakes.servers, lambda: self.fakes.interface,
            self.fakes.advertise, lambda: self.fakes.enabled, min_interval=60.0)

    def answer(self, index: int = -1, **changes) -> None:
        self.fakes.queries[index].callback(dict(ANSWER, **changes))

    def test_the_answer_is_advertised_and_reported(self) -> None:
        self.assertIsNotNone(self.external.learn())
        self.answer()
        self.assertEqual(self.fakes.advertised, ["203.0.113.7"])
        status = self.external.status()
        self.assertEqual((status["queries"], status["answers"], status["applied"]), (1, 1, 1))
        self.assertEqual((status["last"]["ip"], status["last"]["advertised"]), ("203.0.113.7", True))
        self.assertFalse(status["running"])

    def test_one_query_at_a_time_and_not_more_often_than_min_interval_unless_forced(self) -> None:
        self.external.learn()
        self.assertIsNone(self.external.learn(force=True))  # one is on its way
        self.answer()
        self.assertIsNone(self.external.learn())
        self.clock.advance(59)
        self.assertIsNone(self.external.learn())
        self.assertIsNotNone(self.external.learn(force=True))  # a reconnect asks at once
        self.answer()
        self.clock.advance(60)
        self.assertIsNotNone(self.external.learn())
        self.answer(ip="198.51.100.9")
        self.assertEqual(len(self.fakes.queries), 3)
        self.assertEqual(self.fakes.advertised[-1], "198.51.100.9")  # the network changed: the new address
        self.assertEqual(self.external.status()["applied"], 2)

    def test_a_new_address_is_told_once_each_time_it_changes(self) -> None:
        seen: list[str] = []
        self.external = ExternalAddress(
            self.clock, self.fakes.query, lambda: self.fakes.servers, lambda: self.fakes.interface,
            self.fakes.advertise, lambda: self.fakes.enabled, min_interval=60.0, changed=seen.append)
        for ip in ("203.0.113.7", "203.0.113.7", "198.51.100.9", "198.51.100.9", "203.0.113.7"):
            self.external.learn(force=True)
            self.answer(ip=ip)
        self.external.learn(force=True)
        self.fakes.queries[-1].errback(Timeout("no STUN answer"))  # no answer is no news
        self.assertEqual(seen, ["203.0.113.7", "198.51.100.9", "203.0.113.7"])
        self.assertEqual(self.external.status()["changes"], 3)

    def test_hours_of_checks_ask_once_per_interval(self) -> None:
        for _ in range(6 * 60 * 2):  # every 30 s for six hours
            if self.external.learn() is not None:
                self.answer()
            self.clock.advance(30)
        self.assertEqual(len(self.fakes.queries), 6 * 60)

    def test_no_servers_or_switched_off_means_no_query(self) -> None:
        self.fakes.servers = []
        self.assertIsNone(self.external.learn(force=True))
        self.fakes.servers, self.fakes.enabled = [SERVER], False
        self.assertIsNone(self.external.learn(force=True))
        self.fakes.servers, self.fakes.enabled = ["no-port"], True
        self.assertIsNone(self.external.learn(force=True))
        self.assertIn("host:port", self.external.status()["last"]["error"])
        self.assertEqual(self.fakes.queries, [])

    def test_a_failed_query_is_reported_and_changes_nothing(self) -> None:
        self.external.learn()
        self.fakes.queries[0].errback(Timeout("no STUN answer"))
        status = self.external.status()
        self.assertEqual((status["failures"], status["last"]["error"]), (1, "no STUN answer"))
        self.assertEqual(self.fakes.advertised, [])

    def test_a_loopback_listener_keeps_its_address(self) -> None:
        self.fakes.interface = "127.0.0.1"
        self.external.learn()
        self.answer()
        self.assertEqual(self.fakes.advertised, [])
        status = self.external.status()
        self.assertEqual((status["ignored"], status["last"]["advertised"]), (1, False))
        self.assertIn("127.0.0.1 only", status["last"]["reason"])

    def test_stop_cancels_the_query_on_its_way(self) -> None:
        d = self.external.learn()
        self.external.stop()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.fakes.advertised, [])
        self.assertFalse(self.external.status()["running"])

    def test_which_answers_a_listener_may_advertise(self) -> None:
        self.assertEqual(host_to_advertise("203.0.113.7", "0.0.0.0")[0], "203.0.113.7")
        self.assertEqual(host_to_advertise("203.0.113.7", "192.168.1.5")[0], "203.0.113.7")  # port-forwarded NAT
        self.assertEqual(host_to_advertise("127.0.0.5", "127.0.0.1")[0], "127.0.0.5")
        self.assertIsNone(host_to_advertise("203.0.113.7", "127.0.0.1")[0])
        self.assertIsNone(host_to_advertise("203.0.113.7", "localhost")[0])


class FixedAnswerStunServer(DatagramProtocol):
    """A STUN server on loopback that says every client is at ``host`` (a NAT's public side, in a test)."""

    def __init__(self, host: str) -> None:
        self.host = host

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        _kind, tid, _body = stun.parse_header(data)
        self.transport.write(stun.binding_response(tid, self.host, addr[1]), addr)


class NodeLearnsItsAddressTests(DispatcherCalls, unittest.TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        _server, self.settings = yield start_id_server(self)

    def stun_server(self, host: str) -> str:
        port = reactor.listenUDP(0, FixedAnswerStunServer(host), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"127.0.0.1:{port.getHost().port}"

    @inlineCallbacks
    def joined_node(self, name: str, **overrides):
        node = yield start_node(self, service_classes=[IdentityService, GatewayService, NetworkService],
                                overrides=dict(self.settings, **overrides))
        yield self.ok(node, "identity_create", username=name)
        yield wait_until(lambda: node.service_driver.is_on("service_network"), "service_network ON")
        return node

    @inlineCallbacks
    def test_stun_at_start_up_writes_the_address_into_my_contacts_and_publishes_it(self):
        servers = [self.stun_server("127.0.0.5")]
        node = yield self.joined_node("alice", **{"services/stun-client/servers": servers})
        gateway = node.service_driver.find(GatewayService).require_gateway()
        wanted = f"tcp://127.0.0.5:{gateway.port}"
        yield wait_until(lambda: self.my_contacts(node) == [wanted], "my identity to name the STUN address")
        published = yield node.service_driver.find(IdentityService).client.fetch_any(
            list(node.service_driver.find(IdentityService).my_identity().sources))
        self.assertEqual(list(published.contacts), [wanted])
        status = yield self.ok(node, "network_status")
        self.assertEqual((status["external_address"]["last"]["ip"], status["external_address"]["applied"]),
                         ("127.0.0.5", 1))
        # a reconnect asks again at once
        yield self.ok(node, "network_reconnect")
        yield wait_until(lambda: node.service_driver.find(NetworkService).external_status()["queries"] >= 2,
                         "a second STUN check after the reconnect")

    @inlineCallbacks
    def test_a_fixed_external_host_wins_over_stun(self):
        servers = [self.stun_server("127.0.0.5")]
        node = yield self.joined_node("bob", **{"services/stun-client/servers": servers,
                                                "services/gateway/external-host": "127.0.0.9"})
        network = node.service_driver.find(NetworkService)
        yield wait_until(lambda: network.external_status()["answers"] >= 1, "the STUN answer")
        gateway = node.service_driver.find(GatewayService).require_gateway()
        self.assertEqual(self.my_contacts(node), [f"tcp://127.0.0.9:{gateway.port}"])
        self.assertEqual(network.external_status()["applied"], 0)

    @inlineCallbacks
    def test_coming_back_after_a_disconnection_asks_stun_again_at_once(self):
        servers = [self.stun_server("127.0.0.5")]
        node = yield self.joined_node("carol", **{"services/stun-client/servers": servers})
        network = node.service_driver.find(NetworkService)
        yield self.ok(node, "network_connected", wait_timeout=10)
        yield wait_until(lambda: network.external_status()["applied"] == 1 and not network.external_status()["running"],
                         "the first STUN answer published")
        yield deferLater(reactor, 0, lambda: None)  # out of the connector's announce_up action first
        before = network.external_status()["queries"]
        network.connector.event("network-down")
        self.assertEqual(network.connector.state, "DISCONNECTED")
        network.connector.event("check-reconnect")
        yield wait_until(lambda: network.connector.state == "CONNECTED", "connected again")
        # within min-interval (60 s): only the way back asks again, perhaps from another network
        yield wait_until(lambda: network.external_status()["queries"] == before + 1, "a STUN check on the way back")

    @inlineCallbacks
    def test_the_api_stays_on_loopback_whatever_the_peer_interface_says(self):
        # (no gateway here: the test binds nothing on every interface)
        node = yield start_node(self, service_classes=[],
                                overrides={"services/tcp-connections/interface": "0.0.0.0"})
        server = api_server(node)
        self.assertEqual({server._http_port.getHost().host, server._ws_port.getHost().host}, {"127.0.0.1"})

    def my_contacts(self, node) -> list[str]:
        return list(node.service_driver.find(IdentityService).my_identity().contacts)
