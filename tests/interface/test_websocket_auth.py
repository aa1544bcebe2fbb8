"""WebSocket authentication without the secret in the URL, limits on frames and handshakes, and logs
that never show the secret (the handshake URL, refused handshakes included)."""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest

from bitnode.app import api_server
from tests.interface.support import WsRefused, connect_idle, connect_ws, start_node, wait_until


class WsAuthTestCase(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.node = yield start_node(self)
        self.factory = api_server(self.node)._ws_port.factory

    def refused(self) -> dict:
        return api_server(self.node).dispatcher.limits.refused

    @defer.inlineCallbacks
    def assertClosedUnauthenticated(self, client):
        yield client.closed.addTimeout(2, reactor)
        self.assertEqual(client.remoteCloseCode, 1008)


class FirstMessageAuthTests(WsAuthTestCase):
    """A client that cannot set headers sends the secret in its first message."""

    @defer.inlineCallbacks
    def test_auth_message_opens_the_session(self):
        client = yield connect_ws(self, self.node, secret=None)
        self.node.events.publish("before-auth", {})
        client.send_json({"command": "auth", "api_secret": api_server(self.node).secret, "call_id": "a"})
        reply = yield client.next_message(lambda m: m.get("type") == "auth")
        self.assertEqual((reply["call_id"], reply["code"], reply["payload"]["result"]), ("a", 200,
                                                                                        {"authenticated": True}))
        self.assertTrue((yield client.call_ok("process_health"))["alive"])
        self.node.events.publish("after-auth", {})
        event = yield client.next_message(lambda m: m.get("type") == "event")
        self.assertEqual(event["payload"]["event_id"], "after-auth")  # nothing was pushed before auth

    @defer.inlineCallbacks
    def test_header_secret_needs_no_auth_message(self):
        client = yield connect_ws(self, self.node, secret=None, headers={"api_secret": api_server(self.node).secret})
        self.assertTrue((yield client.call_ok("process_health"))["alive"])

    @defer.inlineCallbacks
    def test_call_before_auth_is_401_and_closes(self):
        client = yield connect_ws(self, self.node, secret=None)
        reply = yield client.call("process_health")
        self.assertEqual(reply["code"], 401)
        self.assertIn("authenticate first", reply["payload"]["errors"][0])
        yield self.assertClosedUnauthenticated(client)

    @defer.inlineCallbacks
    def test_wrong_secret_in_auth_message_is_401_and_closes(self):
        client = yield connect_ws(self, self.node, secret=None)
        client.send_json({"command": "auth", "api_secret": "guess", "call_id": 1})
        reply = yield client.next_message()
        self.assertEqual((reply["code"], reply["payload"]["errors"]), (401, ["wrong api_secret"]))
        yield self.assertClosedUnauthenticated(client)

    @defer.inlineCallbacks
    def test_auth_message_with_a_secret_that_is_not_text_is_401(self):
        client = yield connect_ws(self, self.node, secret=None)
        client.send_json({"command": "auth", "api_secret": ["x"], "call_id": 1})
        reply = yield client.next_message()
        self.assertEqual(reply["code"], 401)
        yield self.assertClosedUnauthenticated(client)

    @defer.inlineCallbacks
    def test_client_that_never_authenticates_is_closed_after_the_timeout(self):
        clock = self.factory.clock = Clock()
        client = yield connect_ws(self, self.node, secret=None)
        clock.advance(9.9)
        self.assertIsNone(client.remoteCloseCode)
        clock.advance(0.2)  # interface/api/ws-auth-timeout, 10 s by default
        reply = yield client.next_message()
        self.assertEqual(reply["code"], 401)
        self.assertIn("not authenticated within 10 s", reply["payload"]["errors"][0])
        yield self.assertClosedUnauthenticated(client)
        self.assertEqual(self.refused()["ws_auth_timeouts"], 1)

    @defer.inlineCallbacks
    def test_wrong_secret_in_the_url_is_still_refused_at_the_handshake(self):
        with self.assertRaises(WsRefused):
            yield connect_ws(self, self.node, secret="not-the-secret")
        self.assertEqual(self.refused()["ws_handshakes_refused"], 1)


class FrameLimitTests(WsAuthTestCase):
    @defer.inlineCallbacks
    def test_frame_over_max_body_bytes_closes_the_connection_and_is_counted(self):
        self.node.settings.set("interface/api/max-body-bytes", 2048)
        client = yield connect_ws(self, self.node)
        client.sendMessage(b'{"command": "api_call", "x": "' + b"y" * 4096 + b'"}')
        yield client.closed.addTimeout(2, reactor)  # dropped: refused from the frame header, payload unread
        yield wait_until(lambda: self.refused()["body_too_large"] == 1, "the refusal counted")

    @defer.inlineCallbacks
    def test_endless_handshake_is_cut_at_16_kib(self):
        port = api_server(self.node)._ws_port.getHost().port
        client = yield connect_idle(port)
        client.transport.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: " + b"a" * 20_000)
        yield client.lost.addTimeout(2, reactor)  # autobahn kept buffering it before
        self.assertEqual(self.refused()["ws_handshakes_refused"], 1)


class LogSecrecyTests(WsAuthTestCase):
    """The secret never reaches a log line, at any debug level."""

    def setUp(self):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        return super().setUp()

    def texts(self) -> list[str]:
        out = []
        for event in self.events:
            if str(event.get("log_namespace", "")).startswith("tests."):
                continue
            out.append(formatEvent(event))
            if event.get("log_failure") is not None:
                out.append(event["log_failure"].getTraceback())
        return out

    @defer.inlineCallbacks
    def test_handshake_url_secret_is_redacted_even_at_debug_level(self):
        self.node.settings.set("logs/debug-level", 20)
        client = yield connect_ws(self, self.node)  # ?api_secret=... in the URL, as BitDust's clients do
        yield client.call_ok("process_health")
        texts = self.texts()
        self.assertTrue(any("<redacted>" in text for text in texts), "the handshake was logged at debug level")
        for text in texts:
            self.assertNotIn(api_server(self.node).secret, text)

    @defer.inlineCallbacks
    def test_refused_handshake_does_not_log_the_guessed_secret(self):
        self.node.settings.set("logs/debug-level", 20)
        with self.assertRaises(WsRefused):
            yield connect_ws(self, self.node, secret="guessed-secret-1234")
        for text in self.texts():
            self.assertNotIn("guessed-secret-1234", text)

    @defer.inlineCallbacks
    def test_debug_events_only_at_a_debug_level(self):
        client = yield connect_ws(self, self.node)
        yield client.call_ok("process_health")
        mine = [e for e in self.events if str(e.get("log_namespace", "")).startswith("bitnode.interface.websocket")]
        self.assertEqual([e for e in mine if e["log_level"].name == "debug"], [])  # logs/debug-level 4
        self.node.settings.set("logs/debug-level", 8)
        client = yield connect_ws(self, self.node)
        yield client.call_ok("process_health")
        mine = [e for e in self.events if str(e.get("log_namespace", "")).startswith("bitnode.interface.websocket")]
        self.assertTrue([e for e in mine if e["log_level"].name == "debug"])
