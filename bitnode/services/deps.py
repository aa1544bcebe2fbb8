"""Declared dependencies between services: resolving them, and a service's view of its neighbours.

A service class declares ``requires`` and ``optional`` (key -> service class
or port, see :class:`~bitnode.services.base.Service`). :func:`resolve` turns
the declarations of a node's service classes into a :class:`DependencyGraph`
of service names; the driver orders start-up from it and gives every service
a :class:`Deps` (``self.deps.gateway``) and a :class:`Lifecycle`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from bitnode.services.base import Service


@dataclass
class DependencyGraph:
    """Who needs whom among one node's services, by service name.

    ``required[name]`` / ``optional[name]`` map the declaring service's keys
    to the names of the services that stand for them (an optional
    dependency nobody provides is left out); ``order`` lists the names so
    that every service comes after all of its dependencies.
    """

    classes: dict[str, type[Service]] = field(default_factory=dict)
    required: dict[str, dict[str, str]] = field(default_factory=dict)
    optional: dict[str, dict[str, str]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)

    def depends(self, name: str) -> list[str]:
        """The services ``name`` requires, in declaration order."""
        return list(dict.fromkeys(self.required[name].values()))

    def uses(self, name: str) -> list[str]:
        """The services ``name`` uses when they run (optional dependencies)."""
        return list(dict.fromkeys(self.optional[name].values()))

    def dependents(self, name: str) -> list[str]:
        """The services that require ``name``, in start-up order."""
        return [other for other in self.order if name in self.required[other].values()]

    def users(self, name: str) -> list[str]:
        """The services that use ``name`` optionally, in start-up order."""
        return [other for other in self.order if name in self.optional[other].values()]


def is_service_class(kind: type) -> bool:
    """Whether a declared dependency names a service (rather than a port some service provides)."""
    from bitnode.services.base import Service

    return isinstance(kind, type) and issubclass(kind, Service)


def describe(kind: type) -> str:
    """A declared dependency as text: the service name, or the port's class name."""
    return kind.name if is_service_class(kind) else kind.__name__


def resolve(classes: Iterable[type[Service]]) -> DependencyGraph:
    """The dependency graph of a node's service classes.

    Raises ValueError on a missing or repeated name, a required dependency
    that no service of the node stands for, a port provided twice, or a
    cycle (optional dependencies included: they order start-up too).
    """
    graph = DependencyGraph()
    for cls in classes:
        if not cls.name or cls.name in graph.classes:
            raise ValueError(f"service class {cls.__name__} has a missing or repeated name {cls.name!r}")
        graph.classes[cls.name] = cls

    def stand_in(kind: type) -> str | None:
        if is_service_class(kind):
            return kind.name if kind.name in graph.classes else None
        providers = [name for name, cls in graph.classes.items() if kind in cls.provides]
        if len(providers) > 1:
            raise ValueError(f"{kind.__name__} is provided by more than one service: {', '.join(providers)}")
        return providers[0] if providers else None

    for name, cls in graph.classes.items():
        graph.required[name] = {}
        for key, kind in cls.requires.items():
            found = stand_in(kind)
            if found is None:
                raise ValueError(f"{name} depends on unknown service {describe(kind)}")
            graph.required[name][key] = found
        graph.optional[name] = {}
        for key, kind in cls.optional.items():
            found = stand_in(kind)
            if found is not None:
                graph.optional[name][key] = found
    marks: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        if marks.get(name) == "done":
            return
        if marks.get(name) == "visiting":
            raise ValueError("service dependency cycle: " + " -> ".join(path + (name,)))
        marks[name] = "visiting"
        for dep in (*graph.required[name].values(), *graph.optional[name].values()):
            visit(dep, path + (name,))
        marks[name] = "done"
        graph.order.append(name)

    for name in graph.classes:
        visit(name, ())
    return graph


class Deps:
    """One service's neighbours: ``deps.<key>`` for every key its class declares.

    A required neighbour is its service object (whatever its state: while the
    owner runs, its required neighbours run). An optional one is the service
    while it is ON and ``None`` otherwise — or always ``None`` when no service
    of the node provides it.
    """

    def __init__(self, owner: str, required: dict[str, str], optional: dict[str, str],
                 declared_optional: Iterable[str], service: Callable[[str], Service], is_on: Callable[[str], bool]):
        self._owner = owner
        self._required = dict(required)
        self._optional = dict(optional)
        self._declared_optional = frozenset(declared_optional)
        self._service = service
        self._is_on = is_on

    @classmethod
    def given(cls, owner: str = "a test", **neighbours: Any) -> Deps:
        """Neighbours handed in directly (a test's fakes, ``None`` for one that is off), without a driver."""
        return cls(owner, {key: key for key in neighbours}, {}, (), neighbours.__getitem__,
                   lambda key: neighbours[key] is not None)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        if key in self._required:
            return self._service(self._required[key])
        if key in self._optional:
            name = self._optional[key]
            return self._service(name) if self._is_on(name) else None
        if key in self._declared_optional:
            return None
        raise AttributeError(f"{self._owner} declares no dependency {key!r} (add it to requires or optional)")

    def installed(self, key: str) -> Any:
        """The neighbour declared as ``key`` in whatever state (None when the node has none).

        For registrations that must outlive the neighbour's restarts (e.g. a
        part of the catalog backup), not for calls that need it running.
        """
        name = self._required.get(key) or self._optional.get(key)
        if name is None and key not in self._declared_optional:
            raise AttributeError(f"{self._owner} declares no dependency {key!r}")
        return self._service(name) if name is not None else None

    def is_on(self, key: str) -> bool:
        """Whether the neighbour declared as ``key`` is running."""
        name = self._required.get(key) or self._optional.get(key)
        if name is None and key not in self._declared_optional:
            raise AttributeError(f"{self._owner} declares no dependency {key!r}")
        return name is not None and self._is_on(name)


class Lifecycle:
    """What a service may do about its own state: read it, and ask the driver to start or restart it.

    (The gateway starts itself once an identity exists, and restarts when it
    is erased.)
    """

    def __init__(self, name: str, is_on: Callable[[], bool], enabled: Callable[[], bool],
                 start: Callable[[], Any], restart: Callable[[], Any]):
        self.name = name
        self.is_on = is_on
        self.enabled = enabled
        self.start = start
        self.restart = restart
