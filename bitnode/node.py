"""The Node: one user's node, owning all of its state, as a Twisted MultiService.

Nothing a node knows lives at module level, so any number of Nodes can run in
one reactor (the in-process test network relies on that). Build one with
:func:`build_node`; ``twistd -n bitnode`` does the same.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Callable, Iterable

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.error import ReactorNotRunning
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel
from twisted.python.threadpool import ThreadPool

from automats import Registry
from bitnode.interface.api import API
from bitnode.interface.auth import ApiGuard, RateLimiter, load_or_create_secret
from bitnode.interface.dispatch import Dispatcher
from bitnode.interface.limits import ApiLimits
from bitnode.interface.rest import ApiResource, ApiSite
from bitnode.interface.websocket import ApiWebSocketFactory
from bitnode.main import network_file
from bitnode.main.basedir import Basedir
from bitnode.main.connections import ConnectionSet
from bitnode.main.events import EventBus
from bitnode.main.fileutil import atomic_write
from bitnode.main.logs import DEBUG_LEVEL_KEY, level_for
from bitnode.main.schema import SCHEMA
from bitnode.main.settings import Settings
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.services.driver import ServiceDriver


class Node(MultiService):
    """One node: settings, services, automats, event bus, thread pool and the local API."""

    log = Logger()

    def __init__(self, basedir: Basedir, reactor, settings: Settings, service_classes: Iterable[type[Service]]):
        super().__init__()
        self.basedir = basedir
        self.reactor = reactor
        self.clock = reactor
        self.settings = settings
        self.events = EventBus(reactor, settings.get("interface/api/event-buffer"))
        self.automats = Registry()
        self.automats.add_listener(self._publish_state_change)
        self.threadpool = ThreadPool(minthreads=0, maxthreads=settings.get("process/worker-threads"),
                                     name=f"bitnode-{os.path.basename(basedir.root)}")
        self.context = NodeContext(basedir=basedir, settings=settings, clock=reactor, reactor=reactor,
                                   events=self.events, automats=self.automats, run_in_thread=self.run_in_thread,
                                   call_later=self.call_later)
        self.service_driver = ServiceDriver(self.context, service_classes)
        self.api = API(self)
        # API settings read on every request are cached here and kept current by settings listeners.
        self._log_api_calls = bool(settings.get("logs/api-calls"))
        self._api_debug = level_for(settings.get(DEBUG_LEVEL_KEY)) is LogLevel.debug
        self._api_site: ApiSite | None = None
        self._limiter = RateLimiter(reactor, settings.get("interface/api/rate-limit"),
                                    settings.get("interface/api/rate-burst"))
        settings.add_listener("logs/api-calls", self._api_settings_changed)
        settings.add_listener(DEBUG_LEVEL_KEY, self._api_settings_changed)
        settings.add_listener("interface/api/rate-", self._api_settings_changed)
        self.dispatcher = Dispatcher(self.api, log_calls=lambda: self._log_api_calls,
                                     limits=ApiLimits.from_settings(settings))
        self.api_secret = ""
        #: The network this node joins (its seeds, identity and STUN servers), see main/network_file.py.
        self.network = network_file.NetworkFile()
        self.ready = False
        self.started_at = 0.0
        self.on_stop_requested: Callable[[], None] = self._stop_reactor
        self.on_restart_requested: Callable[[], None] = self._restart_process
        #: "stop" or "restart" once the process was asked to end (later requests are no-ops), else None.
        self.end_requested: str | None = None
        self._http_port = None
        self._ws_port = None
        self._connections: list[ConnectionSet] = []
        self._later: set = set()
        self._startup: defer.Deferred | None = None

    # --- helpers other parts use ------------------------------------------------

    def run_in_thread(self, fn, *args, **kwargs) -> defer.Deferred:
        """Run CPU or disk work in this node's bounded thread pool."""
        return deferToThreadPool(self.reactor, self.threadpool, fn, *args, **kwargs)

    def call_later(self, delay: float, fn: Callable, *args, **kwargs):
        """``clock.callLater`` for work that must not outlive the node: cancelled by stopService."""

        def run():
            self._later.discard(call)
            fn(*args, **kwargs)

        call = self.clock.callLater(delay, run)
        self._later.add(call)
        return call

    def endpoints(self) -> dict:
        """The URLs of this node's API (known once listening)."""
        iface = self.settings.get("interface/api/interface")
        host = f"[{iface}]" if ":" in iface else iface
        out = {}
        if self._http_port is not None:
            out["http"] = f"http://{host}:{self._http_port.getHost().port}/"
        if self._ws_port is not None:
            out["ws"] = f"ws://{host}:{self._ws_port.getHost().port}/"
        return out

    def request_stop(self, delay: float = 0.0) -> str | None:
        """Ask the process to stop (process_stop) after ``delay`` seconds.

        The process ends once: a request after a stop or restart was asked for
        is a no-op (a second stop would raise ReactorNotRunning, a second
        restart exec twice). Returns None for the first request, else what is
        already under way ("stop" or "restart").
        """
        return self._request_end("stop", delay)

    def request_restart(self, delay: float = 0.0) -> str | None:
        """Ask the process to restart (process_restart) after ``delay`` seconds; see :meth:`request_stop`."""
        return self._request_end("restart", delay)

    def _request_end(self, what: str, delay: float) -> str | None:
        earlier = self.end_requested
        if earlier is not None:
            self.log.info("{what} requested through the API while a {earlier} is under way: ignored",
                          what=what, earlier=earlier)
            return earlier
        self.end_requested = what
        self.log.info("{what} requested through the API", what=what)
        self.call_later(delay, self._end_now, what)
        return None

    def _end_now(self, what: str) -> None:
        # The hook is looked up now, not when requested: tests replace it.
        (self.on_stop_requested if what == "stop" else self.on_restart_requested)()

    # --- lifecycle -----------------------------------------------------------------

    def startService(self) -> None:
        """Create the basedir, open the API, then start the enabled services."""
        self.basedir.create()
        self.api_secret = load_or_create_secret(self.basedir.api_secret_file)
        self._listen()
        self.threadpool.start()
        self._write_endpoints()
        self.started_at = self.clock.seconds()
        super().startService()
        self._startup = self.service_driver.start_all()
        self._startup.addCallback(self._started)
        self._startup.addErrback(lambda f: self.log.failure("starting services failed", f))

    def when_ready(self) -> defer.Deferred:
        """Fires once start-up has finished (services tried)."""
        if self.ready:
            return defer.succeed(self)
        d = defer.Deferred()
        self._startup.addBoth(lambda result: (d.callback(self), result)[1])
        return d

    def _started(self, _):
        self.ready = True
        self.events.publish("node-ready", {"api": self.endpoints()})
        self.log.info("node ready; API at {api}", api=self.endpoints())

    @defer.inlineCallbacks
    def stopService(self):
        """Stop services in reverse order, close the API, the event bus and the thread pool."""
        self.ready = False
        yield defer.maybeDeferred(super().stopService)
        if self._startup is not None and not self._startup.called:
            yield self._startup
        yield self.service_driver.stop_all()
        for call in list(self._later):
            if call.active():
                call.cancel()
        self._later.clear()
        for machine in list(self.automats):
            # Its service should have destroyed it; its timers must not fire on a stopped node.
            self.log.warn("automat {id} still running after its service stopped; destroying it", id=machine.id)
            machine.destroy()
        for port in (self._http_port, self._ws_port):
            if port is not None:
                yield defer.maybeDeferred(port.stopListening)
        self._http_port = self._ws_port = None
        # Answer waiting long-polls before the connections they would be written to are closed.
        self.events.close()
        yield defer.gatherResults([open_ones.close_all(self.clock, grace=2.0) for open_ones in self._connections])
        self._connections = []
        self._api_site = None
        self.threadpool.stop()
        try:
            os.unlink(self.basedir.endpoints_file)
        except FileNotFoundError:
            pass

    def _listen(self) -> None:
        iface = self.settings.get("interface/api/interface")
        guard = ApiGuard(self.api_secret, extra_hosts=(iface,))
        site = self._api_site = ApiSite(ApiResource(self.dispatcher, guard, self._limiter), reactor=self.reactor)
        site.log_requests = self._log_api_calls
        ws_factory = ApiWebSocketFactory(self.dispatcher, guard, self._limiter, self.events, self.reactor,
                                         debug_enabled=lambda: self._api_debug, secrets=lambda: (self.api_secret,))
        ws_factory.noisy = False
        # So stopService can close the connections still open, not only the listening ports.
        self._connections = [site.connections, ws_factory.connections]
        self._http_port = self.reactor.listenTCP(self.settings.get("interface/api/http-port"), site, interface=iface)
        try:
            self._ws_port = self.reactor.listenTCP(self.settings.get("interface/api/ws-port"), ws_factory,
                                                   interface=iface)
        except Exception:
            self._http_port.stopListening()
            self._http_port = None
            raise

    def _api_settings_changed(self, key, old, new) -> None:
        if key == DEBUG_LEVEL_KEY:
            self._api_debug = level_for(new) is LogLevel.debug
        elif key == "logs/api-calls":
            self._log_api_calls = bool(new)
            if self._api_site is not None:
                self._api_site.log_requests = self._log_api_calls
        else:
            self._limiter.configure(self.settings.get("interface/api/rate-limit"),
                                    self.settings.get("interface/api/rate-burst"))

    def _write_endpoints(self) -> None:
        data = dict(self.endpoints(), pid=os.getpid(), basedir=self.basedir.root)
        atomic_write(self.basedir.endpoints_file, json.dumps(data).encode("utf-8"), mode=0o600)

    def _publish_state_change(self, machine, old_state, new_state, event) -> None:
        self.events.publish("automat-state-changed", {
            "id": machine.id, "name": machine.name, "old_state": old_state, "new_state": new_state,
            "event": event,
        })

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            try:
                self.reactor.stop()
            except ReactorNotRunning:
                pass  # already stopping for another reason (a signal): that stop serves this request too

    def _restart_process(self) -> None:
        # orig_argv keeps "-m module" (sys.argv[0] alone would be the module file, which may not run as a script).
        argv = list(sys.orig_argv)
        pid_file = self.basedir.pid_file

        def exec_again():
            # execv keeps our pid: a pid file naming us would make twistd think it is already running.
            try:
                with open(pid_file) as handle:
                    if handle.read().strip() == str(os.getpid()):
                        os.unlink(pid_file)
            except OSError:
                pass
            os.execv(sys.executable, argv)

        self.reactor.addSystemEventTrigger("after", "shutdown", exec_again)
        self._stop_reactor()


def default_services() -> list[type[Service]]:
    """The services every node has."""
    from bitnode.services.catalog import SERVICES

    return list(SERVICES)


def build_node(basedir: str | None = None, reactor=None, overrides: dict | None = None,
               service_classes: Iterable[type[Service]] | None = None) -> Node:
    """Wire a Node: basedir layout, settings (with ``overrides``), services.

    The node's network file (``config/network.json``, else the shipped one)
    gives the defaults of its server settings; an unusable one raises
    :class:`~bitnode.main.network_file.BadNetworkFile`.

    ``reactor`` defaults to the global reactor; tests may pass overrides such
    as ``{"interface/api/http-port": 0, "interface/api/ws-port": 0}`` to get
    free ports.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    where = Basedir.at(basedir)
    where.create()
    network = network_file.for_node(where.config)
    settings = Settings(where.settings_file, SCHEMA, overrides, defaults=network.setting_defaults())
    classes = list(service_classes) if service_classes is not None else default_services()
    node = Node(where, reactor, settings, classes)
    node.network = network
    return node
