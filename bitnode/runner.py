"""Glue between twistd and a Node: build it, apply ``--set`` options, filter the log, stop cleanly on signals."""

from __future__ import annotations

import signal
from typing import Sequence

from twisted.application.service import IService, MultiService
from twisted.internet.error import ReactorNotRunning
from twisted.logger import ILogObserver, LegacyLogObserverWrapper, Logger

from bitnode.app import build_node
from bitnode.errors import BitnodeError
from bitnode.interface.auth import load_or_create_secret
from bitnode.main import network_file
from bitnode.main.basedir import Basedir
from bitnode.main.logs import LogControl

log = Logger(namespace="bitnode.runner")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def parse_setting(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` to (key, value text); ValueError if there is no key."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def make_service(basedir: str | None, settings: Sequence[tuple[str, str]] = (), reactor=None,
                 log_control: LogControl | None = None, network: str | None = None) -> IService:
    """The Node for ``twistd bitnode``, on the global reactor unless one is given.

    ``network`` is a network file to install as the node's own first
    (``config/network.json``, see :mod:`bitnode.main.network_file`).
    ``settings`` are (key, value text) pairs stored before the node starts,
    validated like ``config_set``; a bad one (or a bad network file) ends
    twistd with a message (SystemExit) before anything listens. SIGTERM and SIGINT stop the node
    cleanly and twistd then exits with status 0. ``log_control``, if given,
    follows the node's ``logs/debug-level`` and redacts its API secret.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    try:
        if network:
            network_file.install(Basedir.at(basedir).config, network)
        node = build_node(basedir, reactor)
    except BitnodeError as err:
        raise SystemExit(f"bitnode: {err}") from None
    for key, value in settings:
        try:
            node.settings.set(key, value)
        except BitnodeError as err:
            raise SystemExit(f"bitnode: --set {key}={value}: {err}") from None
    if log_control is not None:
        log_control.follow(node.settings)
        # The node reads the same file when it starts; created here first, it is redacted from the first line.
        log_control.add_secret(load_or_create_secret(node.basedir.api_secret_file))
    reactor.callWhenRunning(install_stop_signals, reactor)
    return node


def with_process_log(node: IService, server_options, log_control: LogControl) -> IService:
    """The service twistd runs: ``node``, under a root that gives twistd the process's log observer.

    twistd writes its log where ``--logfile``/``--syslog``/``-n`` say; the
    observer it would build for that is wrapped by ``log_control`` (level and
    redaction) and set on the twistd application, where twistd looks for it
    before it starts logging.
    """
    root = _ProcessRoot(log_control.wrap(twistd_log_observer(server_options)))
    node.setServiceParent(root)
    return root


def twistd_log_observer(server_options) -> ILogObserver:
    """The observer twistd itself would log to for ``server_options`` (file, stdout or syslog)."""
    from twisted.scripts._twistd_unix import UnixAppLogger

    observer = UnixAppLogger(server_options)._getLogObserver()
    return observer if ILogObserver.providedBy(observer) else LegacyLogObserverWrapper(observer)


class _ProcessRoot(MultiService):
    """Holds the node; sets the process's log observer on the twistd application it is added to."""

    def __init__(self, observer: ILogObserver):
        super().__init__()
        self._observer = observer

    def setServiceParent(self, parent) -> None:
        """twistd's AppLogger takes the application's ILogObserver component when it starts logging."""
        set_component = getattr(parent, "setComponent", None)
        if set_component is not None:
            set_component(ILogObserver, self._observer)
        super().setServiceParent(parent)


def install_stop_signals(reactor) -> None:
    """Replace Twisted's SIGTERM/SIGINT handlers by ones that stop the reactor and nothing else.

    Twisted's handlers make twistd kill itself with the same signal after
    shutdown (exit status -15), which supervisors and scripts read as a crash
    even though the node stopped cleanly. Called once the reactor runs, so it
    comes after the reactor installed its own.
    """

    def stop(name: str) -> None:
        log.info("{signal} received: stopping", signal=name)
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # a second signal while already stopping

    def handler(signum, _frame) -> None:
        # Signal handlers run between bytecodes: hand the work to the reactor loop.
        reactor.callFromThread(stop, signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
