"""The local API server: HTTP and WebSocket listeners for one node, as a child service of the Node.

:class:`ApiServer` owns everything the API needs that the node does not: the
secret (``metadata/apisecret``, created at first start), the
:class:`~bitnode.interface.api.API` methods and their
:class:`~bitnode.interface.dispatch.Dispatcher`, the rate limiter, the two
listening ports (``interface/api/http-port``, ``interface/api/ws-port`` on
``interface/api/interface``) and the connections they accepted, and
``metadata/endpoints.json`` (where a client finds the API: written once
listening, removed when stopped).

The composition root (:func:`bitnode.app.build_node`) makes it a child of the
node: the node starts it before any service (a port in use fails the node's
start before anything runs) and stops it after every service (clients are
answered while services stop; waiting long-polls are answered before their
connections close).
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.application.service import Service as TwistedService
from twisted.internet import defer
from twisted.logger import Logger, LogLevel

from bitnode.interface.api import API
from bitnode.interface.auth import ApiGuard, RateLimiter, load_or_create_secret
from bitnode.interface.dispatch import Dispatcher
from bitnode.interface.limits import ApiLimits
from bitnode.interface.rest import ApiResource, ApiSite
from bitnode.interface.websocket import ApiWebSocketFactory
from bitnode.main import netns
from bitnode.main.connections import ConnectionSet
from bitnode.main.fileutil import atomic_write
from bitnode.main.logs import DEBUG_LEVEL_KEY, level_for

#: The name the server has among the node's child services.
NAME = "api"


class ApiServer(TwistedService):
    """The node's local HTTP + WebSocket API; see the module docstring."""

    name = NAME
    log = Logger()

    def __init__(self, node: Any):
        self.node = node
        settings = node.settings
        self.api = API(node, self)
        # API settings read on every request are cached here and kept current by settings listeners.
        self._log_api_calls = bool(settings.get("logs/api-calls"))
        self._api_debug = level_for(settings.get(DEBUG_LEVEL_KEY)) is LogLevel.debug
        self._site: ApiSite | None = None
        self._limiter = RateLimiter(node.reactor, settings.get("interface/api/rate-limit"),
                                    settings.get("interface/api/rate-burst"))
        settings.add_listener("logs/api-calls", self._settings_changed)
        settings.add_listener(DEBUG_LEVEL_KEY, self._settings_changed)
        settings.add_listener("interface/api/rate-", self._settings_changed)
        self.dispatcher = Dispatcher(self.api, log_calls=lambda: self._log_api_calls,
                                     limits=ApiLimits.from_settings(settings))
        self.secret = ""
        self._http_port: Any = None
        self._ws_port: Any = None
        self._connections: list[ConnectionSet] = []

    def endpoints(self) -> dict:
        """The URLs of the API (known once listening)."""
        iface = self.node.settings.get("interface/api/interface")
        host = f"[{iface}]" if ":" in iface else iface
        out = {}
        if self._http_port is not None:
            out["http"] = f"http://{host}:{self._http_port.getHost().port}/"
        if self._ws_port is not None:
            out["ws"] = f"ws://{host}:{self._ws_port.getHost().port}/"
        return out

    # --- lifecycle -----------------------------------------------------------------

    def startService(self) -> None:
        """Read (or create) the secret, listen, and say where in ``metadata/endpoints.json``."""
        self.secret = load_or_create_secret(self.node.basedir.api_secret_file)
        self._listen()
        self._write_endpoints()
        super().startService()

    @defer.inlineCallbacks
    def stopService(self):
        """Stop listening, answer waiting long-polls, close the connections, remove ``endpoints.json``."""
        yield defer.maybeDeferred(super().stopService)
        for port in (self._http_port, self._ws_port):
            if port is not None:
                yield defer.maybeDeferred(port.stopListening)
        self._http_port = self._ws_port = None
        # Answer waiting long-polls before the connections they would be written to are closed.
        self.node.events.close()
        yield defer.gatherResults([open_ones.close_all(self.node.clock, grace=2.0)
                                   for open_ones in self._connections])
        self._connections = []
        self._site = None
        try:
            os.unlink(self.node.basedir.endpoints_file)
        except FileNotFoundError:
            pass

    def _listen(self) -> None:
        node = self.node
        iface = node.settings.get("interface/api/interface")
        guard = ApiGuard(self.secret, extra_hosts=(iface,))
        site = self._site = ApiSite(ApiResource(self.dispatcher, guard, self._limiter), reactor=node.reactor)
        site.log_requests = self._log_api_calls
        ws_factory = ApiWebSocketFactory(self.dispatcher, guard, self._limiter, node.events, node.reactor,
                                         debug_enabled=lambda: self._api_debug, secrets=lambda: (self.secret,))
        ws_factory.noisy = False
        # So stopService can close the connections still open, not only the listening ports.
        self._connections = [site.connections, ws_factory.connections]
        self._http_port = node.reactor.listenTCP(node.settings.get("interface/api/http-port"), site, interface=iface)
        try:
            self._ws_port = node.reactor.listenTCP(node.settings.get("interface/api/ws-port"), ws_factory,
                                                   interface=iface)
        except Exception:
            self._http_port.stopListening()
            self._http_port = None
            raise

    def _settings_changed(self, key, old, new) -> None:
        if key == DEBUG_LEVEL_KEY:
            self._api_debug = level_for(new) is LogLevel.debug
        elif key == "logs/api-calls":
            self._log_api_calls = bool(new)
            if self._site is not None:
                self._site.log_requests = self._log_api_calls
        else:
            settings = self.node.settings
            self._limiter.configure(settings.get("interface/api/rate-limit"), settings.get("interface/api/rate-burst"))

    def _write_endpoints(self) -> None:
        data = dict(self.endpoints(), pid=os.getpid(), basedir=self.node.basedir.root)
        namespace = netns.current_name()
        if namespace is not None:
            # the API listens on 127.0.0.1 of that namespace: clients must connect from inside it
            data["netns"] = namespace
        atomic_write(self.node.basedir.endpoints_file, json.dumps(data).encode("utf-8"), mode=0o600)
