"""What a service is: a named part of a node with declared dependencies and an on/off switch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from twisted.internet import defer

from bitnode.main.options import BOOLEAN, Option

if TYPE_CHECKING:  # pragma: no cover
    from bitnode.services.context import NodeContext
    from bitnode.services.deps import Deps, Lifecycle


class Service:
    """Base class of node services.

    Subclasses set ``name`` (``service_xxx``), ``enabled_by_default`` and
    ``description``, declare their neighbours, and override :meth:`start` /
    :meth:`stop`, which may return Deferreds:

    - ``requires = {"gateway": GatewayService}``: services that must be ON
      before this one starts (the driver orders start-up from them, keeps
      this one ``DEPENDS_OFF`` with the reason while one is off, and stops
      this one first when one stops);
    - ``optional = {"suppliers": SupplierProvider}``: neighbours used when
      they run; they only order start-up;
    - ``provides = (SupplierProvider,)``: the ports (small Protocols another
      service declares by type) this service implements.

    A dependency is named by a service class (any service of that ``name``
    stands for it, e.g. a test's fake) or by a port that one service of the
    node ``provides``. The service reaches them as ``self.deps.<key>``: a
    required one is the service object, an optional one is the service while
    it is ON and ``None`` otherwise. The rest of the node is ``self.ctx``
    (:class:`~bitnode.services.context.NodeContext`: settings, clock, events,
    run_in_thread, automats, basedir ...).
    """

    name: str = ""
    requires: ClassVar[Mapping[str, type]] = {}
    optional: ClassVar[Mapping[str, type]] = {}
    provides: ClassVar[tuple[type, ...]] = ()
    enabled_by_default: bool = True
    description: str = ""
    #: Settings this service owns (keys under :meth:`config_prefix`), registered by the driver.
    options: tuple[Option, ...] = ()

    #: Set by the service driver right after construction.
    deps: Deps
    lifecycle: Lifecycle

    def __init__(self, ctx: NodeContext):
        self.ctx = ctx

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
