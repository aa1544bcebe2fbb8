"""The service driver: starts services in dependency order and stops them in reverse.

Dependencies are what the service classes declare (``requires``,
``optional``; resolved by :mod:`bitnode.services.deps`): both order
start-up; only a required one keeps a service ``DEPENDS_OFF`` and stops it
when it stops. Every service gets ``deps`` (its neighbours) and
``lifecycle`` right after it is built. Other layers find a service by its
class: :meth:`ServiceDriver.running` (or a 503 saying why not),
:meth:`ServiceDriver.find` (None unless running).

A service whose dependency is off or failed is not skipped silently: its
state says ``DEPENDS_OFF`` with the reason, and a failed start is ``FAILED``
with the error. All operations are serialised so a start and a stop of the
same service cannot interleave.

A start that fails with a typed error (a :class:`~bitnode.errors.BitnodeError`
such as "no identity yet") is an expected condition: it is logged as a
one-line warning with the reason. Any other exception is a bug and is logged
with its traceback.

The ``services/<x>/enabled`` settings are the switches: ``service_start`` /
``service_stop`` set them, and changing one directly (``config_set``)
starts or stops the service the same way, in the background, once the node
has started its services (a change made by the driver itself is not acted
on twice). Switching a service on whose dependencies are not running leaves
it ``DEPENDS_OFF`` with the reason, and it starts when they do.

Decision on a failed explicit ``service_start``: the service stays enabled —
the user asked for it, so it is tried again at the next node start (or
``service_restart``) — while the answer is the 409 with the reason of the
failure, and its state says ``FAILED`` with that reason until then.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

from twisted.internet import defer
from twisted.logger import Logger

from bitnode.errors import BadRequest, BitnodeError, Conflict, NotFound, Timeout, Unavailable
from bitnode.services.base import Service
from bitnode.services.deps import Deps, Lifecycle, describe, is_service_class, resolve

S = TypeVar("S")

OFF, STARTING, ON, STOPPING, FAILED, DEPENDS_OFF = "OFF", "STARTING", "ON", "STOPPING", "FAILED", "DEPENDS_OFF"

STOP_TIMEOUT = 15.0


class _Slot:
    def __init__(self, service: Service, index: int):
        self.service = service
        self.index = index
        self.state = OFF
        self.reason = ""


def dependency_order(services: Iterable[type[Service]]) -> list[type[Service]]:
    """Topologically sort service classes so every service comes after its dependencies (optional ones too).

    Raises ValueError on a missing or repeated name, an unknown dependency or a cycle.
    """
    graph = resolve(services)
    return [graph.classes[name] for name in graph.order]


class ServiceDriver:
    """Owns one node's services and their lifecycle."""

    log = Logger()

    def __init__(self, ctx: Any, service_classes: Iterable[type[Service]],
                 on_state_changed: Callable[[dict], None] | None = None):
        """``ctx`` is the NodeContext handed to every service (the driver uses its settings and clock).

        ``on_state_changed(change)`` hears every state change of a service:
        ``{"name", "old_state", "new_state", "reason"}`` (the node publishes it
        as the event ``service-state-changed``).
        """
        self._on_state_changed = on_state_changed
        settings = self._settings = ctx.settings
        self._clock = ctx.clock
        self._lock = defer.DeferredLock()
        self._slots: dict[str, _Slot] = {}
        self._switches: dict[str, str] = {}  # enabled setting -> service name
        # True between start_all and stop_all: only then do switched settings start or stop services.
        self._running = False
        # True while the driver itself sets a switch (service_start/stop): not a change to act on.
        self._switching = False
        self.graph = resolve(service_classes)
        for index, name in enumerate(self.graph.order):
            cls = self.graph.classes[name]
            settings.register(cls.enabled_option())
            for option in cls.options:
                settings.register(option)
            service = cls(ctx)
            service.deps = Deps(name, self.graph.required[name], self.graph.optional[name], cls.optional,
                                self.get, self.is_on)
            service.lifecycle = self._lifecycle(name)
            self._slots[name] = _Slot(service, index)
            self._switches[cls.enabled_key()] = name
        settings.add_listener("services/", self._switch_changed)

    # --- queries -------------------------------------------------------------

    def names(self) -> list[str]:
        """Service names in dependency order."""
        return list(self._slots)

    def get(self, name: str) -> Service:
        """The service object called ``name``."""
        return self._slot(name).service

    def is_on(self, name: str) -> bool:
        """True when the named service exists and is running."""
        slot = self._slots.get(name)
        return slot is not None and slot.state == ON

    def running(self, kind: type[S]) -> S:
        """The running service of class ``kind`` (or the one providing port ``kind``).

        Otherwise Unavailable (503): ``"<name> is not installed"`` when the
        node has no such service, else ``"<name> is not running (<STATE>[:
        reason])"`` with the state and the reason the driver reports.
        """
        name = self._name_of(kind)
        if name is None:
            raise Unavailable(f"{describe(kind)} is not installed")
        slot = self._slots[name]
        if slot.state == ON:
            return slot.service  # type: ignore[return-value]
        reason = f": {slot.reason}" if slot.reason else ""
        raise Unavailable(f"{name} is not running ({slot.state}{reason})")

    def find(self, kind: type[S]) -> S | None:
        """The service of class ``kind`` (or providing port ``kind``) if it is running, else None."""
        name = self._name_of(kind)
        return self._slots[name].service if name is not None and self._slots[name].state == ON else None  # type: ignore[return-value]

    def installed(self, kind: type[S]) -> S | None:
        """The service of class ``kind`` (or providing port ``kind``) in whatever state, None if the node has none."""
        name = self._name_of(kind)
        return self._slots[name].service if name is not None else None  # type: ignore[return-value]

    def state(self, kind: type) -> str:
        """The driver state of the service of class ``kind`` ("NOT_INSTALLED" when the node has none)."""
        name = self._name_of(kind)
        return self._slots[name].state if name is not None else "NOT_INSTALLED"

    def info(self, name: str, with_configs: bool = False) -> dict:
        """The API shape of one service."""
        slot = self._slot(name)
        cls = type(slot.service)
        item = {
            "index": slot.index,
            "name": cls.name,
            "state": slot.state,
            "enabled": self._enabled(name),
            "depends": self.graph.depends(name),
            "optional": self.graph.uses(name),
            "dependents": self._dependents(name),
            "used_by": self.graph.users(name),
            "config_path": cls.enabled_key(),
            "description": cls.description,
            "installed": True,
        }
        if slot.reason:
            item["reason"] = slot.reason
        try:
            extra = slot.service.status() if slot.state == ON else {}
        except Exception:
            self.log.failure("status() of {name} failed", name=name)
            extra = {}
        if extra:
            item["status"] = extra
        if with_configs:
            prefix = cls.config_prefix() + "/"
            item["configs"] = [
                self._settings.describe(key) for key in self._settings.keys() if key.startswith(prefix)
            ]
        return item

    def list(self, with_configs: bool = False) -> list[dict]:
        """Every service, in dependency order."""
        return [self.info(name, with_configs) for name in self._slots]

    # --- whole-node lifecycle ------------------------------------------------

    def start_all(self) -> defer.Deferred:
        """Start every enabled service in dependency order; fires when all were tried."""
        self._running = True
        return self._lock.run(self._start_enabled, list(self._slots))

    def stop_all(self) -> defer.Deferred:
        """Stop every running service in reverse dependency order."""
        self._running = False
        return self._lock.run(self._stop_many, list(reversed(self._slots)))

    # --- API operations --------------------------------------------------------

    def start(self, name: str) -> defer.Deferred:
        """Enable and start ``name``; then start enabled dependents that were waiting for it.

        Conflict (409) if a dependency is not running.
        """
        self._slot(name)
        return self._lock.run(self._start_one, name)

    def stop(self, name: str) -> defer.Deferred:
        """Disable and stop ``name``, stopping running dependents first (they stay enabled)."""
        self._slot(name)
        return self._lock.run(self._stop_one, name)

    def restart(self, name: str, wait_timeout: float = 10.0) -> defer.Deferred:
        """Stop and start ``name`` and its running dependents, without touching the settings.

        Conflict if the service is disabled; Timeout (503) if it takes longer than ``wait_timeout``.
        """
        self._slot(name)
        if not self._enabled(name):
            raise Conflict(f"{name} is disabled; use service_start to enable it")
        if wait_timeout <= 0:
            raise BadRequest("wait_timeout must be positive")
        d = self._lock.run(self._restart_one, name)
        d.addTimeout(wait_timeout, self._clock,
                     onTimeoutCancel=lambda result, timeout: self._timed_out(name, timeout))
        return d

    # --- internals -------------------------------------------------------------

    def _switch_changed(self, key: str, old, new) -> None:
        """Settings listener: a service's ``enabled`` switch changed (config_set) — start or stop it."""
        name = self._switches.get(key)
        if name is None or self._switching or not self._running:
            return
        operation = self._switched_on if new else self._switched_off
        d = self._lock.run(operation, name)
        d.addErrback(lambda failure: self.log.failure("switching {name} failed", failure, name=name))

    @defer.inlineCallbacks
    def _switched_on(self, name: str):
        # The switch may have been flipped back while earlier operations ran.
        if self._running and self._enabled(name):
            yield self._start_with_dependents(name)

    @defer.inlineCallbacks
    def _switched_off(self, name: str):
        if self._running and not self._enabled(name):
            yield self._stop_with_dependents(name)

    def _set_switch(self, name: str, on: bool) -> None:
        self._switching = True
        try:
            self._settings.set(type(self._slots[name].service).enabled_key(), on)
        finally:
            self._switching = False

    def _set(self, slot: _Slot, state: str, reason: str) -> None:
        old = slot.state
        slot.state, slot.reason = state, reason
        if old != state and self._on_state_changed is not None:
            self._on_state_changed({"name": type(slot.service).name, "old_state": old, "new_state": state,
                                    "reason": reason})

    def _timed_out(self, name: str, timeout: float):
        raise Timeout(f"{name} did not restart within {timeout:g} seconds; state is {self._slots[name].state}")

    def _slot(self, name: str) -> _Slot:
        if not isinstance(name, str) or name not in self._slots:
            raise NotFound(f"unknown service {name!r}")
        return self._slots[name]

    def _enabled(self, name: str) -> bool:
        return bool(self._settings.get(type(self._slots[name].service).enabled_key()))

    def _dependents(self, name: str) -> list[str]:
        return self.graph.dependents(name)

    def _blocking_dependencies(self, name: str) -> list[str]:
        return [dep for dep in self.graph.depends(name) if self._slots[dep].state != ON]

    def _name_of(self, kind: type) -> str | None:
        if is_service_class(kind):
            return kind.name if kind.name in self._slots else None
        for name, slot in self._slots.items():
            if kind in type(slot.service).provides:
                return name
        return None

    def _lifecycle(self, name: str) -> Lifecycle:
        return Lifecycle(name, lambda: self.is_on(name), lambda: self._enabled(name),
                         lambda: self.start(name), lambda: self.restart(name))

    @defer.inlineCallbacks
    def _start_enabled(self, names: list[str]):
        for name in names:
            if self._enabled(name) and self._slots[name].state != ON:
                yield self._try_start(name)

    @defer.inlineCallbacks
    def _try_start(self, name: str):
        slot = self._slots[name]
        blocking = self._blocking_dependencies(name)
        if blocking:
            self._set(slot, DEPENDS_OFF, "needs " + ", ".join(f"{dep} ({self._slots[dep].state})" for dep in blocking))
            self.log.warn("{name} not started: {reason}", name=name, reason=slot.reason)
            return False
        self._set(slot, STARTING, "")
        try:
            yield defer.maybeDeferred(slot.service.start)
        except Exception as err:
            self._set(slot, FAILED, f"start failed: {err}")
            if isinstance(err, BitnodeError):  # a stated reason ("no identity ..."), not a bug: no traceback
                self.log.warn("{name} failed to start: {reason}", name=name, reason=err)
            else:
                self.log.failure("{name} failed to start", name=name)
            return False
        self._set(slot, ON, slot.reason)
        self.log.info("{name} is on", name=name)
        return True

    @defer.inlineCallbacks
    def _try_stop(self, name: str, keep_reason: str = ""):
        slot = self._slots[name]
        if slot.state not in (ON, STARTING):
            if keep_reason and slot.state == OFF and self._enabled(name):
                self._set(slot, DEPENDS_OFF, keep_reason)
            elif not keep_reason and not self._enabled(name):
                # Switched off by the user: an old DEPENDS_OFF/FAILED reason no longer applies.
                self._set(slot, OFF, "")
            return
        self._set(slot, STOPPING, slot.reason)
        try:
            d = defer.maybeDeferred(slot.service.stop)
            d.addTimeout(STOP_TIMEOUT, self._clock)
            yield d
        except Exception as err:
            self._set(slot, FAILED, f"stop failed: {err}")
            self.log.failure("{name} failed to stop cleanly", name=name)
            return
        self._set(slot, DEPENDS_OFF if keep_reason else OFF, keep_reason)
        self.log.info("{name} is off", name=name)

    @defer.inlineCallbacks
    def _stop_many(self, names: list[str]):
        for name in names:
            yield self._try_stop(name)

    def _closure_of_dependents(self, name: str) -> list[str]:
        """``name``'s direct and indirect dependents, in dependency order."""
        found: set[str] = set()
        todo = [name]
        while todo:
            for dep in self._dependents(todo.pop()):
                if dep not in found:
                    found.add(dep)
                    todo.append(dep)
        return [other for other in self._slots if other in found]

    @defer.inlineCallbacks
    def _start_one(self, name: str):
        blocking = self._blocking_dependencies(name)
        if blocking:
            raise Conflict(f"{name} depends on " + ", ".join(f"{dep} which is {self._slots[dep].state}"
                                                              for dep in blocking))
        self._set_switch(name, True)
        yield self._start_with_dependents(name)
        return self.info(name)

    @defer.inlineCallbacks
    def _start_with_dependents(self, name: str):
        """Start ``name`` (if not on), then its enabled dependents that were waiting for it."""
        if self._slots[name].state != ON:
            started = yield self._try_start(name)
            if not started:
                return
        yield self._start_enabled(self._closure_of_dependents(name))

    @defer.inlineCallbacks
    def _stop_one(self, name: str):
        self._set_switch(name, False)
        yield self._stop_with_dependents(name)
        return self.info(name)

    @defer.inlineCallbacks
    def _stop_with_dependents(self, name: str):
        """Stop ``name``'s running dependents (they stay enabled, waiting for it), then ``name``."""
        for dependent in reversed(self._closure_of_dependents(name)):
            yield self._try_stop(dependent, keep_reason=f"needs {name} (OFF)")
        yield self._try_stop(name)

    @defer.inlineCallbacks
    def _restart_one(self, name: str):
        dependents = self._closure_of_dependents(name)
        running = [dep for dep in dependents if self._slots[dep].state == ON]
        for dependent in reversed(running):
            yield self._try_stop(dependent)
        yield self._try_stop(name)
        yield self._try_start(name)
        # Also when the start failed: the dependents then say DEPENDS_OFF and why, not a bare OFF.
        yield self._start_enabled(dependents)
        return self.info(name)
