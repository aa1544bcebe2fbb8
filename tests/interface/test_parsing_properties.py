"""Property tests (hypothesis) for everything the local API parses from a client.

REST JSON bodies, query strings and path values, WebSocket frames: random and
mutated input never raises anything but the API's own errors, and is never a
500. Bodies go through the real :class:`~bitnode.interface.rest.ApiResource`,
frames through the real :class:`~bitnode.interface.websocket.ApiWebSocketProtocol`,
both over a dispatcher whose API object answers every method with the
arguments it was given, so every route's parameters are bound and checked.
"""

from __future__ import annotations

import json
import re
from io import BytesIO
from urllib.parse import quote

from autobahn.twisted.websocket import WebSocketServerProtocol
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.test.requesthelper import DummyRequest

from bitnode.errors import BitnodeError
from bitnode.interface.auth import ApiGuard, RateLimiter
from bitnode.interface.dispatch import Dispatcher, ParamTable, parse_json_object
from bitnode.interface.limits import ApiLimits
from bitnode.interface.rest import ApiResource
from bitnode.interface.routes import LEGACY, ROUTES
from bitnode.interface.websocket import ApiWebSocketFactory, ApiWebSocketProtocol
from bitnode.main.events import EventBus

SECRET = "property-test-secret-0123456789"
TARGETS = (*ROUTES, *LEGACY)
VERBS = ("GET", "POST", "PUT", "DELETE", "PATCH")
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


def nested(levels: int, inner: str = "1") -> str:
    """JSON text of ``levels`` lists around ``inner``."""
    return "[" * levels + inner + "]" * levels


class EchoApi:
    """Every API method: answers the keyword arguments it was called with."""

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda **kwargs: {"method": name, "kwargs": sorted(kwargs)}


def make_dispatcher() -> Dispatcher:
    return Dispatcher(EchoApi(), limits=ApiLimits(max_body_bytes=64 * 1024, max_json_depth=8))


@st.composite
def raw_arguments(draw, target):
    """Arguments for ``target``: its own parameter names (and aliases) and strangers, with any values."""
    names = [p.name for p in target.params] + [a for p in target.params for a in p.aliases]
    keys = st.sampled_from(names) | st.text(max_size=10) if names else st.text(max_size=10)
    values = json_values | st.text(max_size=30) | st.sampled_from([nested(9), nested(3000), "[oops", "1e999"])
    return draw(st.dictionaries(keys, values, max_size=5))


class BodyParsingProperties(unittest.TestCase):
    @PROPERTY
    @given(st.binary(max_size=300))
    def test_any_bytes_are_an_object_or_a_bad_request(self, raw):
        try:
            value = parse_json_object(raw, "body", 8)
        except BitnodeError as err:
            self.assertEqual(err.http_code, 400)
        else:
            self.assertIsInstance(value, dict)

    @PROPERTY
    @given(st.dictionaries(st.text(max_size=8), json_values, max_size=5), st.data())
    def test_mutated_json_bodies_are_an_object_or_a_bad_request(self, body, data):
        raw = bytearray(json.dumps(body).encode("utf-8"))
        for _ in range(data.draw(st.integers(0, 4))):
            if raw:
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        try:
            value = parse_json_object(bytes(raw), "body", 8)
        except BitnodeError as err:
            self.assertEqual(err.http_code, 400)
        else:
            self.assertIsInstance(value, dict)

    @PROPERTY
    @given(st.integers(1, 20_000))
    def test_nesting_is_refused_past_the_limit_at_any_depth(self, levels):
        raw = ('{"a": ' + nested(levels) + "}").encode("ascii")
        try:
            parse_json_object(raw, "body", 8)
        except BitnodeError as err:
            self.assertEqual(err.http_code, 400)
            self.assertGreater(levels, 7)
        else:
            self.assertLessEqual(levels, 7)


class BindingProperties(unittest.TestCase):
    @PROPERTY
    @given(st.data())
    def test_every_route_binds_any_arguments_or_says_which_is_wrong(self, data):
        target = data.draw(st.sampled_from(TARGETS))
        raw = data.draw(raw_arguments(target))
        try:
            kwargs = ParamTable(target.name, target.params, ApiLimits(max_json_depth=8)).bind(raw)
        except BitnodeError as err:
            self.assertEqual(err.http_code, 400, (target.name, raw, err))
        else:
            self.assertEqual(set(kwargs), {p.name for p in target.params})


class RestProperties(unittest.TestCase):
    """Random paths, verbs, query strings and bodies through the real resource: never a 500."""

    def setUp(self):
        self.dispatcher = make_dispatcher()
        self.resource = ApiResource(self.dispatcher, ApiGuard(SECRET), RateLimiter(Clock(), 0, 1))

    def render(self, verb: str, path: str, args: dict, body: bytes) -> tuple[int, dict]:
        request = DummyRequest([])
        request.method = verb.encode("ascii")
        request.path = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
        request.uri = request.path
        request.args = args
        request.content = BytesIO(body)
        request.requestHeaders.setRawHeaders(b"api_secret", [SECRET.encode("ascii")])
        written = self.resource.render(request)
        self.assertIsInstance(written, bytes, "every echo answer is immediate")
        return request.responseCode or 200, json.loads(written)

    @PROPERTY
    @given(st.data())
    def test_query_strings_and_bodies_of_every_route(self, data):
        target = data.draw(st.sampled_from(TARGETS))
        verb = data.draw(st.sampled_from(target.verbs) | st.sampled_from(VERBS))
        path = target.path
        for name in re.findall(r"\{(\w+)\}", path):
            path = path.replace("{" + name + "}", quote(data.draw(st.text(min_size=1, max_size=12)), safe=""))
        query = data.draw(raw_arguments(target))
        args = {key.encode("utf-8", "surrogatepass"): [json.dumps(value).encode("utf-8")
                                                        if not isinstance(value, str) else
                                                        value.encode("utf-8", "surrogatepass")]
                for key, value in query.items()}
        body = data.draw(st.sampled_from([b"", b"{}", b"[1]", b"{bad", ('{"x": ' + nested(50) + "}").encode()])
                         | st.builds(lambda raw: json.dumps(raw).encode("utf-8"), raw_arguments(target)))
        code, envelope = self.render(verb, "/" + path, args, body)
        self.assertNotEqual(code, 500, (verb, path, query, body[:100], envelope))
        self.assertIn(envelope["status"], ("OK", "ERROR"))

    @PROPERTY
    @given(st.binary(max_size=60), st.sampled_from(VERBS))
    def test_random_paths(self, path, verb):
        code, envelope = self.render(verb, b"/" + path, {}, b"")
        self.assertIn(code, (400, 404, 405), envelope)


class _Transport:
    def getPeer(self):  # noqa: N802 - Twisted's name
        return IPv4Address("TCP", "127.0.0.1", 5555)


class WebSocketFrameProperties(unittest.TestCase):
    """Random and mutated frames through the real protocol: one JSON reply each, never an exception."""

    def setUp(self):
        clock = Clock()
        self.factory = ApiWebSocketFactory(make_dispatcher(), ApiGuard(SECRET), RateLimiter(clock, 0, 1),
                                           EventBus(clock, 10), clock)

    def deliver(self, payload: bytes, binary: bool = False, authenticated: bool = True) -> list[dict]:
        protocol = ApiWebSocketProtocol()
        protocol.factory = self.factory
        protocol.transport = _Transport()
        protocol.state = WebSocketServerProtocol.STATE_OPEN
        protocol.authenticated = authenticated
        protocol._pending = set()
        sent = []
        protocol.sendMessage = lambda data, isBinary=False: sent.append(json.loads(data))
        protocol.sendCloseFrame = lambda **kwargs: sent.append({"closed": kwargs["code"]})
        protocol.onMessage(payload, binary)
        return sent

    @PROPERTY
    @given(st.binary(max_size=300), st.booleans())
    def test_any_bytes(self, payload, binary):
        replies = self.deliver(payload, binary)
        self.assertEqual(len(replies), 1, replies)
        self.assertEqual(replies[0]["code"], 400)

    @PROPERTY
    @given(st.data())
    def test_api_calls_with_any_method_and_arguments(self, data):
        target = data.draw(st.sampled_from(TARGETS))
        message = {"command": data.draw(st.sampled_from(["api_call", "resume", "auth", "nope"]) | st.text(max_size=5)),
                   "method": data.draw(st.sampled_from([target.name, "", "no_such_method"]) | json_values),
                   "kwargs": data.draw(raw_arguments(target) | json_values),
                   "call_id": data.draw(json_values)}
        if data.draw(st.booleans()):
            message["since"] = data.draw(json_values | st.integers())
        raw = bytearray(json.dumps(message).encode("utf-8"))
        if data.draw(st.booleans()) and raw:  # sometimes one byte changed
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        replies = self.deliver(bytes(raw), authenticated=data.draw(st.booleans()))
        for reply in replies:
            if "closed" in reply:
                continue
            self.assertNotEqual(reply.get("code"), 500, (message, reply))
            self.assertIn(reply["type"], ("api_call", "error", "auth", "event", "events_missed"))
