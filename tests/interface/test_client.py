"""Tests for bitnode.interface.client: typed key=value parsing, request building, calling a server."""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

from twisted.trial.unittest import SynchronousTestCase

from bitnode.interface.client import (
    NotRunning,
    UnknownMethod,
    build_request,
    call_api,
    find_target,
    parse_cli_params,
    read_endpoints,
    read_secret,
)
from bitnode.interface.routes import ROUTES
from bitnode.main import netns
from bitnode.main.basedir import Basedir
from bitnode.main.fileutil import atomic_write
from tests.main.test_netns import scratch_netns


def _param(route_name: str, name: str):
    route = next(r for r in ROUTES if r.name == route_name)
    return next(p for p in route.params if p.name == name)


class ParseCliParamsTests(SynchronousTestCase):
    """``key=value`` words become the types the route table declares."""

    def test_strings_stay_text_even_when_they_look_like_json(self):
        self.assertEqual(parse_cli_params("config_get", ["key=123"]), {"key": "123"})
        self.assertEqual(parse_cli_params("config_get", ["key=a=b"]), {"key": "a=b"})

    def test_booleans_accept_the_usual_words(self):
        for text, value in (("true", True), ("yes", True), ("1", True), ("false", False), ("off", False)):
            self.assertEqual(parse_cli_params("config_get", ["key=k", f"include_info={text}"])["include_info"],
                             value)

    def test_a_bad_boolean_or_integer_names_the_parameter(self):
        err = self.assertRaises(ValueError, parse_cli_params, "config_get", ["key=k", "include_info=maybe"])
        self.assertIn("include_info", str(err))
        err = self.assertRaises(ValueError, parse_cli_params, "user_ping", ["user_id=u", "retries=two"])
        self.assertIn("retries", str(err))

    def test_numbers_are_parsed(self):
        kwargs = parse_cli_params("user_ping", ["user_id=u", "retries=3", "timeout=2.5"])
        self.assertEqual(kwargs, {"user_id": "u", "retries": 3, "timeout": 2.5})

    def test_json_parameters_take_json_and_fall_back_to_text(self):
        self.assertEqual(parse_cli_params("config_set", ["key=k", "value=[1, 2]"])["value"], [1, 2])
        self.assertEqual(parse_cli_params("config_set", ["key=k", "value=42"])["value"], 42)
        self.assertEqual(parse_cli_params("config_set", ["key=k", "value=hello"])["value"], "hello")

    def test_lists_take_commas_json_or_repeats_under_any_alias(self):
        self.assertEqual(parse_cli_params("connections_list", ["protocols=tcp,udp"]), {"protocols": ["tcp", "udp"]})
        self.assertEqual(parse_cli_params("connections_list", ['protocols=["tcp"]']), {"protocols": ["tcp"]})
        self.assertEqual(parse_cli_params("connections_list", ["protocols=tcp", "wanted_protos=udp"]),
                         {"protocols": ["tcp", "udp"]})
        self.assertEqual(parse_cli_params("connections_list", ["protocols="]), {"protocols": []})

    def test_null_gives_none_where_none_is_the_default(self):
        self.assertEqual(parse_cli_params("key_create", ["key_alias=a", "key_size=null"])["key_size"], None)

    def test_malformed_words_and_repeats_are_refused(self):
        self.assertRaises(ValueError, parse_cli_params, "config_get", ["key"])
        self.assertRaises(ValueError, parse_cli_params, "config_get", ["=value"])
        self.assertRaises(ValueError, parse_cli_params, "config_get", ["key=a", "key=b"])

    def test_unknown_parameters_are_passed_on_for_the_node_to_judge(self):
        self.assertEqual(parse_cli_params("process_health", ["extra=5", "other=x"]), {"extra": 5, "other": "x"})

    def test_unknown_methods_raise_and_legacy_names_resolve(self):
        self.assertRaises(UnknownMethod, parse_cli_params, "no_such_method", [])
        self.assertRaises(UnknownMethod, find_target, "no_such_method")
        self.assertEqual(find_target("ping").target, "user_ping")
        self.assertEqual(parse_cli_params("ping", ["idurl=x", "timeout=3"]), {"idurl": "x", "timeout": 3.0})


class BuildRequestTests(SynchronousTestCase):
    """The request follows the route: verb, path, query string or JSON body, secret header."""

    def test_get_parameters_go_in_the_query_string_and_parse_back_to_the_same_values(self):
        request = build_request("http://127.0.0.1:1/", "s3cret", "config_get",
                                {"key": "123", "include_info": True, "default": "7"})
        self.assertEqual(request.get_method(), "GET")
        self.assertEqual(request.get_header("Api_secret"), "s3cret")
        url = urllib.parse.urlsplit(request.full_url)
        self.assertEqual(url.path, "/config/get/v1")
        query = dict(urllib.parse.parse_qsl(url.query))
        # What the node does with the text: each parameter's own parser.
        self.assertEqual(_param("config_get", "key").coerce(query["key"]), "123")
        self.assertIs(_param("config_get", "include_info").coerce(query["include_info"]), True)
        self.assertEqual(_param("config_get", "default").coerce(query["default"]), "7")

    def test_none_values_are_left_out_of_the_query(self):
        request = build_request("http://127.0.0.1:1", "", "connections_list", {"protocols": None})
        self.assertEqual(request.full_url, "http://127.0.0.1:1/connection/list/v1")

    def test_lists_in_the_query_parse_back(self):
        request = build_request("http://127.0.0.1:1", "", "connections_list", {"protocols": ["tcp", "udp"]})
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(request.full_url).query))
        self.assertEqual(_param("connections_list", "protocols").coerce(query["protocols"]), ["tcp", "udp"])

    def test_other_verbs_send_a_json_body(self):
        request = build_request("http://127.0.0.1:1/", "s", "config_set", {"key": "k", "value": [1]})
        self.assertEqual(request.get_method(), "POST")
        self.assertEqual(json.loads(request.data), {"key": "k", "value": [1]})
        self.assertEqual(request.get_header("Content-type"), "application/json")

    def test_path_parameters_are_quoted_into_the_path(self):
        request = build_request("http://127.0.0.1:1/", "s", "service_info", {"service_name": "a/b c"})
        self.assertEqual(request.full_url, "http://127.0.0.1:1/service/info/a%2Fb%20c/v1")
        self.assertRaises(ValueError, build_request, "http://127.0.0.1:1/", "s", "service_info", {})

    def test_legacy_names_post_to_their_legacy_path(self):
        request = build_request("http://127.0.0.1:1/", "s", "ping", {"idurl": "x"})
        self.assertEqual((request.get_method(), request.full_url), ("POST", "http://127.0.0.1:1/legacy/ping/v1"))


class _Handler(BaseHTTPRequestHandler):
    """Answers by path: /process/health/v1 OK, /config/get/v1 a 404 envelope, anything else garbage."""

    def do_GET(self):  # noqa: N802 - the name http.server calls
        seen = self.server.seen  # type: ignore[attr-defined]
        seen.append((self.path, self.headers.get("api_secret")))
        if self.path.startswith("/process/health/v1"):
            code, body = 200, json.dumps({"status": "OK", "result": {"ready": True}}).encode()
        elif self.path.startswith("/config/get/v1"):
            code, body = 404, json.dumps({"status": "ERROR", "errors": ["unknown setting"]}).encode()
        else:
            code, body = 500, b"<html>boom</html>"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class CallApiTests(SynchronousTestCase):
    """Calling a server found through the basedir files."""

    def setUp(self):
        self.basedir = Basedir.at(os.path.abspath(self.mktemp()))
        self.basedir.create()

    def serve(self, namespace: str | None = None) -> HTTPServer:
        with netns.entered(namespace):  # its socket listens on that namespace's loopback
            server = HTTPServer(("127.0.0.1", 0), _Handler)
        server.seen = []  # type: ignore[attr-defined]
        thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
        thread.start()

        def shut():
            server.shutdown()
            server.server_close()
            thread.join()

        self.addCleanup(shut)
        port = server.server_address[1]
        atomic_write(self.basedir.endpoints_file, json.dumps({"http": f"http://127.0.0.1:{port}/"}).encode())
        atomic_write(self.basedir.api_secret_file, b"the-secret\n", mode=0o600)
        return server

    def test_no_endpoints_file_means_not_running(self):
        self.assertIsNone(read_endpoints(self.basedir))
        self.assertEqual(read_secret(self.basedir), "")
        self.assertRaises(NotRunning, call_api, self.basedir, "process_health", {})
        self.assertTrue(issubclass(NotRunning, OSError))

    def test_a_broken_endpoints_file_means_not_running(self):
        atomic_write(self.basedir.endpoints_file, b"[1, 2")
        self.assertRaises(NotRunning, call_api, self.basedir, "process_health", {})

    def test_answers_are_returned_with_their_code_and_the_secret_is_sent(self):
        server = self.serve()
        self.assertEqual(call_api(self.basedir, "process_health", {}), (200, {"status": "OK", "result": {"ready": True}}))
        code, envelope = call_api(self.basedir, "config_get", {"key": "x"})
        self.assertEqual((code, envelope["status"]), (404, "ERROR"))
        self.assertEqual(server.seen[0], ("/process/health/v1", "the-secret"))

    def test_a_non_json_answer_becomes_an_error_envelope(self):
        self.serve()
        code, envelope = call_api(self.basedir, "process_info", {})
        self.assertEqual((code, envelope["status"]), (500, "ERROR"))
        self.assertIn("boom", envelope["errors"][0])

    def test_a_node_that_is_gone_raises_oserror(self):
        server = self.serve()
        port = server.server_address[1]
        server.shutdown()
        server.server_close()
        atomic_write(self.basedir.endpoints_file, json.dumps({"http": f"http://127.0.0.1:{port}/"}).encode())
        self.assertRaises(OSError, call_api, self.basedir, "process_health", {}, 2.0)

    def test_a_node_in_a_network_namespace_is_called_from_inside_it(self):
        atomic_write(self.basedir.endpoints_file, json.dumps(
            {"http": "http://127.0.0.1:9/", "netns": f"bitnode-no-such-{uuid.uuid4().hex[:8]}"}).encode())
        self.assertRaises(OSError, call_api, self.basedir, "process_health", {}, 2.0)  # not there, or not root
        name = scratch_netns(self)
        server = self.serve(name)
        port = server.server_address[1]
        # its 127.0.0.1 is not ours: without the name the call goes nowhere
        self.assertRaises(OSError, call_api, self.basedir, "process_health", {}, 2.0)
        atomic_write(self.basedir.endpoints_file, json.dumps(
            {"http": f"http://127.0.0.1:{port}/", "netns": name}).encode())
        self.assertEqual(call_api(self.basedir, "process_health", {})[0], 200)
        self.assertEqual(server.seen, [("/process/health/v1", "the-secret")])
