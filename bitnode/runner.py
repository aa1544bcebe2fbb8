"""Glue between twistd and a Node: build it, apply ``--set`` options, stop cleanly on signals."""

from __future__ import annotations

import signal
from typing import Sequence

from twisted.application.service import IService
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from bitnode.errors import BitnodeError
from bitnode.node import build_node

log = Logger(namespace="bitnode.runner")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def parse_setting(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` to (key, value text); ValueError if there is no key."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def make_service(basedir: str | None, settings: Sequence[tuple[str, str]] = (), reactor=None) -> IService:
    """The Node for ``twistd bitnode``, on the global reactor unless one is given.

    ``settings`` are (key, value text) pairs stored before the node starts,
    validated like ``config_set``; a bad one ends twistd with a message
    (SystemExit) before anything listens. SIGTERM and SIGINT stop the node
    cleanly and twistd then exits with status 0.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    node = build_node(basedir, reactor)
    for key, value in settings:
        try:
            node.settings.set(key, value)
        except BitnodeError as err:
            raise SystemExit(f"bitnode: --set {key}={value}: {err}") from None
    reactor.callWhenRunning(install_stop_signals, reactor)
    return node


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
