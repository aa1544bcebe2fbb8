"""The REST API through real HTTP against a running Node: envelope, codes, checks, foundation methods."""

from __future__ import annotations

import io
import json
import os
import pdb
import sys

from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

import bitnode
from bitnode.app import api_server
from bitnode.errors import Conflict
from bitnode.interface import api as api_module
from bitnode.interface.limits import DEFAULT_MAX_BODY
from bitnode.main import events as events_module
from bitnode.main.schema import SCHEMA
from bitnode.main.settings import Settings
from tests.interface.support import (
    HttpApi,
    Lamp,
    NodeTestCase,
    pending_calls,
    stored_settings,
    wait_until,
)


class RestTestCase(NodeTestCase):
    """A started node with fake services and an HTTP client for it."""

    def connect_client(self) -> None:
        self.api = HttpApi(self, self.node)

    @defer.inlineCallbacks
    def assertError(self, pending, code, *words):
        """``pending`` fires with an ERROR envelope of HTTP ``code`` whose text contains ``words``."""
        reply = yield pending
        self.assertEqual(reply.code, code, reply.body)
        self.assertEqual(reply.body["status"], "ERROR")
        self.assertIsInstance(reply.body["errors"], list)
        for word in words:
            self.assertIn(word, reply.error)
        return reply


class EnvelopeTests(RestTestCase):
    """The answer format and the HTTP codes of the dispatcher and the body reader."""

    @defer.inlineCallbacks
    def test_success_envelope_has_status_result_and_execution(self):
        reply = yield self.api.get("process/health/v1")
        self.assertEqual(reply.code, 200)
        self.assertEqual(set(reply.body), {"status", "result", "execution"})
        self.assertEqual(reply.body["status"], "OK")
        self.assertEqual(reply.body["result"], {"alive": True, "ready": True})
        self.assertGreaterEqual(float(reply.body["execution"]), 0.0)
        self.assertTrue(reply.headers["content-type"].startswith("application/json"))
        self.assertEqual(reply.headers["cache-control"], "no-store")

    @defer.inlineCallbacks
    def test_answer_has_a_content_length(self):
        reply = yield self.api.get("process/health/v1")
        self.assertEqual(reply.length, len(json.dumps(reply.body)))

    def test_unknown_path_is_404(self):
        return self.assertError(self.api.get("process/nothing/v1"), 404, "/process/nothing/v1")

    @defer.inlineCallbacks
    def test_wrong_verb_is_405_with_allow_header(self):
        reply = yield self.assertError(self.api.request("DELETE", "process/health/v1"), 405, "DELETE")
        self.assertEqual(reply.headers["allow"], "GET")
        reply = yield self.assertError(self.api.request("GET", "config/set/v1"), 405)
        self.assertEqual(reply.headers["allow"], "POST")

    def test_missing_parameter_is_400_naming_it(self):
        return self.assertError(self.api.get("config/get/v1"), 400, "missing parameter 'key'")

    def test_ill_typed_parameter_is_400_naming_it(self):
        pending = self.api.get("config/get/v1", key="logs/api-calls", include_info="maybe")
        return self.assertError(pending, 400, "include_info", "boolean")

    def test_ill_typed_json_body_parameter_is_400_naming_it(self):
        pending = self.api.post("service/restart/service_fake_base/v1", wait_timeout=[1])
        return self.assertError(pending, 400, "'wait_timeout'")

    def test_unknown_parameter_is_400_naming_it(self):
        return self.assertError(self.api.get("process/health/v1", verbose="1"), 400, "'verbose'")

    def test_malformed_json_body_is_400(self):
        pending = self.api.request("POST", "config/set/v1", raw=b'{"key": "logs/api-calls",')
        return self.assertError(pending, 400, "the body is not JSON")

    def test_body_that_is_not_utf8_is_400(self):
        return self.assertError(self.api.request("POST", "config/set/v1", raw=b"\xff\xfe{}"), 400, "not UTF-8")

    @defer.inlineCallbacks
    def test_deeply_nested_body_is_400_not_500(self):
        # 100,000 levels made json.loads raise RecursionError: a 500 with a traceback before.
        for levels in (100_000, 33):
            raw = b'{"key": "logs/api-calls", "value": ' + b"[" * levels + b"]" * levels + b"}"
            pending = self.api.request("POST", "config/set/v1", raw=raw)
            yield self.assertError(pending, 400, "the body is nested")
        refused = (yield self.api.get("process/info/v1")).result["api_limits"]["refused"]
        self.assertEqual(refused["json_too_deep"], 2)

    @defer.inlineCallbacks
    def test_body_at_the_depth_limit_is_read(self):
        raw = b'{"data": ' + b"[" * 31 + b"]" * 31 + b"}"  # 32 levels with the body's own
        reply = yield self.api.request("POST", "event/send/deep/v1", raw=raw)
        self.assertEqual(reply.code, 200, reply.body)

    @defer.inlineCallbacks
    def test_json_depth_limit_is_a_setting(self):
        yield self.api.post("config/set/v1", key="interface/api/max-json-depth", value=4)
        raw = b'{"data": [[[[1]]]]}'
        yield self.assertError(self.api.request("POST", "event/send/deep/v1", raw=raw), 400, "deeper than 4")
        reply = yield self.api.request("POST", "event/send/deep/v1", raw=b'{"data": [[1]]}')
        self.assertEqual(reply.code, 200, reply.body)
        info = (yield self.api.get("process/info/v1")).result["api_limits"]
        self.assertEqual((info["max_json_depth"], info["refused"]["json_too_deep"]), (4, 1))

    @defer.inlineCallbacks
    def test_deeply_nested_json_text_in_a_query_string_is_400(self):
        deep = "[" * 2000 + "]" * 2000  # %-encoded, within twisted.web's 16 KiB of request line and headers
        # a JSON-typed parameter: JSON text is parsed (a 500 before), other text kept as text
        yield self.assertError(self.api.get("config/get/v1", key="x/y", default=deep), 400,
                               "parameter 'default'", "nested")
        yield self.assertError(self.api.get("config/get/v1", key="x/y", default="[" * 40 + "]" * 40), 400,
                               "deeper than 32")
        reply = yield self.api.get("config/get/v1", key="x/y", default="[[not json")
        self.assertEqual(reply.result["value"], "[[not json")

    @defer.inlineCallbacks
    def test_deeply_nested_json_text_inside_a_body_value_is_400(self):
        body = {"data": "[" * 5000 + "]" * 5000}
        yield self.assertError(self.api.post("event/send/x/v1", **body), 400, "parameter 'data'", "nested")

    def test_json_body_that_is_not_an_object_is_400(self):
        pending = self.api.request("POST", "config/set/v1", raw=b'["logs/api-calls", true]')
        return self.assertError(pending, 400, "object")

    def test_body_too_large_is_413(self):
        raw = b'{"key": "' + b"x" * DEFAULT_MAX_BODY + b'"}'
        return self.assertError(self.api.request("POST", "config/set/v1", raw=raw), 413, "larger than")

    def test_empty_body_means_no_parameters(self):
        pending = self.api.request("POST", "config/set/v1", raw=b"  ")
        return self.assertError(pending, 400, "missing parameter 'key'")

    @defer.inlineCallbacks
    def test_post_takes_query_string_parameters_too(self):
        reply = yield self.api.request("POST", "config/set/v1", params={"key": "logs/api-calls"},
                                       body={"value": True})
        self.assertEqual(reply.result["value"], True)

    @defer.inlineCallbacks
    def test_state_changing_get_method_also_accepts_post(self):
        calls = self.record_stop_and_restart()
        for verb in ("GET", "POST"):
            reply = yield self.api.request(verb, "process/debug/v1")
            self.assertIn("debugger", reply.result)
        reply = yield self.api.request("POST", "process/stop/v1")
        self.assertTrue(reply.result["stopping"])
        yield wait_until(lambda: calls)
        self.assertEqual(calls, ["stop"])

    @defer.inlineCallbacks
    def test_path_parameter_cannot_be_overridden(self):
        pending = self.api.post("service/stop/service_fake_top/v1", service_name="service_fake_base")
        yield self.assertError(pending, 400, "'service_name'", "path")
        pending = self.api.request("POST", "service/stop/service_fake_top/v1",
                                   params={"service_name": "service_fake_base"})
        yield self.assertError(pending, 400, "'service_name'")
        self.assertTrue(self.node.service_driver.is_on("service_fake_base"))
        reply = yield self.api.post("service/stop/service_fake_top/v1", service_name="service_fake_top")
        self.assertEqual(reply.result["state"], "OFF")

    def test_read_only_get_method_refuses_post(self):
        return self.assertError(self.api.request("POST", "process/health/v1"), 405)


class GuardTests(RestTestCase):
    """The secret, Origin and Host checks."""

    def test_missing_secret_is_401(self):
        return self.assertError(self.api.request("GET", "process/health/v1", secret=None), 401, "missing api_secret")

    def test_wrong_secret_is_401(self):
        pending = self.api.request("GET", "process/health/v1", secret=api_server(self.node).secret[:-1] + "x")
        return self.assertError(pending, 401, "wrong api_secret")

    def test_secret_in_query_string_is_not_enough_for_http(self):
        pending = self.api.request("GET", "process/health/v1", params={"api_secret": api_server(self.node).secret},
                                   secret=None)
        return self.assertError(pending, 401)

    def test_foreign_origin_is_403(self):
        pending = self.api.request("GET", "process/health/v1", headers={"Origin": "https://evil.example"})
        return self.assertError(pending, 403, "Origin")

    def test_foreign_origin_is_403_even_without_secret(self):
        pending = self.api.request("GET", "process/health/v1", secret=None, headers={"Origin": "http://evil.example"})
        return self.assertError(pending, 403)

    def test_foreign_host_is_403(self):
        pending = self.api.request("GET", "process/health/v1", headers={"Host": "evil.example:8180"})
        return self.assertError(pending, 403, "Host")

    @defer.inlineCallbacks
    def test_local_origin_and_host_are_accepted(self):
        port = self.node.endpoints()["http"].rsplit(":", 1)[1].rstrip("/")
        reply = yield self.api.request("GET", "process/health/v1",
                                       headers={"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"})
        self.assertEqual(reply.code, 200)

    @defer.inlineCallbacks
    def test_mutating_get_needs_the_secret(self):
        before = pending_calls()
        yield self.assertError(self.api.request("GET", "process/stop/v1", secret=None), 401)
        yield self.assertError(self.api.request("POST", "process/stop/v1", secret="guess"), 401)
        self.assertEqual(pending_calls() - before, set(), "a stop was scheduled")


class RateLimitTests(RestTestCase):
    """A client over the limit gets 429 with Retry-After."""

    overrides = {"interface/api/rate-limit": 0.5, "interface/api/rate-burst": 2}

    @defer.inlineCallbacks
    def test_over_the_limit_is_429_with_retry_after(self):
        for _ in range(2):
            reply = yield self.api.get("process/health/v1")
            self.assertEqual(reply.code, 200)
        reply = yield self.assertError(self.api.get("process/health/v1"), 429, "too many")
        self.assertGreaterEqual(int(reply.headers["retry-after"]), 1)

    @defer.inlineCallbacks
    def test_secret_guessing_is_rate_limited(self):
        for guess in ("guess-1", "guess-2"):
            yield self.assertError(self.api.request("GET", "process/health/v1", secret=guess), 401, "wrong")
        # Out of tokens: refused before the secret is looked at, so a right guess learns nothing either.
        yield self.assertError(self.api.request("GET", "process/health/v1", secret="guess-3"), 429)
        yield self.assertError(self.api.get("process/health/v1"), 429)

    @defer.inlineCallbacks
    def test_requests_refused_by_the_guard_count_too(self):
        yield self.assertError(self.api.request("GET", "process/health/v1", headers={"Host": "evil.example"}), 403)
        yield self.assertError(self.api.request("GET", "process/health/v1", secret=None), 401)
        yield self.assertError(self.api.get("process/health/v1"), 429)

    @defer.inlineCallbacks
    def test_a_changed_limit_applies_without_restart(self):
        for _ in range(2):
            yield self.api.get("process/health/v1")
        yield self.assertError(self.api.get("process/health/v1"), 429)
        self.node.settings.set("interface/api/rate-limit", 0)
        for _ in range(3):
            self.assertEqual((yield self.api.get("process/health/v1")).code, 200)
        self.node.settings.set("interface/api/rate-limit", 0.5)
        self.node.settings.set("interface/api/rate-burst", 1)
        self.assertEqual((yield self.api.get("process/health/v1")).code, 200)
        yield self.assertError(self.api.get("process/health/v1"), 429)


class ApiCallLogTests(RestTestCase):
    """logs/api-calls switches the per-call log on and off without a restart."""

    @defer.inlineCallbacks
    def test_call_log_follows_the_setting(self):
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)

        def call_lines():
            return [text for text in map(formatEvent, logged) if text.startswith("api process_health")]

        yield self.api.get("process/health/v1")
        self.assertEqual(call_lines(), [])
        self.assertFalse(api_server(self.node)._site.log_requests)
        self.node.settings.set("logs/api-calls", True)
        yield self.api.get("process/health/v1")
        self.assertEqual(len(call_lines()), 1)
        self.assertTrue(api_server(self.node)._site.log_requests)
        self.node.settings.set("logs/api-calls", False)
        yield self.api.get("process/health/v1")
        self.assertEqual(len(call_lines()), 1)


class ProcessMethodTests(RestTestCase):
    """process_* methods."""

    @defer.inlineCallbacks
    def test_process_health(self):
        reply = yield self.api.get("process/health/v1")
        self.assertEqual(reply.result, {"alive": True, "ready": True})
        yield self.assertError(self.api.get("process/health/v1", ready="1"), 400, "'ready'")

    @defer.inlineCallbacks
    def test_process_info(self):
        info = (yield self.api.get("process/info/v1")).result
        self.assertEqual(info["version"], bitnode.__version__)
        self.assertEqual(info["pid"], os.getpid())
        self.assertEqual(info["basedir"], self.node.basedir.root)
        self.assertGreaterEqual(info["uptime"], 0.0)
        self.assertLess(info["uptime"], 60.0)
        self.assertEqual(info["api"], self.node.endpoints())
        self.assertEqual(info["services"], {"total": 3, "on": 2})
        system = info["system"]
        self.assertGreater(system["process"]["rss_bytes"], 0)
        self.assertGreater(system["machine"]["cpu_count"], 0)
        self.assertGreater(system["machine"]["memory_total_bytes"], 0)
        self.assertGreater(system["disk"]["total_bytes"], 0)
        yield self.assertError(self.api.get("process/info/v1", pid="1"), 400, "'pid'")

    @defer.inlineCallbacks
    def test_process_debug_does_not_open_pdb_unless_allowed(self):
        opened = []
        self.patch(pdb, "set_trace", lambda: opened.append(True))
        result = (yield self.api.get("process/debug/v1")).result
        self.assertIn("not opened", result["debugger"])
        self.assertEqual(result["pid"], os.getpid())
        self.assertTrue(result["threads"])
        # Allowed, but not on a terminal (a daemonised node): still not opened.
        self.node.settings.set("interface/api/allow-debugger", True)
        self.patch(sys, "stdin", io.StringIO())
        result = (yield self.api.request("POST", "process/debug/v1")).result
        self.assertIn("not opened", result["debugger"])
        self.assertEqual(opened, [])
        yield self.assertError(self.api.get("process/debug/v1", pdb="1"), 400, "'pdb'")

    @defer.inlineCallbacks
    def check_stop_or_restart(self, path, attribute, key):
        self.patch(api_module, "STOP_DELAY", 0.02)
        calls = []
        setattr(self.node, attribute, lambda: calls.append(self.node.running))
        reply = yield self.api.get(path)
        self.assertTrue(reply.result[key])
        self.assertEqual(reply.result["pid"], os.getpid())
        self.assertEqual(calls, [], "asked to stop before the answer was sent")
        yield wait_until(lambda: calls)
        self.assertEqual(calls, [True])
        yield self.assertError(self.api.get(path, force="1"), 400, "'force'")

    def test_process_stop_is_requested_after_the_answer(self):
        return self.check_stop_or_restart("process/stop/v1", "on_stop_requested", "stopping")

    def test_process_restart_is_requested_after_the_answer(self):
        return self.check_stop_or_restart("process/restart/v1", "on_restart_requested", "restarting")

    @defer.inlineCallbacks
    def test_pending_stop_is_cancelled_when_the_node_stops_first(self):
        calls = self.record_stop_and_restart(delay=None)
        before = pending_calls()
        yield self.api.get("process/stop/v1")
        self.assertTrue(pending_calls() - before)
        yield self.node.stopService()
        self.assertEqual(pending_calls() - before, set())
        self.assertEqual(calls, [])


class ConfigMethodTests(RestTestCase):
    """config_get, config_set, configs_list, configs_tree."""

    @defer.inlineCallbacks
    def test_config_get(self):
        reply = yield self.api.get("config/get/v1", key="logs/debug-level")
        self.assertEqual(reply.result, {"key": "logs/debug-level", "value": 4, "type": "integer"})
        info = (yield self.api.get("config/get/v1", key="logs/debug-level", include_info="true")).result
        self.assertEqual((info["default"], info["minimum"], info["maximum"]), (4, 0, 20))
        self.assertTrue(info["description"])
        yield self.assertError(self.api.get("config/get/v1", key="logs/nothing"), 404, "logs/nothing")

    @defer.inlineCallbacks
    def test_config_get_legacy_default_answers_unknown_keys(self):
        reply = yield self.api.get("config/get/v1", key="old/setting", default="5")
        self.assertEqual(reply.result["value"], 5)
        reply = yield self.api.get("config/get/v1", key="logs/debug-level", default="5")
        self.assertEqual(reply.result["value"], 4)

    @defer.inlineCallbacks
    def test_config_get_of_a_service_switch(self):
        reply = yield self.api.get("config/get/v1", key="services/fake-broken/enabled")
        self.assertEqual(reply.result["value"], False)

    @defer.inlineCallbacks
    def test_config_set_persists_before_answering(self):
        reply = yield self.api.post("config/set/v1", key="logs/debug-level", value=7)
        self.assertEqual((reply.result["value"], reply.result["old_value"]), (7, 4))
        self.assertEqual(self.node.settings.get("logs/debug-level"), 7)
        self.assertEqual(Settings(self.node.basedir.settings_file, SCHEMA).get("logs/debug-level"), 7)
        reply = yield self.api.post("config/set/v1", key="logs/debug-level", value="9")
        self.assertEqual(reply.result["value"], 9)

    @defer.inlineCallbacks
    def test_config_set_refuses_bad_values(self):
        yield self.assertError(self.api.post("config/set/v1", key="logs/debug-level", value=99), 400)
        yield self.assertError(self.api.post("config/set/v1", key="logs/debug-level", value="lots"), 400)
        yield self.assertError(self.api.post("config/set/v1", key="logs/debug-level"), 400, "'value'")
        yield self.assertError(self.api.post("config/set/v1", key="nothing/here", value=1), 404)
        self.assertEqual(Settings(self.node.basedir.settings_file, SCHEMA).get("logs/debug-level"), 4)

    @defer.inlineCallbacks
    def test_configs_list(self):
        items = (yield self.api.get("config/list/v1")).result
        keys = [item["key"] for item in items]
        self.assertIn("interface/api/http-port", keys)
        self.assertIn("services/fake-top/enabled", keys)
        self.assertNotIn("description", items[0])
        items = (yield self.api.get("config/list/v1", sort="1", include_info="1")).result
        self.assertEqual([item["key"] for item in items], sorted(keys))
        self.assertIn("description", items[0])
        yield self.assertError(self.api.get("config/list/v1", sort="sideways"), 400, "'sort'")

    @defer.inlineCallbacks
    def test_configs_tree(self):
        tree = (yield self.api.get("config/tree/v1")).result
        self.assertEqual(tree["logs"]["debug-level"]["value"], 4)
        self.assertEqual(tree["services"]["fake-base"]["enabled"]["value"], True)
        tree = (yield self.api.get("config/tree/v1", include_info="yes")).result
        self.assertIn("description", tree["logs"]["debug-level"])
        yield self.assertError(self.api.get("config/tree/v1", include_info="2"), 400, "'include_info'")


class ServiceMethodTests(RestTestCase):
    """services_list, service_info, service_start/stop/restart with fake services."""

    def states(self):
        return {item["name"]: item["state"] for item in self.node.service_driver.list()}

    @defer.inlineCallbacks
    def test_services_list(self):
        items = (yield self.api.get("service/list/v1")).result
        self.assertEqual([(i["name"], i["state"]) for i in items],
                         [("service_fake_base", "ON"), ("service_fake_top", "ON"), ("service_fake_broken", "OFF")])
        self.assertNotIn("configs", items[0])
        items = (yield self.api.get("service/list/v1", with_configs="true")).result
        self.assertEqual(items[0]["configs"][0]["key"], "services/fake-base/enabled")
        yield self.assertError(self.api.get("service/list/v1", with_configs="x"), 400, "'with_configs'")

    @defer.inlineCallbacks
    def test_service_info(self):
        info = (yield self.api.get("service/info/service_fake_top/v1")).result
        self.assertEqual((info["name"], info["state"], info["depends"]), ("service_fake_top", "ON", ["service_fake_base"]))
        self.assertEqual(info["status"], {"fake": True})
        info = (yield self.api.get("service/info/service_fake_base/v1")).result
        self.assertEqual(info["dependents"], ["service_fake_top"])
        yield self.assertError(self.api.get("service/info/service_nothing/v1"), 404, "service_nothing")

    @defer.inlineCallbacks
    def test_service_stop_and_start_follow_dependencies(self):
        info = (yield self.api.post("service/stop/service_fake_base/v1")).result
        self.assertEqual(info["state"], "OFF")
        self.assertFalse(info["enabled"])
        self.assertEqual(self.states()["service_fake_top"], "DEPENDS_OFF")
        self.assertEqual(self.node.test_log[-2:], [("stop", "service_fake_top"), ("stop", "service_fake_base")])
        self.assertIs(stored_settings(self.node)["services/fake-base/enabled"], False)
        yield self.assertError(self.api.post("service/start/service_fake_top/v1"), 409, "service_fake_base")
        info = (yield self.api.post("service/start/service_fake_base/v1")).result
        self.assertEqual((info["state"], info["enabled"]), ("ON", True))
        self.assertEqual(self.states()["service_fake_top"], "ON")
        self.assertNotIn("services/fake-base/enabled", stored_settings(self.node))  # back to the default
        yield self.assertError(self.api.post("service/stop/service_nothing/v1"), 404)

    @defer.inlineCallbacks
    def test_config_set_of_a_switch_stops_and_starts_the_service(self):
        yield self.api.post("config/set/v1", key="services/fake-top/enabled", value=False)
        self.assertEqual(self.states()["service_fake_top"], "OFF")
        yield self.api.post("config/set/v1", key="services/fake-top/enabled", value="true")
        self.assertEqual(self.states()["service_fake_top"], "ON")
        self.assertEqual(self.node.test_log[-2:], [("stop", "service_fake_top"), ("start", "service_fake_top")])
        yield self.api.post("config/set/v1", key="services/fake-broken/enabled", value=True)
        info = (yield self.api.get("service/info/service_fake_broken/v1")).result
        self.assertEqual((info["state"], info["enabled"]), ("FAILED", True))
        self.assertIn("cannot start", info["reason"])

    @defer.inlineCallbacks
    def test_service_start_that_fails_is_an_error(self):
        yield self.assertError(self.api.post("service/start/service_fake_broken/v1"), 409, "cannot start")
        self.flushLoggedErrors(Conflict)
        self.assertEqual(self.states()["service_fake_broken"], "FAILED")

    @defer.inlineCallbacks
    def test_service_restart(self):
        del self.node.test_log[:]
        info = (yield self.api.post("service/restart/service_fake_base/v1", wait_timeout=1)).result
        self.assertEqual(info["state"], "ON")
        self.assertEqual(self.node.test_log, [("stop", "service_fake_top"), ("stop", "service_fake_base"),
                                              ("start", "service_fake_base"), ("start", "service_fake_top")])
        yield self.assertError(self.api.post("service/restart/service_fake_base/v1", wait_timeout=0), 400,
                               "wait_timeout")
        yield self.assertError(self.api.post("service/restart/service_fake_broken/v1"), 409, "disabled")
        yield self.assertError(self.api.post("service/restart/service_fake_base/v1", wait_timeout="soon"), 400,
                               "'wait_timeout'")


class EventMethodTests(RestTestCase):
    """event_send and event_listen (long-poll)."""

    @defer.inlineCallbacks
    def test_long_poll_returns_when_an_event_is_sent(self):
        start = self.node.events.last_seq
        polling = self.api.get("event/listen/ui1/v1", since=start, polling_timeout=1)
        yield wait_until(lambda: "ui1" in self.node.events.consumers())
        self.assertFalse(polling.called)
        sent = (yield self.api.post("event/send/hello/v1", data={"n": 1})).result
        self.assertEqual(sent, {"event_id": "hello", "seq": start + 1})
        result = (yield polling).result
        self.assertEqual([(e["event_id"], e["seq"], e["data"]) for e in result["events"]],
                         [("hello", start + 1, {"n": 1})])
        self.assertEqual((result["last_seq"], result["missed"]), (start + 1, 0))

    @defer.inlineCallbacks
    def test_listen_resumes_after_since_and_keeps_a_cursor(self):
        first = (yield self.api.post("event/send/one/v1")).result["seq"]
        yield self.api.post("event/send/two/v1", data="x")
        result = (yield self.api.get("event/listen/ui2/v1", since=first - 1, polling_timeout=0)).result
        self.assertEqual([e["event_id"] for e in result["events"]], ["one", "two"])
        result = (yield self.api.get("event/listen/ui2/v1", since=first, polling_timeout=0)).result
        self.assertEqual([e["event_id"] for e in result["events"]], ["two"])
        # Without since, the consumer continues from what it was last given.
        yield self.api.post("event/send/three/v1")
        result = (yield self.api.get("event/listen/ui2/v1", polling_timeout=0)).result
        self.assertEqual([e["event_id"] for e in result["events"]], ["three"])

    @defer.inlineCallbacks
    def test_polling_timeout_is_honoured(self):
        started = self.node.reactor.seconds()
        result = (yield self.api.get("event/listen/ui3/v1", polling_timeout=0.1)).result
        elapsed = self.node.reactor.seconds() - started
        self.assertEqual(result["events"], [])
        self.assertGreaterEqual(elapsed, 0.09)
        self.assertLess(elapsed, 0.5)

    @defer.inlineCallbacks
    def test_path_parameters_are_url_decoded(self):
        result = (yield self.api.get("event/listen/my%20id%2Fx/v1", polling_timeout=0)).result
        self.assertEqual(result["events"], [])
        self.assertIn("my id/x", self.node.events.consumers())
        sent = (yield self.api.post("event/send/caf%C3%A9%20open/v1")).result
        self.assertEqual(sent["event_id"], "caf\u00e9 open")
        info = (yield self.api.get("service/info/service%5Ffake%5Fbase/v1")).result
        self.assertEqual(info["name"], "service_fake_base")
        # The decoded path value is what a repeated parameter is compared with.
        reply = yield self.api.post("service/stop/service%5Ffake%5Ftop/v1", service_name="service_fake_top")
        self.assertEqual(reply.result["state"], "OFF")

    @defer.inlineCallbacks
    def test_key_id_characters_in_the_path_are_url_decoded(self):
        # "$" and "@" of a key id, %-encoded by a careful client or sent as they are.
        for path in ("event/listen/share%24alice%40host_1/v1", "event/listen/share$alice@host_1/v1"):
            result = (yield self.api.get(path, polling_timeout=0)).result
            self.assertEqual(result["events"], [])
        self.assertIn("share$alice@host_1", self.node.events.consumers())
        self.assertNotIn("share%24alice%40host_1", self.node.events.consumers())
        sent = (yield self.api.post("event/send/key%24bob%40id.example_2%2Bx/v1")).result
        self.assertEqual(sent["event_id"], "key$bob@id.example_2+x")
        # The decoded value is what a repeated parameter must equal.
        reply = yield self.api.get("event/listen/share%24alice%40host_1/v1", consumer_callback_id="share$alice@host_1",
                                   polling_timeout=0)
        self.assertEqual(reply.code, 200)
        yield self.assertError(self.api.get("event/listen/share%24alice%40host_1/v1",
                                            consumer_callback_id="share%24alice%40host_1"), 400, "path")

    def test_path_escape_that_is_not_utf8_is_400(self):
        return self.assertError(self.api.get("event/listen/caf%E9/v1", polling_timeout=0), 400,
                                "'consumer_callback_id'", "UTF-8")

    @defer.inlineCallbacks
    def test_bad_event_parameters(self):
        yield self.assertError(self.api.post("event/send/" + "e" * 200 + "/v1"), 400, "event_id")
        yield self.assertError(self.api.get("event/listen/ui4/v1", polling_timeout=-1), 400, "polling_timeout")
        yield self.assertError(self.api.get("event/listen/ui4/v1", polling_timeout="long"), 400, "'polling_timeout'")
        yield self.assertError(self.api.get("event/listen/ui4/v1", since="last"), 400, "'since'")
        yield self.assertError(self.api.get("event/listen/ui4/v1", since=-1), 400, "since", "0 or more")
        yield self.assertError(self.api.get("event/listen/ui4/v1", since="2.5"), 400, "'since'")
        future = self.node.events.last_seq + 5
        yield self.assertError(self.api.get("event/listen/ui4/v1", since=future), 409, str(future))

    @defer.inlineCallbacks
    def test_too_many_waiting_consumers_is_429(self):
        self.patch(events_module, "MAX_CONSUMERS", len(self.node.events.consumers()) + 1)
        polling = self.api.get("event/listen/first/v1", polling_timeout=1)
        yield wait_until(lambda: "first" in self.node.events.consumers())
        reply = yield self.assertError(self.api.get("event/listen/second/v1", polling_timeout=1), 429, "waiting")
        self.assertIn("retry-after", reply.headers)
        yield self.api.post("event/send/wake/v1")
        self.assertEqual([e["event_id"] for e in (yield polling).result["events"]], ["wake"])

    @defer.inlineCallbacks
    def test_abandoned_long_poll_leaves_no_timer(self):
        before = pending_calls()
        polling = self.api.get("event/listen/ui6/v1", polling_timeout=1)
        yield wait_until(lambda: "ui6" in self.node.events.consumers())
        self.assertTrue(pending_calls() - before)
        polling.cancel()
        self.failureResultOf(polling)
        yield wait_until(lambda: not pending_calls() - before)

    @defer.inlineCallbacks
    def test_listen_is_answered_when_the_node_stops(self):
        # The poll would wait 60 s; the stop must answer it (well before that) with no news but its own.
        polling = self.api.get("event/listen/ui5/v1", polling_timeout=60)
        yield wait_until(lambda: "ui5" in self.node.events.consumers())
        yield self.node.stopService()
        yield wait_until(lambda: polling.called, "the stop to answer the long poll", timeout=20)
        reply = yield polling
        # Only the news that the node's services went off (the API server stops after them).
        self.assertEqual({e["event_id"] for e in reply.result["events"]} - {"service-state-changed"}, set())


class AutomatsListTests(RestTestCase):
    """automats_list shows registered machines with state, timers and transitions."""

    @defer.inlineCallbacks
    def test_automats_list(self):
        lamp = Lamp(self.node.reactor, registry=self.node.automats, machine_id="lamp1")
        self.addCleanup(lamp.destroy)
        lamp.event("switch")
        items = (yield self.api.get("automat/list/v1")).result
        self.assertEqual(len(items), 1)
        item = items[0]
        self.assertEqual((item["id"], item["name"], item["state"], item["timers"]),
                         ("lamp1", "test_lamp", "ON", ["timer-1min"]))
        self.assertEqual([(t["event"], t["from"], t["to"]) for t in item["transitions"]], [("switch", "OFF", "ON")])
        seen, _ = self.node.events.since(0)
        changed = [e.data for e in seen if e.event_id == "automat-state-changed"]
        self.assertEqual(changed[-1]["new_state"], "ON")
        yield self.assertError(self.api.get("automat/list/v1", index="1"), 400, "'index'")


class LegacyAliasTests(RestTestCase):
    """Legacy names reach the same code."""

    @defer.inlineCallbacks
    def test_legacy_config_list_is_configs_list(self):
        legacy = (yield self.api.get("legacy/config_list/v1", sort="true")).result
        current = (yield self.api.get("config/list/v1", sort="true")).result
        self.assertEqual(legacy, current)
        legacy = (yield self.api.post("legacy/config_list/v1", sort=True)).result
        self.assertEqual(legacy, current)
        yield self.assertError(self.api.get("legacy/config_list/v1", include_info="1"), 400, "'include_info'")

    @defer.inlineCallbacks
    def test_legacy_stop_and_restart_reach_process_methods(self):
        calls = self.record_stop_and_restart()
        self.assertTrue((yield self.api.get("legacy/stop/v1")).result["stopping"])
        # process_restart's own answer while the stop is under way: the process ends once
        restart = (yield self.api.post("legacy/restart/v1", showgui=True)).result
        self.assertEqual(restart["ignored"], "a stop is already under way")
        yield wait_until(lambda: calls)
        self.assertEqual(calls, ["stop"])
        yield self.assertError(self.api.get("legacy/restart/v1", showgui="maybe"), 400, "'showgui'")
