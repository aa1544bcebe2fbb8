"""Node: several nodes in one reactor stay apart, and a stopped node leaves nothing behind."""

from __future__ import annotations

import json
import os

from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import CannotListenError, ConnectionRefusedError, ReactorNotRunning
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from bitnode.app import api_server, build_node
from bitnode.interface import api as api_module
from bitnode.main import netns
from tests.interface.support import (
    FAKE_SERVICES,
    WAIT,
    HttpApi,
    Lamp,
    connect_idle,
    connect_ws,
    pending_calls,
    start_node,
    stored_settings,
    wait,
    wait_until,
)


class TwoNodesTests(unittest.TestCase):
    """Two nodes with their own basedirs and ports in one reactor."""

    @defer.inlineCallbacks
    def setUp(self):
        self.a = yield start_node(self)
        self.b = yield start_node(self)
        self.api_a = HttpApi(self, self.a)
        self.api_b = HttpApi(self, self.b)

    def test_each_node_has_its_own_basedir_ports_and_secret(self):
        self.assertNotEqual(self.a.basedir.root, self.b.basedir.root)
        self.assertNotEqual(self.a.endpoints()["http"], self.b.endpoints()["http"])
        self.assertNotEqual(self.a.endpoints()["ws"], self.b.endpoints()["ws"])
        self.assertNotEqual(api_server(self.a).secret, api_server(self.b).secret)

    @defer.inlineCallbacks
    def test_both_answer_and_refuse_the_other_ones_secret(self):
        for api in (self.api_a, self.api_b):
            self.assertEqual((yield api.get("process/health/v1")).result["alive"], True)
        reply = yield self.api_b.request("GET", "process/health/v1", secret=api_server(self.a).secret)
        self.assertEqual(reply.code, 401)
        info = (yield self.api_b.get("process/info/v1")).result
        self.assertEqual(info["basedir"], self.b.basedir.root)

    def test_each_node_writes_its_own_endpoints_file(self):
        for node in (self.a, self.b):
            with open(node.basedir.endpoints_file, encoding="utf-8") as handle:
                written = json.load(handle)
            self.assertEqual((written["http"], written["ws"], written["basedir"]),
                             (node.endpoints()["http"], node.endpoints()["ws"], node.basedir.root))
            self.assertEqual(written.get("netns"), netns.current_name())  # None unless run under `ip netns exec`

    @defer.inlineCallbacks
    def test_a_node_in_a_named_network_namespace_names_it_in_its_endpoints_file(self):
        # clients (bitnode api, localnet) then connect from inside it: the API is on its loopback
        self.patch(netns, "current_name", lambda: "bn-home1")
        node = yield start_node(self)
        with open(node.basedir.endpoints_file, encoding="utf-8") as handle:
            self.assertEqual(json.load(handle)["netns"], "bn-home1")

    @defer.inlineCallbacks
    def test_config_set_on_one_does_not_change_the_other(self):
        yield self.api_a.post("config/set/v1", key="logs/debug-level", value=12)
        self.assertEqual((yield self.api_b.get("config/get/v1", key="logs/debug-level")).result["value"], 4)
        self.assertEqual(stored_settings(self.a)["logs/debug-level"], 12)
        self.assertNotIn("logs/debug-level", stored_settings(self.b))
        yield self.api_b.post("service/stop/service_fake_top/v1")
        self.assertTrue(self.a.service_driver.is_on("service_fake_top"))

    @defer.inlineCallbacks
    def test_events_stay_on_their_node(self):
        listener_b = yield connect_ws(self, self.b)
        seq_b = self.b.events.last_seq
        sent = (yield self.api_a.post("event/send/only-a/v1")).result
        self.assertEqual(sent["seq"], self.a.events.last_seq)
        self.assertEqual(self.b.events.last_seq, seq_b)
        yield listener_b.call_ok("process_health")
        self.assertEqual(listener_b.events(), [])
        polled = (yield self.api_b.get("event/listen/b/v1", since=0, polling_timeout=0)).result
        self.assertNotIn("only-a", [e["event_id"] for e in polled["events"]])

    @defer.inlineCallbacks
    def test_stopping_one_leaves_the_other_running(self):
        ports = [api_server(self.a)._http_port.getHost().port, api_server(self.a)._ws_port.getHost().port]
        yield self.a.stopService()
        for port in ports:
            with self.assertRaises(ConnectionRefusedError):
                yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(Protocol))
        self.assertEqual((yield self.api_b.get("process/health/v1")).result, {"alive": True, "ready": True})
        client = yield connect_ws(self, self.b)
        self.assertTrue((yield client.call_ok("event_send", event_id="still-here"))["seq"])


class StopTests(unittest.TestCase):
    """After stopService no listening port, connection, thread or delayed call of the node remains."""

    @defer.inlineCallbacks
    def test_stop_service_leaves_nothing_behind(self):
        before = pending_calls()
        node = yield start_node(self)
        ports = [api_server(node)._http_port, api_server(node)._ws_port]
        ws = yield connect_ws(self, node)
        # A keep-alive HTTP connection the client does not close itself.
        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        client = HTTPClient(Agent(reactor, pool=pool))
        response = yield client.get(node.endpoints()["http"] + "process/health/v1",
                                    headers={"api_secret": api_server(node).secret})
        yield response.content()
        # Idle raw connections: one that never sends its WebSocket handshake, one that never sends a request.
        idle = []
        for port in ports:
            idle.append((yield connect_idle(port.getHost().port)))
        lamp = Lamp(node.reactor, registry=node.automats)
        lamp.event("switch")
        self.patch(api_module, "STOP_DELAY", 30.0)
        node.on_stop_requested = lambda: self.fail("stop requested after the node stopped")
        yield ws.call_ok("process_stop")
        self.assertTrue(node.threadpool.started)
        self.assertTrue(pending_calls() - before)
        open_connections = list(api_server(node)._connections)
        self.assertEqual(sum(len(connections) for connections in open_connections), 4)

        yield node.stopService()

        self.assertEqual(node.endpoints(), {})
        for port in ports:
            self.assertNotIn(port, reactor.getReaders())
        self.assertEqual([len(connections) for connections in open_connections], [0, 0])
        self.assertEqual(api_server(node)._connections, [])
        self.assertFalse(node.threadpool.started)
        self.assertEqual(node.threadpool.threads, [])
        self.assertTrue(lamp.destroyed)
        yield ws.closed.addTimeout(WAIT, reactor)
        for protocol in idle:
            yield protocol.lost.addTimeout(WAIT, reactor)
        (kept,) = [protocol for protocols in pool._connections.values() for protocol in protocols]
        # the client side of the kept-alive connection sees the close a moment later
        yield wait_until(lambda: kept._state == "CONNECTION_LOST")
        self.assertEqual(kept._state, "CONNECTION_LOST")
        yield pool.closeCachedConnections()  # the client pool's own idle timer
        self.assertEqual(pending_calls() - before, set())

    @defer.inlineCallbacks
    def test_failed_listen_leaves_no_port_or_thread(self):
        first = yield start_node(self)
        taken = int(first.endpoints()["ws"].rsplit(":", 1)[1].rstrip("/"))
        second = build_node(self.mktemp(), reactor, service_classes=FAKE_SERVICES,
                            overrides={"interface/api/http-port": 0, "interface/api/ws-port": taken})
        self.assertRaises(CannotListenError, second.startService)
        self.assertIsNone(api_server(second)._http_port)
        self.assertFalse(second.threadpool.started)
        yield wait(0)  # the HTTP port opened before the failure finishes closing


class _StoppableClock(Clock):
    """A Clock that stops like a reactor: a second ``stop()`` raises ReactorNotRunning."""

    running = True

    def __init__(self):
        super().__init__()
        self.stops = 0

    def stop(self):
        if self.stops:
            raise ReactorNotRunning("Can't stop reactor that isn't running.")
        self.stops += 1


class EndRequestTests(unittest.TestCase):
    """process_stop / process_restart asked twice: the process ends once, the second request is a no-op."""

    def setUp(self):
        self.clock = _StoppableClock()
        self.node = build_node(self.mktemp(), self.clock, service_classes=FAKE_SERVICES)

    def test_second_stop_is_a_no_op_not_a_reactor_error(self):
        first = api_server(self.node).api.process_stop()
        second = api_server(self.node).api.process_stop()
        self.clock.advance(1)  # raised ReactorNotRunning from the second delayed stop before
        self.assertEqual(self.clock.stops, 1)
        self.assertEqual(first, {"stopping": True, "pid": os.getpid()})
        self.assertEqual(second["ignored"], "a stop is already under way")
        self.assertTrue(second["stopping"])

    def restart_after(self, first: str):
        """process_restart right after ``first`` (a method name), a second later: (restarts asked, its answer)."""
        restarts = []
        self.node.on_restart_requested = lambda: restarts.append(1)
        api = api_server(self.node).api
        getattr(api, first)()
        answer = api.process_restart()
        self.clock.advance(1)
        return restarts, answer

    def test_restart_after_stop_is_a_no_op(self):
        restarts, answer = self.restart_after("process_stop")
        self.assertEqual((self.clock.stops, restarts), (1, []))
        self.assertEqual((answer["restarting"], answer["ignored"]), (False, "a stop is already under way"))

    def test_second_restart_is_a_no_op(self):
        restarts, answer = self.restart_after("process_restart")
        self.assertEqual(restarts, [1])
        self.assertEqual((answer["restarting"], answer["ignored"]), (True, "a restart is already under way"))

    def test_stop_while_a_signal_already_stops_the_reactor(self):
        self.clock.stop()  # SIGTERM got there first; the reactor still says it is running while it stops
        api_server(self.node).api.process_stop()
        self.clock.advance(1)  # no ReactorNotRunning escapes
        self.assertEqual(self.clock.stops, 1)
