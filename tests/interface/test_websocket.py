"""The WebSocket API through a real autobahn client against a running Node."""

from __future__ import annotations

import os

from autobahn.websocket import protocol as ws_protocol
from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher

import bitnode
from bitnode.app import api_server
from bitnode.errors import Conflict
from bitnode.interface.websocket import ApiWebSocketProtocol
from bitnode.main.schema import SCHEMA
from bitnode.main.settings import Settings
from tests.interface.support import (
    WAIT,
    HttpApi,
    Lamp,
    NodeTestCase,
    WsRefused,
    connect_ws,
    wait_until,
)


class WsTestCase(NodeTestCase):
    """A started node with fake services and one connected WebSocket client."""

    @defer.inlineCallbacks
    def connect_client(self):
        self.ws = yield connect_ws(self, self.node)

    @defer.inlineCallbacks
    def assertCallFails(self, code, method, *words, **kwargs):
        """``method(**kwargs)`` is answered with an ERROR envelope of ``code`` mentioning ``words``."""
        reply = yield self.ws.call(method, **kwargs)
        self.assertEqual(reply["code"], code, reply)
        self.assertEqual(reply["payload"]["status"], "ERROR")
        text = " ".join(reply["payload"]["errors"])
        for word in words:
            self.assertIn(word, text)
        return reply

    @defer.inlineCallbacks
    def assertStillOpen(self):
        self.assertEqual((yield self.ws.call_ok("process_health"))["alive"], True)


class ConnectTests(WsTestCase):
    """Who may open a WebSocket."""

    @defer.inlineCallbacks
    def check_refused(self, code, **kwargs):
        with self.assertRaises(WsRefused) as caught:
            yield connect_ws(self, self.node, **kwargs)
        self.assertIn(f"[{code}]", str(caught.exception))

    def test_refused_with_wrong_secret(self):
        return self.check_refused(401, secret="not-the-secret")

    def test_refused_with_foreign_origin(self):
        return self.check_refused(403, origin="https://evil.example")

    def test_refused_with_foreign_host(self):
        return self.check_refused(403, host="evil.example")

    def test_refused_with_bad_since(self):
        return self.check_refused(400, since="yesterday")

    @defer.inlineCallbacks
    def test_refused_with_negative_since(self):
        yield self.check_refused(400, since=-1)
        with self.assertRaises(WsRefused) as caught:
            yield connect_ws(self, self.node, since="-5")
        self.assertIn("0 or more", str(caught.exception))

    @defer.inlineCallbacks
    def test_secret_header_and_local_origin_are_accepted(self):
        port = self.node.endpoints()["ws"].rsplit(":", 1)[1].rstrip("/")
        client = yield connect_ws(self, self.node, secret=None, origin=f"http://127.0.0.1:{port}",
                                  headers={"api_secret": api_server(self.node).secret})
        self.assertTrue((yield client.call_ok("process_health"))["alive"])


class CallTests(WsTestCase):
    """api_call framing, privacy of answers and malformed frames."""

    @defer.inlineCallbacks
    def test_answer_goes_to_the_caller_only(self):
        other = yield connect_ws(self, self.node)
        reply = yield self.ws.call("process_health")
        self.assertEqual(reply["type"], "api_call")
        self.assertEqual(reply["code"], 200)
        self.assertEqual(reply["payload"]["status"], "OK")
        self.assertIn("execution", reply["payload"])
        # The other client's own answer comes after anything it would have been sent for ours.
        yield other.call_ok("process_health")
        self.assertEqual(other.received, [])
        self.assertEqual(self.ws.received, [])

    @defer.inlineCallbacks
    def test_call_id_of_any_json_type_is_echoed(self):
        self.ws.send_json({"command": "api_call", "method": "process_health", "call_id": 7})
        reply = yield self.ws.next_message(lambda m: m.get("call_id") == 7)
        self.assertEqual(reply["payload"]["result"]["alive"], True)

    @defer.inlineCallbacks
    def check_malformed(self, frame, words, binary=False, message_type="error"):
        self.ws.sendMessage(frame, isBinary=binary)
        reply = yield self.ws.next_message()
        self.assertEqual((reply["type"], reply["code"]), (message_type, 400), reply)
        self.assertEqual(reply["payload"]["status"], "ERROR")
        self.assertIn(words, " ".join(reply["payload"]["errors"]))
        yield self.assertStillOpen()

    def test_frame_that_is_not_json(self):
        return self.check_malformed(b"hello?", "the message is not JSON")

    @defer.inlineCallbacks
    def test_deeply_nested_frame_is_400_not_500(self):
        # 100,000 levels made json.loads raise RecursionError inside onMessage before: no answer at all.
        yield self.check_malformed(b'{"command": "api_call", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                                   "the message is nested")
        frame = b'{"command": "api_call", "method": "event_send", "call_id": 1, "kwargs": {"event_id": "x", "data": '
        yield self.check_malformed(frame + b"[" * 40 + b"]" * 40 + b"}}", "deeper than 32")
        frame += b'"' + b"[" * 5000 + b"]" * 5000 + b'"}}'
        yield self.check_malformed(frame, "parameter 'data'", message_type="api_call")
        self.assertEqual(api_server(self.node).dispatcher.limits.refused["json_too_deep"], 3)

    def test_frame_that_is_not_an_object(self):
        return self.check_malformed(b'["api_call", "process_health"]', "JSON object")

    def test_unknown_command(self):
        return self.check_malformed(b'{"command": "shutdown"}', "unknown command")

    def test_binary_frame(self):
        return self.check_malformed(b'{"command": "api_call"}', "binary", binary=True)

    def test_api_call_without_method(self):
        return self.check_malformed(b'{"command": "api_call", "call_id": 1}', "'method'", message_type="api_call")

    def test_api_call_with_kwargs_not_an_object(self):
        frame = b'{"command": "api_call", "method": "process_health", "kwargs": [1], "call_id": 1}'
        return self.check_malformed(frame, "kwargs", message_type="api_call")

    @defer.inlineCallbacks
    def test_unknown_method_is_404(self):
        yield self.assertCallFails(404, "process_nothing", "process_nothing")
        yield self.assertStillOpen()


class RateLimitTests(WsTestCase):
    """A WebSocket client over the limit gets 429 envelopes, and stays connected.

    The limit is per client host: the handshake of ``self.ws`` took one of the 3 tokens.
    """

    overrides = {"interface/api/rate-limit": 0.5, "interface/api/rate-burst": 3}

    @defer.inlineCallbacks
    def test_over_the_limit_is_429(self):
        for _ in range(2):
            yield self.ws.call_ok("process_health")
        yield self.assertCallFails(429, "process_health", "too many")
        yield self.assertCallFails(429, "process_health", "too many")

    @defer.inlineCallbacks
    def test_connections_of_one_host_share_the_limit(self):
        yield self.ws.call_ok("process_health")
        other = yield connect_ws(self, self.node)  # the third token
        reply = yield other.call("process_health")
        self.assertEqual(reply["code"], 429)
        yield self.assertCallFails(429, "process_health", "too many")

    @defer.inlineCallbacks
    def test_secret_guessing_is_rate_limited(self):
        for _ in range(2):
            with self.assertRaises(WsRefused) as caught:
                yield connect_ws(self, self.node, secret="guess")
            self.assertIn("[401]", str(caught.exception))
        # Out of tokens: refused before the secret is even looked at, the right one too.
        for secret in ("guess", True):
            with self.assertRaises(WsRefused) as caught:
                yield connect_ws(self, self.node, secret=secret)
            self.assertIn("[429]", str(caught.exception))

    @defer.inlineCallbacks
    def test_http_and_websocket_share_the_limit(self):
        reply = yield HttpApi(self, self.node).get("process/health/v1")
        self.assertEqual(reply.code, 200)
        yield self.ws.call_ok("process_health")
        yield self.assertCallFails(429, "process_health", "too many")


class EventPushTests(WsTestCase):
    """Events go to every client with increasing sequence ids; ?since replays the buffer."""

    @defer.inlineCallbacks
    def test_events_are_pushed_with_increasing_seq(self):
        other = yield connect_ws(self, self.node)
        first = yield self.ws.call_ok("event_send", event_id="one", data={"n": 1})
        second = yield self.ws.call_ok("event_send", event_id="two")
        self.assertEqual(second["seq"], first["seq"] + 1)
        for client in (self.ws, other):
            yield client.call_ok("process_health")  # everything before this answer has arrived
            events = client.events()
            self.assertEqual([(e["seq"], e["payload"]["event_id"]) for e in events],
                             [(first["seq"], "one"), (second["seq"], "two")])
            self.assertEqual(events[0]["payload"]["data"], {"n": 1})

    @defer.inlineCallbacks
    def test_since_replays_buffered_events(self):
        start = self.node.events.last_seq
        for name in ("a", "b", "c"):
            self.node.events.publish(name, None)
        late = yield connect_ws(self, self.node, since=start + 1)
        yield late.call_ok("process_health")
        self.assertEqual([(e["seq"], e["payload"]["event_id"]) for e in late.events()],
                         [(start + 2, "b"), (start + 3, "c")])

    @defer.inlineCallbacks
    def test_resume_command_replays_and_reports_missed_events(self):
        start = self.node.events.last_seq
        self.node.events.publish("x", 1)
        yield self.ws.call_ok("process_health")
        self.ws.events()
        self.ws.send_json({"command": "resume", "since": start})
        yield self.ws.call_ok("process_health")
        self.assertEqual([e["payload"]["event_id"] for e in self.ws.events()], ["x"])
        self.ws.send_json({"command": "resume", "since": "start"})
        reply = yield self.ws.next_message(lambda m: m.get("type") == "error")
        self.assertEqual(reply["code"], 400)
        for bad in (-1, True):
            self.ws.send_json({"command": "resume", "since": bad})
            reply = yield self.ws.next_message(lambda m: m.get("type") == "error")
            self.assertEqual(reply["code"], 400)
            self.assertIn("0 or more", " ".join(reply["payload"]["errors"]))
        yield self.assertStillOpen()



class SinceValidationTests(WsTestCase):
    """A ``since`` that is not a sequence id (an integer, 0 or more) is a 400 envelope wherever it is given."""

    @defer.inlineCallbacks
    def test_handshake_since_that_is_not_a_whole_number_is_refused(self):
        for bad in ("1.5", "0x10", "1e3", "-0x1", " 5", "1_0", "\u0663", "9" * 40):
            with self.assertRaises(WsRefused) as caught:
                yield connect_ws(self, self.node, since=bad)
            self.assertIn("[400]", str(caught.exception))
            self.assertIn("0 or more", str(caught.exception))

    @defer.inlineCallbacks
    def test_resume_with_a_bad_since_answers_an_error_and_replays_nothing(self):
        self.node.events.publish("x", 1)
        yield self.ws.call_ok("process_health")
        self.ws.events()
        for message in ({"command": "resume", "since": 1.5}, {"command": "resume", "since": None},
                        {"command": "resume", "since": [0]}, {"command": "resume", "since": -7},
                        {"command": "resume"}):
            self.ws.send_json(message)
            reply = yield self.ws.next_message(lambda m: m.get("type") == "error")
            self.assertEqual(reply["code"], 400, message)
            self.assertEqual(reply["payload"]["status"], "ERROR")
            self.assertIn("since", " ".join(reply["payload"]["errors"]))
        yield self.assertStillOpen()
        self.assertEqual(self.ws.events(), [])

    @defer.inlineCallbacks
    def test_resume_error_carries_the_call_id_when_given(self):
        self.ws.send_json({"command": "resume", "since": -1, "call_id": "r1"})
        reply = yield self.ws.next_message(lambda m: m.get("call_id") == "r1")
        self.assertEqual((reply["type"], reply["code"]), ("api_call", 400))

    @defer.inlineCallbacks
    def test_event_listen_with_a_bad_since_is_400(self):
        for bad in (-1, "-1", 2.5, "soon", True):
            yield self.assertCallFails(400, "event_listen", "since", consumer_callback_id="ws-bad",
                                       since=bad, polling_timeout=0)
        self.assertNotIn("ws-bad", self.node.events.consumers())
        result = yield self.ws.call_ok("event_listen", consumer_callback_id="ws-bad", since=0, polling_timeout=0)
        self.assertEqual(result["last_seq"], self.node.events.last_seq)


class ReplayBufferTests(WsTestCase):
    """A client that fell further behind than the replay buffer is told how many events it missed."""

    overrides = {"interface/api/event-buffer": 10}

    @defer.inlineCallbacks
    def test_missed_events_are_counted(self):
        for number in range(15):
            self.node.events.publish("flood", number)
        late = yield connect_ws(self, self.node, since=0)
        missed = yield late.next_message(lambda m: m.get("type") == "events_missed")
        self.assertEqual(missed["payload"], {"since": 0, "missed": self.node.events.last_seq - 10})
        yield late.call_ok("process_health")
        self.assertEqual([e["seq"] for e in late.events()], list(range(self.node.events.last_seq - 9,
                                                                         self.node.events.last_seq + 1)))


class MethodTests(WsTestCase):
    """Each foundation method through the WebSocket: happy path and a bad parameter."""

    @defer.inlineCallbacks
    def test_process_health_and_info(self):
        self.assertEqual((yield self.ws.call_ok("process_health")), {"alive": True, "ready": True})
        info = yield self.ws.call_ok("process_info")
        self.assertEqual((info["version"], info["pid"], info["basedir"]),
                         (bitnode.__version__, os.getpid(), self.node.basedir.root))
        self.assertGreaterEqual(info["uptime"], 0.0)
        self.assertIn("memory_total_bytes", info["system"]["machine"])
        yield self.assertCallFails(400, "process_health", "'deep'", deep=True)
        yield self.assertCallFails(400, "process_info", "'pid'", pid=1)

    @defer.inlineCallbacks
    def test_process_debug(self):
        result = yield self.ws.call_ok("process_debug")
        self.assertIn("not opened", result["debugger"])
        yield self.assertCallFails(400, "process_debug", "'pdb'", pdb=True)

    @defer.inlineCallbacks
    def test_process_stop_and_restart_after_answering(self):
        calls = self.record_stop_and_restart()
        self.assertTrue((yield self.ws.call_ok("process_stop"))["stopping"])
        second = yield self.ws.call_ok("process_restart")
        self.assertEqual((second["restarting"], second["ignored"]), (False, "a stop is already under way"))
        self.assertEqual(calls, [])
        yield wait_until(lambda: calls)
        self.assertEqual(calls, ["stop"])
        yield self.assertCallFails(400, "process_stop", "'now'", now=True)

    @defer.inlineCallbacks
    def test_config_methods(self):
        item = yield self.ws.call_ok("config_get", key="logs/debug-level", include_info=True)
        self.assertEqual((item["value"], item["default"]), (4, 4))
        yield self.assertCallFails(404, "config_get", "no/such", key="no/such")
        yield self.assertCallFails(400, "config_get", "'key'")
        item = yield self.ws.call_ok("config_set", key="logs/debug-level", value=11)
        self.assertEqual((item["value"], item["old_value"]), (11, 4))
        self.assertEqual(Settings(self.node.basedir.settings_file, SCHEMA).get("logs/debug-level"), 11)
        yield self.assertCallFails(400, "config_set", key="logs/debug-level", value=-1)
        self.assertEqual(Settings(self.node.basedir.settings_file, SCHEMA).get("logs/debug-level"), 11)
        items = yield self.ws.call_ok("configs_list", sort=True)
        self.assertEqual([i["key"] for i in items], sorted(i["key"] for i in items))
        yield self.assertCallFails(400, "configs_list", "'sort'", sort="up")
        tree = yield self.ws.call_ok("configs_tree")
        self.assertEqual(tree["logs"]["debug-level"]["value"], 11)
        yield self.assertCallFails(400, "configs_tree", "'include_info'", include_info=[])

    @defer.inlineCallbacks
    def test_service_methods(self):
        items = yield self.ws.call_ok("services_list")
        self.assertEqual([i["name"] for i in items], ["service_fake_base", "service_fake_top", "service_fake_broken"])
        yield self.assertCallFails(400, "services_list", "'with_configs'", with_configs="x")
        info = yield self.ws.call_ok("service_info", service_name="service_fake_top")
        self.assertEqual(info["state"], "ON")
        yield self.assertCallFails(404, "service_info", "service_none", service_name="service_none")
        stopped = yield self.ws.call_ok("service_stop", service_name="service_fake_base")
        self.assertEqual(stopped["state"], "OFF")
        yield self.assertCallFails(409, "service_start", "service_fake_base", service_name="service_fake_top")
        started = yield self.ws.call_ok("service_start", service_name="service_fake_base")
        self.assertEqual(started["state"], "ON")
        restarted = yield self.ws.call_ok("service_restart", service_name="service_fake_top", wait_timeout=1)
        self.assertEqual(restarted["state"], "ON")
        yield self.assertCallFails(400, "service_restart", "wait_timeout", service_name="service_fake_top",
                                   wait_timeout=-1)
        yield self.assertCallFails(409, "service_start", "cannot start", service_name="service_fake_broken")
        self.flushLoggedErrors(Conflict)

    @defer.inlineCallbacks
    def test_event_send_and_listen(self):
        start = self.node.events.last_seq
        polling = self.ws.call("event_listen", consumer_callback_id="ws-ui", since=start, polling_timeout=1)
        yield wait_until(lambda: "ws-ui" in self.node.events.consumers())
        self.assertFalse(polling.called)
        sent = yield self.ws.call_ok("event_send", event_id="ping", data=[1, 2])
        reply = yield polling
        events = reply["payload"]["result"]["events"]
        self.assertEqual([(e["seq"], e["event_id"], e["data"]) for e in events], [(sent["seq"], "ping", [1, 2])])
        empty = yield self.ws.call_ok("event_listen", consumer_callback_id="ws-ui", polling_timeout=0.05)
        self.assertEqual(empty["events"], [])
        yield self.assertCallFails(400, "event_send", "event_id", event_id="")
        yield self.assertCallFails(400, "event_listen", "polling_timeout", consumer_callback_id="ws-ui",
                                   polling_timeout=4000)

    @defer.inlineCallbacks
    def test_automats_list(self):
        lamp = Lamp(self.node.reactor, registry=self.node.automats)
        self.addCleanup(lamp.destroy)
        lamp.event("switch")
        lamp.event("switch")
        (item,) = yield self.ws.call_ok("automats_list")
        self.assertEqual((item["id"], item["state"], item["timers"]), (lamp.id, "OFF", []))
        self.assertEqual([(t["from"], t["to"]) for t in item["transitions"]], [("OFF", "ON"), ("ON", "OFF")])
        pushed = [e["payload"]["data"]["new_state"] for e in self.ws.events()
                  if e["payload"]["event_id"] == "automat-state-changed"]
        self.assertEqual(pushed, ["ON", "OFF"])
        yield self.assertCallFails(400, "automats_list", "'state'", state="ON")

    @defer.inlineCallbacks
    def test_legacy_names(self):
        calls = self.record_stop_and_restart()
        legacy = yield self.ws.call_ok("config_list", sort=True)
        self.assertEqual(legacy, (yield self.ws.call_ok("configs_list", sort=True)))
        self.assertTrue((yield self.ws.call_ok("stop"))["stopping"])
        yield wait_until(lambda: calls)
        self.assertEqual(calls, ["stop"])
        yield self.assertCallFails(400, "config_list", "'include_info'", include_info=True)

    @defer.inlineCallbacks
    def test_clients_are_closed_when_the_node_stops(self):
        closed = self.ws.closed
        closed.addTimeout(WAIT, reactor)
        yield self.node.stopService()
        reason = yield closed
        self.assertIn("node stopping", str(reason))


class SendPathTests(WsTestCase):
    """Answers are written by the node's own plain path while debug is off, by autobahn's while it is on."""

    def setUp(self):
        self.formatted = []
        real = ws_protocol.hltype

        def counting_hltype(obj):
            if isinstance(getattr(obj, "__self__", None), ApiWebSocketProtocol):  # the node's side, not the client's
                self.formatted.append(obj.__name__)
            return real(obj)

        self.patch(ws_protocol, "hltype", counting_hltype)
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        return super().setUp()

    def sent_lines(self) -> list:
        return [e for e in self.events if e.get("log_format", "").startswith("{func} sent {data_len} bytes")
                and str(e.get("log_namespace", "")).startswith("bitnode.interface.websocket")]

    @defer.inlineCallbacks
    def test_no_debug_line_is_formatted_for_an_answer_while_debug_is_off(self):
        for _ in range(3):
            self.assertTrue((yield self.ws.call_ok("process_health"))["alive"])
        self.assertNotIn("sendData", self.formatted)
        self.assertEqual(self.sent_lines(), [])

    @defer.inlineCallbacks
    def test_with_debug_on_autobahn_writes_and_logs_each_send(self):
        self.node.settings.set("logs/debug-level", 8)
        self.assertTrue((yield self.ws.call_ok("process_health"))["alive"])
        self.assertIn("sendData", self.formatted)
        self.assertTrue(self.sent_lines())
        self.node.settings.set("logs/debug-level", 4)
        del self.formatted[:]
        self.assertTrue((yield self.ws.call_ok("process_health"))["alive"])
        self.assertNotIn("sendData", self.formatted)
