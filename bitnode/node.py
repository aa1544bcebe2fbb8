"""The Node: one user's node, owning all of its state and its lifecycle, as a Twisted MultiService.

Nothing a node knows lives at module level, so any number of Nodes can run in
one reactor (the in-process test network relies on that). The node holds the
basedir, settings, event bus, automat registry, thread pool and the service
driver, and hands its services a :class:`~bitnode.services.context.NodeContext`.
It knows nothing of the API: the composition root (:func:`bitnode.app.build_node`)
adds the API server as a child service, which the node starts before its
services and stops after them.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterable

from twisted.application.service import MultiService
from twisted.application.service import Service as TwistedService
from twisted.internet import defer
from twisted.internet.error import ReactorNotRunning
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from automats import Registry
from bitnode.main import network_file
from bitnode.main.basedir import Basedir
from bitnode.main.events import EventBus
from bitnode.main.settings import Settings
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.services.driver import ServiceDriver


class Node(MultiService):
    """One node: settings, services, automats, event bus and thread pool (the API is a child service)."""

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
        self.service_driver = ServiceDriver(self.context, service_classes,
                                            on_state_changed=lambda change: self.events.publish(
                                                "service-state-changed", change))
        #: The network this node joins (its seeds, identity and STUN servers), see main/network_file.py.
        self.network = network_file.NetworkFile()
        self.ready = False
        self.started_at = 0.0
        self.on_stop_requested: Callable[[], None] = self._stop_reactor
        self.on_restart_requested: Callable[[], None] = self._restart_process
        #: "stop" or "restart" once the process was asked to end (later requests are no-ops), else None.
        self.end_requested: str | None = None
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
        """The URLs this node listens at for its user: those of its child services that have ``endpoints()``."""
        out: dict = {}
        for child in self:
            endpoints = getattr(child, "endpoints", None)
            if endpoints is not None:
                out.update(endpoints())
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
        """Create the basedir, start the child services (the API listens), then the enabled services.

        A child that cannot start (a port in use) fails the node's start before
        anything else runs.
        """
        self.basedir.create()
        started = []
        try:
            for child in list(self):
                child.startService()
                started.append(child)
        except BaseException:
            for child in reversed(started):
                child.stopService()
            raise
        TwistedService.startService(self)
        self.threadpool.start()
        self.started_at = self.clock.seconds()
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
        """Stop services in reverse order, then the child services (the API), the event bus and the thread pool."""
        self.ready = False
        TwistedService.stopService(self)
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
        # Clients are answered while the services stop; the API closes after them.
        for child in reversed(list(self)):
            yield defer.maybeDeferred(child.stopService)
        self.events.close()
        self.threadpool.stop()

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
