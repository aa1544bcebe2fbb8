"""What a service sees of its node: :class:`NodeContext`.

A service gets the node's shared facilities through this small value — never
the :class:`~bitnode.node.Node` itself — and its neighbour services through
``self.deps`` (:mod:`bitnode.services.deps`). So a service's imports and
constructor say everything it can reach, and a test builds one with a
``NodeContext`` of fakes (``Clock``, a temporary basedir, a run-now thread
function).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import defer

from automats import Registry
from bitnode.main.basedir import Basedir
from bitnode.main.events import EventBus
from bitnode.main.settings import Settings


@dataclass(frozen=True)
class NodeContext:
    """The facilities one node shares with its services.

    :param basedir: where the node keeps its files.
    :param settings: the node's settings (options of every service included).
    :param clock: the injected time (``IReactorTime``); tests pass a ``Clock``.
    :param reactor: for listening and connecting (``IReactorTCP``/``IReactorUDP``).
    :param events: the node's event bus.
    :param automats: the registry every state machine of the node joins.
    :param run_in_thread: ``run_in_thread(fn, *args, **kwargs) -> Deferred``: CPU or disk work off the reactor.
    :param call_later: ``clock.callLater`` for work that must not outlive the node (cancelled when it stops).
    """

    basedir: Basedir
    settings: Settings
    clock: Any
    reactor: Any
    events: EventBus
    automats: Registry
    run_in_thread: Callable[..., defer.Deferred]
    call_later: Callable[..., Any]
