"""The :class:`Automat` base class: a declarative, run-to-completion state machine.

A machine is a subclass with a transition table::

    class Door(Automat):
        name = "door"
        initial = "CLOSED"
        timers = {"timer-30sec": (30.0, {"OPEN"})}
        transitions = [
            # state    event          guard       next      actions
            ("CLOSED", "open",        "unlocked", "OPEN",   ["swing"]),
            ("CLOSED", "open",        None,       "CLOSED", ["beep"]),
            ("OPEN",   "timer-30sec", None,       "CLOSED", ["swing"]),
            ("*",      "break",       None,       "BROKEN", []),
        ]

Rules, in the order the machine applies them to one event:

1. Candidate rows are the rows for the current state, in table order, followed
   by the ``"*"`` (any state) rows, in table order.  The first candidate whose
   guard passes wins.  A guard is ``None`` (always passes), the name of a
   method, or ``"not "`` + the name of a method.
2. The state becomes ``next_state`` (``"*"`` as next state means "stay").
3. Timers not valid in the new state are cancelled; timers valid in it that
   were not running are started.  A running timer keeps running across a
   transition between two of its states, including a self-transition.
4. A :class:`TransitionRecord` is appended to :attr:`Automat.history`.  Every
   transition taken is recorded, self-transitions included, even if one of
   its actions later fails.  Unexpected events and events whose guard raised
   are not transitions and are not recorded there.
5. State listeners are told, if the state changed.
6. The actions run in order.  An exception is logged with its traceback and
   stops the remaining actions of that transition; the machine stays usable.

Timer intervals are the class's unless one machine is given others:
``Door(clock, timer_intervals={"timer-30sec": 5.0})`` waits 5 seconds in that
machine only (the states a timer runs in are always the table's).

A guard that raises is logged with its traceback and the event is abandoned:
no transition, nothing recorded, the machine stays usable.

An event with no matching row is logged as a warning and kept in
:attr:`Automat.unexpected`; it is never raised and never silently dropped.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

if TYPE_CHECKING:
    from automats.registry import Registry

__all__ = ["ANY", "Automat", "Row", "StateListener", "TransitionRecord", "UnexpectedEvent"]

#: The wildcard state: as a row's state it matches every state, as a row's
#: next state it means "stay in the current state".
ANY = "*"

#: How many unexpected events a machine remembers (the count is kept apart).
UNEXPECTED_KEPT = 20

StateListener = Callable[["Automat", str, str, str], object]

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class TransitionRecord:
    """One transition a machine took.

    :ivar time: the clock's ``seconds()`` when the transition happened.
    :ivar event: the event that caused it.
    :ivar from_state: the state before.
    :ivar to_state: the state after (equal to ``from_state`` for a stay row).
    """

    time: float
    event: str
    from_state: str
    to_state: str


@dataclass(frozen=True)
class UnexpectedEvent:
    """An event that matched no row (or arrived after :meth:`Automat.destroy`).

    :ivar time: the clock's ``seconds()`` when it arrived.
    :ivar state: the machine's state at that moment.
    :ivar event: the event name.
    :ivar destroyed: True if the machine had already been destroyed.
    """

    time: float
    state: str
    event: str
    destroyed: bool = False


class Row(NamedTuple):
    """A normalized transition-table row, as returned by :meth:`Automat.table`.

    ``guard`` is ``None``, ``"name"`` or ``"not name"`` (single space);
    ``actions`` is a tuple of method names.
    """

    state: str
    event: str
    guard: str | None
    next_state: str
    actions: tuple[str, ...]


def _split_guard(guard: str | None) -> tuple[str | None, bool]:
    """Return ``(method_name, negated)`` for a normalized guard."""
    if guard is None:
        return None, False
    if guard.startswith("not "):
        return guard[4:], True
    return guard, False


def _snake_case(text: str) -> str:
    """``NetworkConnector`` -> ``network_connector``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", text).lower()


class _TableError(TypeError):
    """Raised (as a TypeError) when a class's table is malformed."""


def _normalize_row(cls: type, position: int, raw: object) -> Row:
    """Check one raw table row against ``cls`` and return it normalized."""
    where = f"{cls.__qualname__}.transitions[{position}] {raw!r}"
    if not isinstance(raw, (tuple, list)) or len(raw) != 5:
        raise _TableError(f"{where}: a row must be (state, event, guard, next_state, actions)")
    state, event, guard, next_state, actions = raw
    for label, value in (("state", state), ("event", event), ("next_state", next_state)):
        if not isinstance(value, str) or not value.strip() or value != value.strip():
            raise _TableError(f"{where}: {label} must be a non-empty string without surrounding spaces")
    if event == ANY:
        raise _TableError(f"{where}: '*' is not allowed as an event")
    if guard is not None:
        if not isinstance(guard, str):
            raise _TableError(f"{where}: guard must be None or a method name, optionally prefixed 'not '")
        words = guard.split()
        negated = len(words) == 2 and words[0] == "not"
        method = words[-1] if words else ""
        if len(words) not in (1, 2) or (len(words) == 2 and not negated):
            raise _TableError(f"{where}: guard {guard!r} must be 'name' or 'not name'")
        _check_method(cls, where, "guard", method)
        guard = f"not {method}" if negated else method
    if isinstance(actions, str) or not isinstance(actions, (tuple, list)):
        raise _TableError(f"{where}: actions must be a list of method names (got {actions!r})")
    for action in actions:
        _check_method(cls, where, "action", action)
    return Row(state, event, guard, next_state, tuple(actions))


def _check_method(cls: type, where: str, kind: str, method: object) -> None:
    """Raise unless ``method`` names a callable attribute of ``cls``."""
    if not isinstance(method, str) or not _IDENTIFIER.match(method):
        raise _TableError(f"{where}: {kind} {method!r} is not a valid method name")
    if not callable(getattr(cls, method, None)):
        raise _TableError(f"{where}: {kind} {method!r} is not a method of {cls.__qualname__}")


def _check_reachable(cls: type, rows: list[Row]) -> None:
    """Reject rows that can never fire because an unguarded row precedes them."""
    unguarded: dict[tuple[str, str], int] = {}
    for position, row in enumerate(rows):
        key = (row.state, row.event)
        if key in unguarded:
            raise _TableError(
                f"{cls.__qualname__}.transitions[{position}] {tuple(row)!r}: unreachable, "
                f"row {unguarded[key]} for the same state and event has no guard"
            )
        if row.guard is None:
            unguarded[key] = position


def _normalize_timers(cls: type, raw: object, states: set[str], events: set[str]) -> dict[str, tuple[float, frozenset[str]]]:
    """Check ``cls.timers`` and return ``{event: (interval, frozenset(states))}``."""
    name = cls.__qualname__
    if not isinstance(raw, dict):
        raise _TableError(f"{name}.timers must be a dict {{event: (interval_seconds, states)}}")
    timers: dict[str, tuple[float, frozenset[str]]] = {}
    for event, spec in raw.items():
        where = f"{name}.timers[{event!r}]"
        if not isinstance(event, str) or not event.strip():
            raise _TableError(f"{where}: the timer's event name must be a non-empty string")
        if not isinstance(spec, (tuple, list)) or len(spec) != 2:
            raise _TableError(f"{where}: must be (interval_seconds, states)")
        interval, timer_states = spec
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0:
            raise _TableError(f"{where}: interval must be a positive number of seconds, not {interval!r}")
        if isinstance(timer_states, str) or not isinstance(timer_states, Iterable):
            raise _TableError(f"{where}: states must be a set or list of state names, not {timer_states!r}")
        timer_states = frozenset(timer_states)
        if not timer_states:
            raise _TableError(f"{where}: states must not be empty")
        unknown = sorted(s for s in timer_states if s not in states)
        if unknown:
            raise _TableError(f"{where}: states {unknown} do not appear in the transition table")
        if event not in events:
            raise _TableError(f"{where}: no row handles the timer's event {event!r}")
        timers[event] = (float(interval), timer_states)
    return timers


def _override_intervals(
    cls: type, specs: Mapping[str, tuple[float, frozenset[str]]], overrides: object
) -> dict[str, tuple[float, frozenset[str]]]:
    """``specs`` with the intervals named in ``overrides`` replaced (see ``Automat(timer_intervals=...)``).

    ``TypeError`` unless ``overrides`` maps timer names to numbers; ``ValueError``
    for a name that is not one of the class's timers or an interval that is not
    a positive, finite number of seconds.
    """
    name = cls.__qualname__
    if not isinstance(overrides, Mapping):
        raise TypeError(f"timer_intervals must be a mapping {{timer: seconds}}, not {overrides!r}")
    unknown = sorted(str(timer) for timer in overrides if timer not in specs)
    if unknown:
        raise ValueError(f"{name} has no timer {unknown}; its timers are {sorted(specs)}")
    out = dict(specs)
    for timer, seconds in overrides.items():
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"{name} timer {timer!r}: interval must be a number of seconds, not {seconds!r}")
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"{name} timer {timer!r}: interval must be a positive number of seconds, not {seconds!r}")
        out[timer] = (float(seconds), specs[timer][1])
    return out


class Automat:
    """Base class of every state machine; subclasses declare the table.

    Class attributes a subclass sets:

    :cvar name: the machine kind shown in lists (default: the class name in
        snake_case; an explicit name is inherited by subclasses).
    :cvar initial: the state a new machine starts in.
    :cvar transitions: rows ``(state, event, guard, next_state, actions)``.
    :cvar timers: ``{event: (interval_seconds, states)}``; while the machine is
        in one of ``states`` the event fires every ``interval_seconds``.

    The table is checked when the class is created: malformed rows, unknown
    guard or action methods, an ``initial`` state or timer states not in the
    table, and rows made unreachable by an earlier unguarded row raise
    ``TypeError``.  A class without ``transitions`` is an abstract base: it
    is not checked and cannot be instantiated.
    """

    name: ClassVar[str] = ""
    initial: ClassVar[str | None] = None
    transitions: ClassVar[list[tuple[Any, ...]]] = []
    timers: ClassVar[dict[str, tuple[float, Iterable[str]]]] = {}

    _default_name: ClassVar[bool] = True
    _rows: ClassVar[tuple[Row, ...]] = ()
    _lookup: ClassVar[dict[tuple[str, str], tuple[Row, ...]]] = {}
    _timer_specs: ClassVar[dict[str, tuple[float, frozenset[str]]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Check and index the subclass's table (see the class docstring)."""
        super().__init_subclass__(**kwargs)
        # A name set in a class body is inherited; a derived default is not,
        # so each subclass of an abstract base gets its own default name.
        if cls.__dict__.get("name"):
            cls._default_name = False
        elif not cls.name or cls._default_name:
            cls.name = _snake_case(cls.__name__)
            cls._default_name = True
        raw = cls.transitions
        if not raw:
            cls._rows, cls._lookup, cls._timer_specs = (), {}, {}
            return
        if not isinstance(raw, (list, tuple)):
            raise _TableError(f"{cls.__qualname__}.transitions must be a list of rows")
        rows = [_normalize_row(cls, position, row) for position, row in enumerate(raw)]
        _check_reachable(cls, rows)
        states = {r.state for r in rows} | {r.next_state for r in rows}
        states.discard(ANY)
        if not isinstance(cls.initial, str) or cls.initial not in states:
            raise _TableError(
                f"{cls.__qualname__}.initial {cls.initial!r} does not appear in the transition table"
            )
        lookup: dict[tuple[str, str], list[Row]] = {}
        for row in rows:
            lookup.setdefault((row.state, row.event), []).append(row)
        cls._timer_specs = _normalize_timers(cls, cls.timers, states, {r.event for r in rows})
        cls._rows = tuple(rows)
        cls._lookup = {key: tuple(value) for key, value in lookup.items()}

    # -- class-level helpers for docs ---------------------------------------

    @classmethod
    def table(cls) -> list[Row]:
        """Return the normalized transition rows, in table order."""
        return list(cls._rows)

    @classmethod
    def states(cls) -> set[str]:
        """Return every state named in the table (``"*"`` excluded)."""
        found = {r.state for r in cls._rows} | {r.next_state for r in cls._rows}
        found.discard(ANY)
        return found

    @classmethod
    def events(cls) -> set[str]:
        """Return every event the table handles (timer events included)."""
        return {r.event for r in cls._rows} | set(cls._timer_specs)

    @classmethod
    def timer_specs(cls) -> dict[str, tuple[float, frozenset[str]]]:
        """Return the class's normalized timers: ``{event: (interval_seconds, frozenset(states))}``.

        One machine may wait other intervals; see :meth:`timer_interval`.
        """
        return dict(cls._timer_specs)

    # -- instances ------------------------------------------------------------

    def __init__(
        self,
        clock: IReactorTime,
        registry: Registry | None = None,
        machine_id: str | None = None,
        history_size: int = 50,
        log: Logger | None = None,
        timer_intervals: Mapping[str, float] | None = None,
    ) -> None:
        """Create a machine in its ``initial`` state and start that state's timers.

        :param clock: the time source for timers and records (a reactor, or a
            ``twisted.internet.task.Clock`` in tests).
        :param registry: if given, the machine registers itself there and gets
            an ``index``.
        :param machine_id: a unique id; by default ``f"{name}{index}"`` when
            registered, else the name plus a hex object id.
        :param history_size: how many transitions :attr:`history` keeps.
        :param log: where to log; by default a ``twisted.logger.Logger``.
        :param timer_intervals: ``{timer: seconds}`` for this machine only,
            replacing the intervals of the class's ``timers`` (not their
            states).  ``ValueError`` for a name that is not one of the class's
            timers or an interval that is not positive, ``TypeError`` for one
            that is not a number.
        """
        cls = type(self)
        if not cls._rows:
            raise TypeError(f"{cls.__qualname__} has no transitions; it is an abstract machine")
        if machine_id is not None and (not isinstance(machine_id, str) or not machine_id):
            raise TypeError(f"machine_id must be a non-empty string, not {machine_id!r}")
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1:
            raise ValueError(f"history_size must be a positive int, not {history_size!r}")
        # This machine's timers: the class's, with its own intervals if given. Checked before
        # registering, so a bad value leaves no half-built machine in the registry.
        timer_table = cls._timer_specs
        if timer_intervals is not None:
            timer_table = _override_intervals(cls, timer_table, timer_intervals)
        self._timer_table: dict[str, tuple[float, frozenset[str]]] = dict(timer_table)
        self.clock = clock
        self.log = log if log is not None else Logger(namespace=f"automats.{cls.name}", source=self)
        self.index: int | None = None
        self.id: str = machine_id or ""
        #: the number of unexpected events ever received
        self.unexpected_count = 0
        self._unexpected: deque[UnexpectedEvent] = deque(maxlen=UNEXPECTED_KEPT)
        self._state: str = cls.initial  # type: ignore[assignment]
        self._history: deque[TransitionRecord] = deque(maxlen=history_size)
        self._queue: deque[tuple[str, tuple[Any, ...], dict[str, Any]]] = deque()
        self._processing = False
        self._destroyed = False
        self._listeners: list[StateListener] = []
        self._running_timers: dict[str, IDelayedCall] = {}
        self._registry: Registry | None = None
        if registry is not None:
            registry.register(self)
        if not self.id:
            self.id = f"{cls.name}-{id(self):x}"
        self._sync_timers()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} state={self._state}>"

    @property
    def state(self) -> str:
        """The current state."""
        return self._state

    @property
    def history(self) -> list[TransitionRecord]:
        """The most recent transitions, oldest first (at most ``history_size``)."""
        return list(self._history)

    @property
    def unexpected(self) -> list[UnexpectedEvent]:
        """The last few unexpected events, oldest first; see :attr:`unexpected_count`."""
        return list(self._unexpected)

    @property
    def destroyed(self) -> bool:
        """True once :meth:`destroy` has been called."""
        return self._destroyed

    def active_timers(self) -> list[str]:
        """Return the names of the timers now running, sorted."""
        return sorted(self._running_timers)

    def timer_interval(self, timer: str) -> float:
        """Return the seconds timer ``timer`` waits in this machine; ``ValueError`` for an unknown timer."""
        spec = self._timer_table.get(timer)
        if spec is None:
            raise ValueError(f"{type(self).__qualname__} has no timer {timer!r}")
        return spec[0]

    def add_state_listener(self, listener: StateListener) -> None:
        """Call ``listener(machine, old_state, new_state, event)`` on every state change.

        Self-transitions are not state changes.  A listener that raises is
        logged; the others still run.
        """
        if not callable(listener):
            raise TypeError(f"listener must be callable, not {listener!r}")
        self._listeners.append(listener)

    def remove_state_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``; raise ``ValueError`` if it was not added."""
        self._listeners.remove(listener)

    def event(self, event: str, /, *args: Any, **kwargs: Any) -> None:
        """Fire ``event``; guards and actions get ``*args, **kwargs``.

        The event is queued.  If the machine is not already handling an event
        the queue is run to completion now; otherwise (an action firing an
        event) it runs after the current transition has finished.
        """
        if not isinstance(event, str):
            raise TypeError(f"event name must be a string, not {event!r}")
        self._queue.append((event, args, kwargs))
        if self._processing:
            return
        self._processing = True
        try:
            while self._queue:
                name, a, kw = self._queue.popleft()
                self._handle(name, a, kw)
        finally:
            self._processing = False

    def destroy(self, *args: Any, **kwargs: Any) -> None:
        """Stop the machine: cancel its timers and leave its registry.

        Later events are logged and recorded as unexpected.  Calling it again
        does nothing.  It ignores its arguments so that ``"destroy"`` can be
        used directly as an action in the table.
        """
        if self._destroyed:
            return
        self._destroyed = True
        for call in self._running_timers.values():
            if call.active():
                call.cancel()
        self._running_timers.clear()
        if self._registry is not None:
            self._registry.unregister(self)

    def describe(self) -> dict[str, Any]:
        """Return a JSON-safe summary.

        Keys: ``index``, ``id``, ``name``, ``state``, ``timers`` (the running
        timers) and ``transitions`` (the history as
        ``{"time", "event", "from", "to"}`` dicts, oldest first).
        """
        return {
            "index": self.index,
            "id": self.id,
            "name": type(self).name,
            "state": self._state,
            "timers": self.active_timers(),
            "transitions": [
                {"time": r.time, "event": r.event, "from": r.from_state, "to": r.to_state}
                for r in self._history
            ],
        }

    # -- internals --------------------------------------------------------------

    def _attach(self, registry: Registry, index: int) -> None:
        """Called by :meth:`Registry.register`: remember the registry and index."""
        self._registry = registry
        self.index = index
        if not self.id:
            self.id = f"{type(self).name}{index}"

    def _detach(self) -> None:
        """Called by :meth:`Registry.unregister`."""
        self._registry = None

    def _handle(self, event: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Take one event through the table (see the module docstring)."""
        if self._destroyed:
            self._note_unexpected(event, destroyed=True)
            return
        try:
            row = self._select_row(event, args, kwargs)
        except Exception:
            self.log.failure(
                "{machine_id}: guard failed in state {state} on event {event!r}; event abandoned",
                machine_id=self.id, state=self._state, event=event,
            )
            return
        if row is None:
            self._note_unexpected(event)
            return
        old = self._state
        new = old if row.next_state == ANY else row.next_state
        self._state = new
        self._sync_timers()
        self._history.append(TransitionRecord(self.clock.seconds(), event, old, new))
        if new != old:
            self._notify(old, new, event)
        for action in row.actions:
            try:
                getattr(self, action)(*args, **kwargs)
            except Exception:
                self.log.failure(
                    "{machine_id}: action {action} failed on {old} -{event}-> {new}; "
                    "remaining actions skipped",
                    machine_id=self.id, action=action, old=old, event=event, new=new,
                )
                return

    def _select_row(self, event: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Row | None:
        """Return the first row whose guard passes, concrete-state rows first."""
        candidates = self._lookup.get((self._state, event), ()) + self._lookup.get((ANY, event), ())
        for row in candidates:
            method, negated = _split_guard(row.guard)
            if method is None:
                return row
            if bool(getattr(self, method)(*args, **kwargs)) != negated:
                return row
        return None

    def _note_unexpected(self, event: str, destroyed: bool = False) -> None:
        """Log and remember an event that no row handled."""
        self.unexpected_count += 1
        self._unexpected.append(UnexpectedEvent(self.clock.seconds(), self._state, event, destroyed))
        if destroyed:
            self.log.warn(
                "{machine_id}: event {event!r} ignored, the machine is destroyed (state {state})",
                machine_id=self.id, state=self._state, event=event,
            )
        else:
            self.log.warn(
                "{machine_id}: unexpected event {event!r} in state {state}",
                machine_id=self.id, state=self._state, event=event,
            )

    def _notify(self, old: str, new: str, event: str) -> None:
        """Tell every state listener about a change; a failing listener is logged."""
        for listener in list(self._listeners):
            try:
                listener(self, old, new, event)
            except Exception:
                self.log.failure(
                    "{machine_id}: state listener {listener!r} failed on {old} -> {new}",
                    machine_id=self.id, listener=listener, old=old, new=new,
                )

    def _sync_timers(self) -> None:
        """Start the timers valid in the current state and cancel the others."""
        if self._destroyed:
            return
        for name, (interval, states) in self._timer_table.items():
            running = self._running_timers.get(name)
            if self._state in states:
                if running is None:
                    self._running_timers[name] = self.clock.callLater(interval, self._fire_timer, name)
            elif running is not None:
                del self._running_timers[name]
                if running.active():
                    running.cancel()

    def _fire_timer(self, name: str) -> None:
        """Re-arm timer ``name`` and fire its event (a transition may cancel it)."""
        interval, _states = self._timer_table[name]
        # Re-arm first, so that a transition out of the timer's states finds
        # the new call and cancels it, and a stay keeps the period exact.
        self._running_timers[name] = self.clock.callLater(interval, self._fire_timer, name)
        self.event(name)
