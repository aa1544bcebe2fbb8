"""What a service is: a named part of a node with dependencies and an on/off switch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from bitnode.main.options import BOOLEAN, Option

if TYPE_CHECKING:  # pragma: no cover
    from bitnode.node import Node


class Service:
    """Base class of node services.

    Subclasses set ``name`` (``service_xxx``), ``depends_on`` (names),
    ``enabled_by_default`` and ``description``, and override :meth:`start` /
    :meth:`stop`, which may return Deferreds. A service reaches the rest of
    the node only through ``self.node``; other parts reach a service through
    ``node.service_driver.get(name)`` (and check ``is_on(name)`` first).
    """

    name: str = ""
    depends_on: tuple[str, ...] = ()
    enabled_by_default: bool = True
    description: str = ""
    #: Settings this service owns (keys under :meth:`config_prefix`), registered by the driver.
    options: tuple[Option, ...] = ()

    def __init__(self, node: Node):
        self.node = node

    @classmethod
    def config_prefix(cls) -> str:
        """Settings folder of this service: ``service_private_messages`` → ``services/private-messages``."""
        return "services/" + cls.name.removeprefix("service_").replace("_", "-")

    @classmethod
    def enabled_key(cls) -> str:
        """The settings key that switches this service on and off."""
        return cls.config_prefix() + "/enabled"

    @classmethod
    def enabled_option(cls) -> Option:
        """The schema entry of :meth:`enabled_key`."""
        return Option(cls.enabled_key(), BOOLEAN, cls.enabled_by_default, f"Run {cls.name}: {cls.description}")

    def start(self) -> defer.Deferred | None:
        """Bring the service up. Raise or fail the Deferred to report a failed start."""
        return None

    def stop(self) -> defer.Deferred | None:
        """Bring the service down, releasing ports, timers and files."""
        return None

    def status(self) -> dict[str, Any]:
        """Extra facts for service_info (counters, ports...)."""
        return {}
