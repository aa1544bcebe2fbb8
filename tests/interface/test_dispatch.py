"""Tests for bitnode.interface.dispatch with a fake API object."""

from __future__ import annotations

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.trial import unittest

from bitnode.boundedjson import TooDeep
from bitnode.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InsufficientStorage,
    MethodNotAllowed,
    NotFound,
    NotImplementedYet,
    Timeout,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    error_response,
)
from bitnode.interface.dispatch import Answer, Dispatcher, bind_arguments
from bitnode.interface.limits import ApiLimits
from bitnode.interface.routes import BOOL, FLOAT, INT, JSON, LIST, REQUIRED, STR, Alias, Param, Route


class FakeAPI:
    """Records calls; a few handlers misbehave on purpose."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.pending: defer.Deferred | None = None
        self.raise_next: BaseException | None = None

    def _record(self, name, kwargs):
        self.calls.append((name, kwargs))
        if self.raise_next is not None:
            err, self.raise_next = self.raise_next, None
            raise err
        return {"method": name, "kwargs": kwargs}

    def event_listen(self, **kwargs):
        self._record("event_listen", kwargs)
        self.pending = defer.Deferred()
        return self.pending

    def service_info(self, **kwargs):
        return defer.fail(NotFound(f"unknown service {kwargs['service_name']!r}"))

    not_a_method = "I am not callable"


def _recorder(name: str):
    """A FakeAPI method ``name`` that records its call and answers ``{"method": name, "kwargs": ...}``."""

    def method(self, **kwargs):
        return self._record(name, kwargs)

    method.__name__ = name
    return method


for _name in ("config_get", "config_set", "configs_list", "process_restart",
              "connections_list", "files_uploads", "file_download_start", "backup_start_id", "message_receive"):
    setattr(FakeAPI, _name, _recorder(_name))


PARAMS = (
    Param("name", STR),
    Param("count", INT, 1),
    Param("ratio", FLOAT, 0.5),
    Param("flag", BOOL, False),
    Param("tags", LIST, (), aliases=("labels",)),
    Param("data", JSON, None),
    Param("maybe", INT, None),
)


class BindArgumentsTests(unittest.TestCase):
    def test_defaults_filled(self) -> None:
        kwargs = bind_arguments("m", PARAMS, {"name": "x"})
        self.assertEqual(kwargs, {"name": "x", "count": 1, "ratio": 0.5, "flag": False, "tags": [], "data": None,
                                  "maybe": None})

    def test_list_default_is_fresh(self) -> None:
        first = bind_arguments("m", PARAMS, {"name": "x"})
        first["tags"].append("dirty")
        self.assertEqual(bind_arguments("m", PARAMS, {"name": "x"})["tags"], [])

    def test_list_default_from_comma_text(self) -> None:
        params = (Param("kinds", LIST, "a,b"),)
        self.assertEqual(bind_arguments("m", params, {}), {"kinds": ["a", "b"]})

    def test_types_from_strings(self) -> None:
        kwargs = bind_arguments("m", PARAMS, {"name": "x", "count": "5", "ratio": "2.5", "flag": "true",
                                              "tags": "a,b", "data": '{"k": [1, 2]}', "maybe": "3"})
        self.assertEqual(kwargs, {"name": "x", "count": 5, "ratio": 2.5, "flag": True, "tags": ["a", "b"],
                                  "data": {"k": [1, 2]}, "maybe": 3})

    def test_types_from_json(self) -> None:
        kwargs = bind_arguments("m", PARAMS, {"name": 7, "count": 5, "ratio": 1, "flag": False,
                                              "tags": ["a"], "data": [1, "two"]})
        self.assertEqual((kwargs["name"], kwargs["count"], kwargs["ratio"]), ("7", 5, 1.0))
        self.assertEqual((kwargs["tags"], kwargs["data"]), (["a"], [1, "two"]))

    def test_list_from_json_text(self) -> None:
        self.assertEqual(bind_arguments("m", PARAMS, {"name": "x", "tags": '["a", "b c"]'})["tags"], ["a", "b c"])
        err = self.assertRaises(BadRequest, bind_arguments, "m", PARAMS, {"name": "x", "tags": "[oops"})
        self.assertIn("'tags'", str(err))

    def test_json_text_nested_too_deeply_is_refused_and_counted(self) -> None:
        limits = ApiLimits(max_json_depth=3)
        for key in ("data", "tags"):
            for levels in (4, 50_000):  # 50,000 raised RecursionError (a 500) before
                text = "[" * levels + "]" * levels
                err = self.assertRaises(TooDeep, bind_arguments, "m", PARAMS, {"name": "x", key: text}, limits)
                self.assertEqual(err.http_code, 400)
                self.assertIn(f"parameter '{key}'", str(err))
        self.assertEqual(limits.refused["json_too_deep"], 4)
        self.assertEqual(bind_arguments("m", PARAMS, {"name": "x", "data": "[[[1]]]"}, limits)["data"], [[[1]]])

    def test_json_text_that_is_not_json_kept(self) -> None:
        self.assertEqual(bind_arguments("m", PARAMS, {"name": "x", "data": "hello"})["data"], "hello")

    def test_none_allowed_where_default_is_none(self) -> None:
        self.assertIsNone(bind_arguments("m", PARAMS, {"name": "x", "maybe": None})["maybe"])
        self.assertRaises(BadRequest, bind_arguments, "m", PARAMS, {"name": "x", "count": None})

    def test_alias(self) -> None:
        self.assertEqual(bind_arguments("m", PARAMS, {"name": "x", "labels": "q"})["tags"], ["q"])

    def test_alias_and_name_together(self) -> None:
        err = self.assertRaises(BadRequest, bind_arguments, "m", PARAMS, {"name": "x", "labels": "q", "tags": "r"})
        self.assertIn("'tags' given twice", str(err))

    def test_missing_required(self) -> None:
        err = self.assertRaises(BadRequest, bind_arguments, "m", PARAMS, {"count": 2})
        self.assertEqual(str(err), "m: missing parameter 'name'")
        self.assertEqual(err.http_code, 400)

    def test_unknown_parameter(self) -> None:
        err = self.assertRaises(BadRequest, bind_arguments, "m", PARAMS, {"name": "x", "colour": "red"})
        self.assertEqual(str(err), "m: unknown parameter 'colour'")

    def test_bad_types_name_the_parameter(self) -> None:
        for key, value in (("count", "many"), ("ratio", "nan"), ("flag", "perhaps"), ("tags", [1]),
                           ("name", ["x"]), ("count", True)):
            raw = {"name": "x", key: value}
            err = self.assertRaises(BadRequest, bind_arguments, "m", PARAMS, raw)
            self.assertIn(f"parameter '{key}'", str(err))

    def test_required_marker(self) -> None:
        self.assertTrue(Param("a", STR).required)
        self.assertTrue(Param("a", STR, REQUIRED).required)
        self.assertFalse(Param("a", STR, None).required)
        self.assertEqual(repr(REQUIRED), "REQUIRED")


class DispatcherTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.api = FakeAPI()
        self.logging = False
        self.dispatcher = Dispatcher(self.api, log_calls=lambda: self.logging)

    def answer(self, name: str, raw: dict) -> Answer:
        return self.successResultOf(self.dispatcher.execute_by_name(name, raw))


class ResolveTests(DispatcherTestCase):
    def test_by_name(self) -> None:
        route = self.dispatcher.by_name("config_get")
        self.assertIsInstance(route, Route)
        self.assertEqual(route.path, "config/get/v1")
        alias = self.dispatcher.by_name("config_list")
        self.assertIsInstance(alias, Alias)
        for bad in ("nope", None, 5, ""):
            self.assertRaises(NotFound, self.dispatcher.by_name, bad)

    def test_by_path(self) -> None:
        route, args = self.dispatcher.by_path("/config/get/v1", "GET")
        self.assertEqual((route.name, args), ("config_get", {}))
        route, args = self.dispatcher.by_path("event/listen/abc/v1/", "GET")
        self.assertEqual((route.name, args), ("event_listen", {"consumer_callback_id": "abc"}))

    def test_path_values_are_url_decoded(self) -> None:
        route, args = self.dispatcher.by_path("/event/listen/my%20id%2Fsub%C3%A9/v1", "GET")
        self.assertEqual((route.name, args), ("event_listen", {"consumer_callback_id": "my id/sub\u00e9"}))
        # An encoded "/" stays inside its segment: this is not a path with more segments.
        self.assertRaises(NotFound, self.dispatcher.by_path, "event/listen/a/b/v1", "GET")

    def test_path_values_keep_plus_and_decode_key_id_characters(self) -> None:
        _, args = self.dispatcher.by_path("event/listen/share%24alice%40host_1/v1", "GET")
        self.assertEqual(args, {"consumer_callback_id": "share$alice@host_1"})
        _, args = self.dispatcher.by_path("event/listen/a+b%2Bc/v1", "GET")
        self.assertEqual(args, {"consumer_callback_id": "a+b+c"})
        # Text that only looks like an escape is kept as it is.
        _, args = self.dispatcher.by_path("event/listen/100%25%zz/v1", "GET")
        self.assertEqual(args, {"consumer_callback_id": "100%%zz"})

    def test_path_escape_that_is_not_utf8_is_bad_request(self) -> None:
        err = self.assertRaises(BadRequest, self.dispatcher.by_path, "event/listen/caf%E9/v1", "GET")
        self.assertIn("'consumer_callback_id'", str(err))

    def test_by_path_legacy(self) -> None:
        target, args = self.dispatcher.by_path("legacy/config_list/v1", "POST")
        self.assertEqual((target.name, args), ("config_list", {}))

    def test_mutating_get_also_takes_post(self) -> None:
        route, _ = self.dispatcher.by_path("process/stop/v1", "POST")
        self.assertEqual(route.name, "process_stop")

    def test_unknown_path(self) -> None:
        err = self.assertRaises(NotFound, self.dispatcher.by_path, "config/nothing/v1", "GET")
        self.assertIn("/config/nothing/v1", str(err))
        self.assertRaises(NotFound, self.dispatcher.by_path, "event/listen/a/b/v1", "GET")

    def test_wrong_verb(self) -> None:
        err = self.assertRaises(MethodNotAllowed, self.dispatcher.by_path, "config/set/v1", "GET")
        self.assertEqual(err.allowed, ("POST",))
        self.assertEqual(err.http_code, 405)
        response = error_response(err)
        self.assertEqual(response.headers, {"Allow": "POST"})
        err = self.assertRaises(MethodNotAllowed, self.dispatcher.by_path, "process/stop/v1", "DELETE")
        self.assertEqual(err.allowed, ("GET", "POST"))

    def test_is_implemented(self) -> None:
        self.assertTrue(self.dispatcher.is_implemented(self.dispatcher.by_name("config_get")))
        self.assertFalse(self.dispatcher.is_implemented(self.dispatcher.by_name("process_info")))
        # Legacy names follow their target.
        self.assertTrue(self.dispatcher.is_implemented(self.dispatcher.by_name("restart")))
        self.assertFalse(self.dispatcher.is_implemented(self.dispatcher.by_name("stop")))
        self.assertTrue(self.dispatcher.is_implemented(self.dispatcher.by_name("backup_start_id")))
        self.assertFalse(self.dispatcher.is_implemented(self.dispatcher.by_name("backups_id_list")))


class ExecuteTests(DispatcherTestCase):
    def test_success_envelope(self) -> None:
        answer = self.answer("config_get", {"key": "a/b", "include_info": "1"})
        self.assertEqual((answer.code, answer.headers), (200, {}))
        self.assertEqual(sorted(answer.envelope), ["execution", "result", "status"])
        self.assertEqual(answer.envelope["status"], "OK")
        self.assertEqual(answer.envelope["result"], {
            "method": "config_get", "kwargs": {"key": "a/b", "include_info": True, "default": None}})
        float(answer.envelope["execution"])
        self.assertRegex(answer.envelope["execution"], r"^\d+\.\d{4}$")

    def test_logs_calls_when_asked(self) -> None:
        self.logging = True
        self.assertEqual(self.answer("config_get", {"key": "a"}).code, 200)
        self.assertEqual(self.answer("config_get", {}).code, 400)

    def test_bad_arguments(self) -> None:
        answer = self.answer("config_get", {})
        self.assertEqual(answer.code, 400)
        self.assertEqual(answer.envelope["status"], "ERROR")
        self.assertEqual(answer.envelope["errors"], ["config_get: missing parameter 'key'"])
        self.assertIn("execution", answer.envelope)
        self.assertEqual(self.api.calls, [])

    def test_arguments_not_an_object(self) -> None:
        answer = self.answer("config_get", ["key"])
        self.assertEqual(answer.code, 400)
        self.assertIn("must be a JSON object", answer.envelope["errors"][0])

    def test_unknown_method(self) -> None:
        answer = self.answer("no_such_method", {})
        self.assertEqual(answer.code, 404)
        self.assertEqual(answer.envelope, {"status": "ERROR", "errors": ["unknown API method 'no_such_method'"]})

    def test_typed_errors_map_to_codes(self) -> None:
        cases = ((BadRequest("bad"), 400), (Unauthorized("who"), 401), (Forbidden("no"), 403),
                 (NotFound("gone"), 404), (Conflict("clash"), 409), (TooManyRequests("slow", 2.2), 429),
                 (Unavailable("later"), 503), (Timeout("late"), 503), (InsufficientStorage("full"), 507),
                 (NotImplementedYet("soon"), 501))
        for err, code in cases:
            self.api.raise_next = err
            answer = self.answer("config_set", {"key": "k", "value": 1})
            self.assertEqual(answer.code, code, err)
            self.assertEqual(answer.envelope["errors"], [str(err)])
            self.assertEqual(answer, Answer(code, answer.envelope, error_response(err).headers))
        # Typed errors are answers, not crashes: nothing logged as a failure.
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_retry_after_header(self) -> None:
        self.api.raise_next = TooManyRequests("slow", retry_after=2.2)
        answer = self.answer("config_set", {"key": "k", "value": 1})
        self.assertEqual(answer.headers, {"Retry-After": "3"})

    def test_unexpected_exception_is_500_and_logged(self) -> None:
        self.api.raise_next = ZeroDivisionError("secret detail")
        answer = self.answer("config_set", {"key": "k", "value": 1})
        self.assertEqual(answer.code, 500)
        self.assertEqual(answer.envelope["errors"], ["internal error: ZeroDivisionError"])
        self.assertNotIn("secret detail", str(answer.envelope))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_not_implemented(self) -> None:
        answer = self.answer("process_info", {})
        self.assertEqual(answer.code, 501)
        self.assertEqual(answer.envelope["errors"], ["process_info is not implemented yet"])
        self.assertEqual(self.answer("not_a_method", {}).code, 404)

    def test_arguments_checked_before_501(self) -> None:
        self.assertEqual(self.answer("user_ping", {}).code, 400)

    def test_plain_result_is_answered_without_a_deferred(self) -> None:
        answer = self.dispatcher.answer(self.dispatcher.by_name("config_get"), {"key": "k"})
        self.assertIsInstance(answer, Answer)
        self.assertEqual((answer.code, answer.envelope["result"]["method"]), (200, "config_get"))
        answer = self.dispatcher.answer_by_name("config_get", {})
        self.assertEqual(answer.code, 400)
        self.assertEqual(self.dispatcher.answer_by_name("nope", {}).code, 404)
        self.api.raise_next = ZeroDivisionError("x")
        self.assertEqual(self.dispatcher.answer_by_name("config_set", {"key": "k", "value": 1}).code, 500)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_pending_result_is_answered_by_a_deferred(self) -> None:
        d = self.dispatcher.answer_by_name("event_listen", {"consumer_callback_id": "c"})
        self.assertIsInstance(d, defer.Deferred)
        self.assertNoResult(d)
        self.api.pending.callback({"events": []})
        self.assertEqual(self.successResultOf(d).code, 200)

    def test_coroutine_result(self) -> None:
        async def later():
            return {"done": True}

        self.api.config_get = lambda **kwargs: later()
        answer = self.successResultOf(self.dispatcher.execute_by_name("config_get", {"key": "k"}))
        self.assertEqual((answer.code, answer.envelope["result"]), (200, {"done": True}))

    def test_failure_result(self) -> None:
        self.api.config_get = lambda **kwargs: Failure(Conflict("busy"))
        answer = self.dispatcher.answer_by_name("config_get", {"key": "k"})
        self.assertEqual((answer.code, answer.envelope["errors"]), (409, ["busy"]))

    def test_deferred_result(self) -> None:
        d = self.dispatcher.execute_by_name("event_listen", {"consumer_callback_id": "c", "since": "4"})
        self.assertNoResult(d)
        self.assertEqual(self.api.calls, [("event_listen", {"consumer_callback_id": "c", "since": 4,
                                                            "polling_timeout": 60.0})])
        self.api.pending.callback({"events": []})
        answer = self.successResultOf(d)
        self.assertEqual((answer.code, answer.envelope["result"]), (200, {"events": []}))

    def test_deferred_failure(self) -> None:
        answer = self.answer("service_info", {"service_name": "service_x"})
        self.assertEqual(answer.code, 404)
        self.assertEqual(answer.envelope["errors"], ["unknown service 'service_x'"])

    def test_cancelled(self) -> None:
        d = self.dispatcher.execute_by_name("event_listen", {"consumer_callback_id": "c"})
        d.cancel()
        answer = self.successResultOf(d)
        self.assertEqual(answer.code, 499)

    def test_call_errbacks_where_execute_answers(self) -> None:
        target = self.dispatcher.by_name("config_get")
        self.failureResultOf(self.dispatcher.call(target, {}), BadRequest)
        self.assertEqual(self.successResultOf(self.dispatcher.call(target, {"key": "k"}))["method"], "config_get")

    def test_list_alias_and_default(self) -> None:
        result = self.answer("connections_list", {"wanted_protos": "tcp,udp"}).envelope["result"]
        self.assertEqual(result["kwargs"], {"protocols": ["tcp", "udp"]})
        result = self.answer("message_receive", {"consumer_callback_id": "c"}).envelope["result"]
        self.assertEqual(result["kwargs"]["message_types"], ["private_message", "group_message"])


class LegacyTests(DispatcherTestCase):
    def test_plain_alias(self) -> None:
        answer = self.answer("config_list", {"sort": "true"})
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.api.calls, [("configs_list", {"sort": True, "include_info": False})])

    def test_ignored_parameter(self) -> None:
        self.assertEqual(self.answer("restart", {"showgui": True}).code, 200)
        self.assertEqual(self.api.calls, [("process_restart", {})])

    def test_renames(self) -> None:
        answer = self.answer("restore_single", {"pathID_or_backupID_or_localPath": "0/1", "destinationPath": "/tmp"})
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.api.calls, [("file_download_start", {
            "remote_path": "0/1", "destination_path": "/tmp", "wait_result": False, "open_share": True})])

    def test_fixed_values(self) -> None:
        self.answer("backups_queue", {})
        self.answer("backups_running", {})
        self.assertEqual(self.api.calls, [
            ("files_uploads", {"include_running": False, "include_pending": True}),
            ("files_uploads", {"include_running": True, "include_pending": False}),
        ])

    def test_legacy_parameters_checked(self) -> None:
        answer = self.answer("restore_single", {})
        self.assertEqual(answer.code, 400)
        self.assertIn("restore_single: missing parameter 'pathID_or_backupID_or_localPath'", answer.envelope["errors"])
        # The new name is not a legacy parameter.
        self.assertEqual(self.answer("restore_single", {"remote_path": "x"}).code, 400)
        self.assertEqual(self.answer("backups_queue", {"include_running": True}).code, 400)

    def test_legacy_only_method(self) -> None:
        answer = self.answer("backup_start_id", {"pathID": "0/1"})
        self.assertEqual(answer.code, 200)
        self.assertEqual(self.api.calls, [("backup_start_id", {"pathID": "0/1"})])

    def test_legacy_not_implemented(self) -> None:
        answer = self.answer("stop", {})
        self.assertEqual(answer.code, 501)
        self.assertEqual(answer.envelope["errors"], ["process_stop is not implemented yet"])
        answer = self.answer("backups_id_list", {})
        self.assertEqual(answer.envelope["errors"], ["backups_id_list is not implemented yet"])
