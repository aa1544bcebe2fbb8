"""Helpers for the local API integration tests: a started Node, an HTTP client and WebSocket clients.

Everything here uses the real reactor and real loopback sockets, and cleans
up after itself through ``case.addCleanup`` so trial finds no open socket or
pending timer. Waits are short (``WAIT`` seconds at most): a reply that takes
longer is a failure, not something to wait out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from automats import Automat
from bitnode.app import api_server, build_node
from bitnode.errors import Conflict
from bitnode.interface import api as api_module
from bitnode.services.base import Service
from bitnode.userid.id_server import IdentityServerService
from bitnode.userid.id_service import IdentityService

WAIT = 0.5
FAST = {"interface/api/http-port": 0, "interface/api/ws-port": 0}


# --- nodes ------------------------------------------------------------------------


class FakeBase(Service):
    """A service with no dependencies that records its starts and stops (in ``node.test_log``, see start_node)."""

    name = "service_fake_base"
    description = "test service at the bottom of the tree"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.journal: list = []

    def start(self):
        """Record the start."""
        self.journal.append(("start", self.name))

    def stop(self):
        """Record the stop."""
        self.journal.append(("stop", self.name))

    def status(self):
        """A fact service_info shows while ON."""
        return {"fake": True}


class FakeTop(FakeBase):
    """Depends on :class:`FakeBase`, to show 409 and dependents being stopped."""

    name = "service_fake_top"
    requires = {"base": FakeBase}
    description = "test service on top of service_fake_base"


class FakeBroken(FakeBase):
    """Disabled by default; refuses to start (a failed start is reported, not hidden)."""

    name = "service_fake_broken"
    enabled_by_default = False
    description = "test service whose start fails"

    def start(self):
        """Fail like a subsystem missing its configuration."""
        raise Conflict("fake broken service cannot start")


FAKE_SERVICES = (FakeBase, FakeTop, FakeBroken)


class Lamp(Automat):
    """A tiny machine for automats_list: OFF <-> ON, with a timer while ON."""

    name = "test_lamp"
    initial = "OFF"
    timers = {"timer-1min": (60.0, {"ON"})}
    transitions = [
        ("OFF", "switch", None, "ON", []),
        ("ON", "switch", None, "OFF", []),
        # The timer only exists so the list shows a running timer; it never fires in a test.
        ("ON", "timer-1min", None, "ON", []),
    ]


@defer.inlineCallbacks
def start_node(case, service_classes=FAKE_SERVICES, overrides=None, basedir=None):
    """Build and start a Node on free ports; stopped again when the test ends. Fires with the node."""
    settings = dict(FAST)
    settings.update(overrides or {})
    node = build_node(basedir or case.mktemp(), reactor, overrides=settings, service_classes=service_classes)
    node.test_log = []
    for name in node.service_driver.names():
        service = node.service_driver.get(name)
        if isinstance(service, FakeBase):
            service.journal = node.test_log
    node.startService()
    case.addCleanup(_stop_node, node)
    yield node.when_ready()
    return node


def _stop_node(node):
    return node.stopService() if node.running else None


@defer.inlineCallbacks
def start_id_server(case, service_classes=(), overrides=None):
    """Start a node serving identities (plus ``service_classes``) for an in-process network.

    Fires with ``(server_node, settings)``: ``settings`` are the overrides a
    node needs to use that server (2048-bit keys, a short identity fetch
    timeout, a free TCP port); copy them before changing them.
    """
    settings = {"services/identity-server/enabled": True, "services/identity-server/web-port": 0}
    settings.update(overrides or {})
    server = yield start_node(case, service_classes=[IdentityServerService, IdentityService, *service_classes],
                              overrides=settings)
    port = server.service_driver.get("service_identity_server").port
    return server, {"personal/private-key-size": 2048, "personal/identity-servers": [f"127.0.0.1:{port}"],
                    "services/identity/fetch-timeout": 5.0, "services/tcp-connections/tcp-port": 0}


class DispatcherCalls:
    """Mixin of a TestCase: API calls through a node's dispatcher, the way a client makes them."""

    def call(self, node, method, **kwargs):
        """The dispatcher's answer (``.code``, ``.envelope``)."""
        return api_server(node).dispatcher.execute_by_name(method, kwargs)

    @defer.inlineCallbacks
    def ok(self, node, method, **kwargs):
        """The result of a call that must answer 200."""
        answer = yield self.call(node, method, **kwargs)
        self.assertEqual(answer.code, 200, (method, answer.envelope))
        return answer.envelope["result"]

    @defer.inlineCallbacks
    def error(self, node, code, method, **kwargs):
        """The error text of a call that must answer ``code``."""
        answer = yield self.call(node, method, **kwargs)
        self.assertEqual(answer.code, code, (method, answer.envelope))
        return " ".join(answer.envelope["errors"])


class OwnNodeCalls:
    """Mixin of a TestCase with a main ``self.node``: the same calls, method first, node optional."""

    node: object

    def call(self, method, node=None, **kwargs):
        """The dispatcher's answer (``.code``, ``.envelope``) from ``node`` or ``self.node``."""
        return api_server(node or self.node).dispatcher.execute_by_name(method, kwargs)

    @defer.inlineCallbacks
    def ok(self, method, node=None, **kwargs):
        """The result of a call that must answer 200."""
        answer = yield self.call(method, node, **kwargs)
        self.assertEqual(answer.code, 200, answer.envelope)
        return answer.envelope["result"]

    @defer.inlineCallbacks
    def error(self, code, method, node=None, **kwargs):
        """The error text of a call that must answer ``code``."""
        answer = yield self.call(method, node, **kwargs)
        self.assertEqual(answer.code, code, answer.envelope)
        return " ".join(answer.envelope["errors"])


# --- HTTP ------------------------------------------------------------------------


@dataclass
class Reply:
    """One HTTP answer: code, headers (lower-case names, last value), the parsed JSON body, Content-Length."""

    code: int
    headers: dict
    body: dict
    length: object = None

    @property
    def result(self):
        """The ``result`` of an OK envelope (asserts the envelope is OK)."""
        assert self.body.get("status") == "OK", (self.code, self.body)
        return self.body["result"]

    @property
    def error(self) -> str:
        """All error texts of an ERROR envelope, joined (asserts the envelope is an error)."""
        assert self.body.get("status") == "ERROR", (self.code, self.body)
        return " ".join(self.body["errors"])


class HttpApi:
    """A treq client for one node's REST API, without persistent connections."""

    def __init__(self, case, node):
        self.node = node
        self.base = node.endpoints()["http"]  # kept: a stopped node has no endpoints
        pool = HTTPConnectionPool(reactor, persistent=False)
        self._client = HTTPClient(Agent(reactor, pool=pool))
        case.addCleanup(pool.closeCachedConnections)

    def url(self, path: str, params: dict | None = None) -> str:
        """Absolute URL of ``path`` (with ``params`` as query string)."""
        url = self.base + path.lstrip("/")
        return url + ("?" + urlencode(params) if params else "")

    @defer.inlineCallbacks
    def request(self, verb, path, params=None, body=None, raw=None, secret=True, headers=None):
        """Send one request and read the whole answer.

        ``body`` is sent as JSON, ``raw`` as given. ``secret`` True sends the
        node's secret, None sends none, a string sends that string.
        ``headers`` are added (a value of None removes a default header).
        """
        sent = {}
        if secret is True:
            sent["api_secret"] = api_server(self.node).secret
        elif secret is not None:
            sent["api_secret"] = secret
        for name, value in (headers or {}).items():
            sent[name] = value
        sent = {name: [value] for name, value in sent.items() if value is not None}
        data = raw if raw is not None else (json.dumps(body).encode("utf-8") if body is not None else None)
        response = yield self._client.request(verb, self.url(path, params), headers=sent, data=data)
        content = yield response.content()
        headers = {name.decode("ascii").lower(): values[-1].decode("latin-1")
                   for name, values in response.headers.getAllRawHeaders()}
        return Reply(response.code, headers, json.loads(content.decode("utf-8")), response.length)

    def get(self, path, **params):
        """GET with query-string parameters."""
        return self.request("GET", path, params=params or None)

    def post(self, path, **body):
        """POST with a JSON object body."""
        return self.request("POST", path, body=body)


# --- WebSocket ---------------------------------------------------------------------


class WsRefused(Exception):
    """The server refused the WebSocket handshake (the text has the HTTP status)."""


class _ClientProtocol(WebSocketClientProtocol):
    def onConnect(self, response):
        self.received = []
        self._waiters = []
        self.closed = defer.Deferred()
        self._next_call_id = 0

    def onOpen(self):
        self.factory.opened.callback(self)

    def onMessage(self, payload, isBinary):
        self.received.append(json.loads(payload.decode("utf-8")))
        self._wake()

    def onClose(self, wasClean, code, reason):
        if not self.factory.opened.called:
            self.factory.opened.errback(WsRefused(f"{code}: {reason}"))
        closed = getattr(self, "closed", None)
        if closed is not None and not closed.called:
            closed.callback(reason)

    def _wake(self):
        for waiter in list(self._waiters):
            match, d = waiter
            found = [m for m in self.received if match(m)]
            if found:
                self._waiters.remove(waiter)
                self.received.remove(found[0])
                d.callback(found[0])

    def next_message(self, match=lambda message: True, timeout=WAIT):
        """The first received message (matching ``match``) not taken yet; fails after ``timeout``."""
        d = defer.Deferred()
        waiter = (match, d)
        self._waiters.append(waiter)
        self._wake()
        if not d.called:
            d.addTimeout(timeout, reactor)
            d.addErrback(lambda f: (waiter in self._waiters and self._waiters.remove(waiter), f)[1])
        return d

    def send_json(self, message) -> None:
        """Send ``message`` as a JSON text frame."""
        self.sendMessage(json.dumps(message).encode("utf-8"), isBinary=False)

    def call(self, method, **kwargs):
        """An api_call; fires with the reply carrying its call_id."""
        self._next_call_id += 1
        call_id = f"c{self._next_call_id}"
        self.send_json({"command": "api_call", "method": method, "kwargs": kwargs, "call_id": call_id})
        return self.next_message(lambda m: m.get("type") == "api_call" and m.get("call_id") == call_id)

    @defer.inlineCallbacks
    def call_ok(self, method, **kwargs):
        """An api_call that must succeed; fires with its result."""
        reply = yield self.call(method, **kwargs)
        assert reply["payload"]["status"] == "OK", reply
        return reply["payload"]["result"]

    def events(self):
        """Event messages received and not taken yet (taken now), in arrival order."""
        found = [m for m in self.received if m.get("type") == "event"]
        for message in found:
            self.received.remove(message)
        return found


class _ClientFactory(WebSocketClientFactory):
    protocol = _ClientProtocol
    noisy = False

    def clientConnectionFailed(self, connector, reason):
        if not self.opened.called:
            self.opened.errback(reason)


def connect_ws(case, node, secret=True, origin=None, since=None, extra=None, headers=None, host=None):
    """Open a WebSocket client to ``node``; fires with the open protocol or fails with WsRefused.

    ``host`` replaces the host name in the URL (and so the Host header) while
    still connecting to the node. The connection is closed (and its close
    awaited) when the test ends.
    """
    params = {}
    if secret is True:
        params["api_secret"] = api_server(node).secret
    elif secret is not None:
        params["api_secret"] = secret
    if since is not None:
        params["since"] = since
    params.update(extra or {})
    where = urlsplit(node.endpoints()["ws"])
    url = f"ws://{host or where.netloc.rsplit(':', 1)[0]}:{where.port}/"
    url += "?" + urlencode(params) if params else ""
    factory = _ClientFactory(url, origin=origin, headers=headers)
    factory.opened = defer.Deferred()
    connector = reactor.connectTCP(where.hostname, where.port, factory)
    case.addCleanup(_close_ws, connector)
    return factory.opened.addTimeout(2 * WAIT, reactor)


def _close_ws(connector):
    proto = getattr(connector, "transport", None)
    proto = getattr(proto, "protocol", None)
    closed = getattr(proto, "closed", None)
    if closed is None or closed.called:
        connector.disconnect()
        return None
    proto.sendClose()
    closed.addTimeout(2, reactor)
    closed.addErrback(lambda _: connector.disconnect())
    return closed


# --- misc --------------------------------------------------------------------------


def pending_calls() -> set:
    """The reactor's pending delayed calls, without trial's own per-test timeout."""
    return {call for call in reactor.getDelayedCalls() if "TestCase._run" not in getattr(call.func, "__qualname__", "")}


def stored_settings(node) -> dict:
    """The values in the node's settings file, as written on disk."""
    with open(node.basedir.settings_file, encoding="utf-8") as handle:
        return json.load(handle)["values"]


def wait(seconds: float) -> defer.Deferred:
    """A Deferred firing after ``seconds`` of real time (kept short: only for timers under test)."""
    return deferLater(reactor, seconds, lambda: None)


class NodeTestCase(unittest.TestCase):
    """A started node with fake services (``self.node``); ``overrides`` are settings it starts with."""

    overrides: dict = {}

    @defer.inlineCallbacks
    def setUp(self):
        self.node = yield start_node(self, overrides=self.overrides)
        yield self.connect_client()

    def connect_client(self) -> defer.Deferred | None:
        """Connect the test's client to ``self.node`` (none here); may return a Deferred."""
        return None

    def record_stop_and_restart(self, delay: float | None = 0.01) -> list[str]:
        """Record "stop" / "restart" in the returned list where the node would stop or restart its process.

        ``delay`` replaces the seconds process_stop / process_restart wait before they act (None: keep them).
        """
        if delay is not None:
            self.patch(api_module, "STOP_DELAY", delay)
        calls: list[str] = []
        self.node.on_stop_requested = lambda: calls.append("stop")
        self.node.on_restart_requested = lambda: calls.append("restart")
        return calls


class IdleClient(Protocol):
    """A client that connects and says nothing; ``lost`` fires when the other side closes the connection."""

    def __init__(self) -> None:
        self.lost: defer.Deferred = defer.Deferred()

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


def connect_idle(port: int) -> defer.Deferred:
    """An :class:`IdleClient` connected to ``127.0.0.1:port`` (a Deferred of it)."""
    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), IdleClient())


def wait_until(check, what: str = "", timeout: float = 5.0, step: float = 0.005) -> defer.Deferred:
    """Poll ``check`` on the reactor until it answers something true; fires with that answer.

    ``check`` may return a Deferred. Fails with an AssertionError naming ``what`` after
    ``timeout`` seconds. For things that happen over real sockets: a fixed wait is a race
    on a loaded machine.
    """

    async def poll():
        waited = 0.0
        while True:
            result = check()
            if isinstance(result, defer.Deferred):
                result = await result
            if result:
                return result
            if waited > timeout:
                raise AssertionError(f"timed out after {timeout}s waiting for {what or check}")
            await deferLater(reactor, step, lambda: None)
            waited += step

    return defer.Deferred.fromCoroutine(poll())
