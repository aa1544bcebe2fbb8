"""Tests for automats.machine: tables, guards, run-to-completion, timers, logging."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from automats import Automat, Registry, Row, TransitionRecord, UnexpectedEvent
from automats.machine import UNEXPECTED_KEPT


def capturing_logger() -> tuple[Logger, list[dict[str, Any]]]:
    """A Logger whose events land in the returned list instead of the global log."""
    events: list[dict[str, Any]] = []
    return Logger(observer=events.append), events


def records(label: str, *, state: bool = False, time: bool = False) -> Callable[..., None]:
    """An action appending ``label`` (paired with the state or the clock's time if asked) to ``self.calls``."""

    def action(self: Recording, *args: Any, **kwargs: Any) -> None:
        extra = self.state if state else self.clock.seconds() if time else None
        self.calls.append(label if extra is None else (label, extra))

    return action


class Recording(Automat):
    """Abstract base: machines whose actions append to ``self.calls``."""

    def __init__(self, clock: Clock, **kwargs: Any) -> None:
        self.calls: list[Any] = []
        super().__init__(clock, **kwargs)

    def note(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("note", self.state, args, kwargs))


class Gate(Recording):
    initial = "CLOSED"
    transitions = [
        # state    event    guard           next      actions
        ("CLOSED", "open",  "has_key",      "OPEN",   ["note"]),
        ("CLOSED", "open",  "not has_key",  "CLOSED", ["refuse"]),
        ("OPEN",   "close", None,           "CLOSED", ["note"]),
        ("OPEN",   "open",  None,           "OPEN",   []),  # already open: harmless
    ]

    def has_key(self, key: str | None = None, **kwargs: Any) -> bool:
        self.calls.append(("has_key", key, kwargs))
        return key == "secret"

    refuse = records("refuse")


class Sorter(Recording):
    initial = "IDLE"
    transitions = [
        ("IDLE", "item",  "is_big",   "BIG",   ["note"]),
        ("IDLE", "item",  "is_heavy", "HEAVY", ["note"]),
        ("IDLE", "item",  None,       "SMALL", ["note"]),
        ("*",    "reset", None,       "IDLE",  []),
    ]

    def is_big(self, size: int, weight: int) -> bool:
        return size > 10

    def is_heavy(self, size: int, weight: int) -> bool:
        return weight > 10


class Lamp(Recording):
    initial = "OFF"
    transitions = [
        ("OFF",    "switch", None,         "ON",     []),
        ("ON",     "switch", None,         "OFF",    []),
        ("ON",     "smash",  "is_armored", "ON",     ["survived"]),
        ("BROKEN", "smash",  None,         "BROKEN", ["already_broken"]),
        ("BROKEN", "fix",    None,         "OFF",    []),
        ("*",      "smash",  None,         "BROKEN", ["smashed"]),
        ("*",      "ping",   None,         "*",      ["pong"]),  # answered in every state, no move
    ]
    armored = False

    def is_armored(self) -> bool:
        return self.armored

    survived = records("survived")
    already_broken = records("already_broken")
    smashed = records("smashed")
    pong = records("pong", state=True)


class Chain(Recording):
    """Actions that fire further events, to check run-to-completion."""

    initial = "A"
    transitions = [
        ("A", "go",   None, "B", ["first", "second"]),
        ("B", "next", None, "C", ["third"]),
        ("C", "last", None, "D", ["fourth"]),
    ]

    second = records("second", state=True)
    fourth = records("fourth", state=True)

    def first(self) -> None:
        self.calls.append(("first", self.state))
        self.event("next")
        self.calls.append("first-done")

    def third(self) -> None:
        self.calls.append(("third", self.state))
        self.event("last")


class Blinker(Recording):
    initial = "IDLE"
    timers = {"tick": (5.0, {"BLINKING", "PAUSED"}), "giveup": (32.0, {"BLINKING"})}
    transitions = [
        ("IDLE",     "start",  None, "BLINKING", ["look"]),
        ("BLINKING", "tick",   None, "BLINKING", ["blink"]),
        ("BLINKING", "pause",  None, "PAUSED",   []),
        ("BLINKING", "giveup", None, "IDLE",     []),
        ("PAUSED",   "tick",   None, "PAUSED",   ["paused_tick"]),
        ("PAUSED",   "resume", None, "BLINKING", []),
        ("*",        "stop",   None, "IDLE",     []),
        ("*",        "quit",   None, "GONE",     ["destroy"]),
    ]

    def look(self) -> None:
        self.calls.append(("look", self.state, self.active_timers(), self.history[-1].event))

    blink = records("blink", time=True)
    paused_tick = records("paused_tick", time=True)


class Poller(Recording):
    initial = "POLLING"
    timers = {"poll": (1.0, {"POLLING"})}
    transitions = [
        ("POLLING", "poll", None, "POLLING", ["note"]),
        ("POLLING", "stop", None, "STOPPED", []),
    ]


class Fragile(Recording):
    initial = "READY"
    transitions = [
        ("READY", "work",  None,     "BUSY",  ["step_one", "explode", "step_three"]),
        ("READY", "check", "broken", "READY", ["note"]),
        ("BUSY",  "done",  None,     "READY", ["note"]),
    ]

    step_one = records("step_one")
    step_three = records("step_three")

    def explode(self) -> None:
        raise ZeroDivisionError("boom")

    def broken(self) -> bool:
        raise KeyError("no guard today")


class GuardTests(unittest.TestCase):
    def test_true_guard_takes_its_row(self) -> None:
        gate = Gate(Clock())
        gate.event("open", "secret")
        self.assertEqual(gate.state, "OPEN")

    def test_false_guard_falls_to_not_row(self) -> None:
        gate = Gate(Clock())
        gate.event("open", "wrong")
        self.assertEqual(gate.state, "CLOSED")
        self.assertEqual(gate.calls[-1], "refuse")

    def test_not_guard_is_evaluated_as_negation(self) -> None:
        gate = Gate(Clock())
        gate.event("open")
        self.assertEqual(gate.calls, [("has_key", None, {}), ("has_key", None, {}), "refuse"])

    def test_guards_and_actions_get_event_args_and_kwargs(self) -> None:
        gate = Gate(Clock())
        gate.event("open", "secret", event="e", name="n")
        kwargs = {"event": "e", "name": "n"}
        self.assertEqual(gate.calls, [("has_key", "secret", kwargs), ("note", "OPEN", ("secret",), kwargs)])

    def test_first_matching_row_wins(self) -> None:
        sorter = Sorter(Clock())
        sorter.event("item", 20, 20)
        self.assertEqual(sorter.state, "BIG")

    def test_later_row_used_when_earlier_guards_fail(self) -> None:
        sorter = Sorter(Clock())
        sorter.event("item", 1, 20)
        self.assertEqual(sorter.state, "HEAVY")
        sorter.event("reset")
        sorter.event("item", 1, 1)
        self.assertEqual(sorter.state, "SMALL")


class WildcardTests(unittest.TestCase):
    def test_star_row_applies_in_any_state(self) -> None:
        for start in ("OFF", "ON"):
            lamp = Lamp(Clock())
            if start == "ON":
                lamp.event("switch")
            lamp.event("smash")
            self.assertEqual((lamp.state, lamp.calls), ("BROKEN", ["smashed"]))

    def test_concrete_row_takes_precedence_over_star_row(self) -> None:
        lamp = Lamp(Clock())
        lamp.event("smash")
        lamp.event("smash")
        self.assertEqual(lamp.calls, ["smashed", "already_broken"])

    def test_star_row_used_when_concrete_guards_fail(self) -> None:
        lamp = Lamp(Clock())
        lamp.event("switch")
        lamp.armored = True
        lamp.event("smash")
        lamp.armored = False
        lamp.event("smash")
        self.assertEqual((lamp.state, lamp.calls), ("BROKEN", ["survived", "smashed"]))

    def test_star_next_state_stays_and_is_recorded(self) -> None:
        lamp = Lamp(Clock())
        lamp.event("switch")
        lamp.event("ping")
        self.assertEqual(lamp.state, "ON")
        self.assertEqual(lamp.calls, [("pong", "ON")])
        self.assertEqual(lamp.history[-1], TransitionRecord(0.0, "ping", "ON", "ON"))


class RunToCompletionTests(unittest.TestCase):
    def test_events_fired_by_actions_run_after_the_transition(self) -> None:
        chain = Chain(Clock())
        chain.add_state_listener(lambda m, old, new, event: chain.calls.append(("changed", old, new, event)))
        chain.event("go")
        self.assertEqual(
            chain.calls,
            [
                ("changed", "A", "B", "go"), ("first", "B"), "first-done", ("second", "B"),
                ("changed", "B", "C", "next"), ("third", "C"),
                ("changed", "C", "D", "last"), ("fourth", "D"),
            ],
        )
        self.assertEqual([r.event for r in chain.history], ["go", "next", "last"])

    def test_actions_see_new_state_timers_and_record(self) -> None:
        blinker = Blinker(Clock())
        blinker.event("start")
        self.assertEqual(blinker.calls, [("look", "BLINKING", ["giveup", "tick"], "start")])


class TimerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = clock = Clock()
        self.blinker = Blinker(clock)

    def test_no_timers_outside_their_states(self) -> None:
        clock, blinker = self.clock, self.blinker
        self.assertEqual((blinker.active_timers(), clock.getDelayedCalls()), ([], []))

    def test_timer_fires_repeatedly_while_in_state(self) -> None:
        clock, blinker = self.clock, self.blinker
        blinker.event("start")
        clock.pump([5, 5, 5])
        self.assertEqual(blinker.calls[1:], [("blink", 5.0), ("blink", 10.0), ("blink", 15.0)])

    def test_timer_cancelled_on_leaving_its_states(self) -> None:
        clock, blinker = self.clock, self.blinker
        blinker.event("start")
        clock.advance(5)
        blinker.event("stop")
        self.assertEqual((blinker.active_timers(), clock.getDelayedCalls()), ([], []))
        clock.advance(100)
        self.assertEqual(blinker.calls[1:], [("blink", 5.0)])
        self.assertEqual(blinker.state, "IDLE")

    def test_self_transition_keeps_timer_running(self) -> None:
        clock, blinker = self.clock, self.blinker
        blinker.event("start")
        clock.pump([5] * 6)  # six tick self-transitions must not restart "giveup"
        self.assertEqual(blinker.state, "BLINKING")
        clock.advance(2)
        self.assertEqual(blinker.state, "IDLE")
        self.assertEqual(blinker.history[-1], TransitionRecord(32.0, "giveup", "BLINKING", "IDLE"))
        clock.advance(100)
        self.assertEqual(len(blinker.calls), 7)

    def test_timer_keeps_running_between_two_of_its_states(self) -> None:
        clock, blinker = self.clock, self.blinker
        blinker.event("start")
        clock.advance(3)
        blinker.event("pause")
        self.assertEqual(blinker.active_timers(), ["tick"])
        clock.advance(2)
        self.assertEqual(blinker.calls[-1], ("paused_tick", 5.0))

    def test_timer_of_initial_state_starts_at_construction(self) -> None:
        clock = Clock()
        poller = Poller(clock)
        clock.pump([1, 1])
        self.assertEqual([r.time for r in poller.history], [1.0, 2.0])

    def test_destroy_cancels_timers(self) -> None:
        clock = Clock()
        poller = Poller(clock)
        poller.destroy()
        clock.advance(10)
        self.assertEqual((poller.history, poller.active_timers(), clock.getDelayedCalls()), ([], [], []))


class TimerIntervalTests(unittest.TestCase):
    """``timer_intervals=`` changes how long one machine's timers wait, not where they run."""

    def test_override_changes_only_that_machines_interval(self) -> None:
        clock = Clock()
        fast = Blinker(clock, timer_intervals={"tick": 2.0})
        slow = Blinker(clock)
        fast.event("start")
        slow.event("start")
        clock.pump([1, 1, 1, 1, 1])
        self.assertEqual(fast.calls[1:], [("blink", 2.0), ("blink", 4.0)])
        self.assertEqual(slow.calls[1:], [("blink", 5.0)])
        self.assertEqual((fast.timer_interval("tick"), slow.timer_interval("tick")), (2.0, 5.0))
        self.assertEqual(Blinker.timer_specs()["tick"][0], 5.0)  # the class keeps its own

    def test_timers_not_named_keep_the_class_interval(self) -> None:
        clock = Clock()
        blinker = Blinker(clock, timer_intervals={"tick": 1})
        self.assertEqual(blinker.timer_interval("giveup"), 32.0)
        blinker.event("start")
        clock.pump([1] * 32)
        self.assertEqual(blinker.state, "IDLE")
        self.assertEqual(blinker.history[-1], TransitionRecord(32.0, "giveup", "BLINKING", "IDLE"))

    def test_overridden_timer_still_runs_only_in_its_states(self) -> None:
        clock = Clock()
        blinker = Blinker(clock, timer_intervals={"tick": 0.5})
        self.assertEqual((blinker.active_timers(), clock.getDelayedCalls()), ([], []))
        blinker.event("start")
        clock.advance(0.5)
        blinker.event("pause")
        clock.advance(0.5)
        blinker.event("stop")
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(blinker.calls[1:], [("blink", 0.5), ("paused_tick", 1.0)])

    def test_initial_state_timer_starts_with_the_overridden_interval(self) -> None:
        clock = Clock()
        poller = Poller(clock, timer_intervals={"poll": 0.25})
        clock.pump([0.25, 0.25])
        self.assertEqual([r.time for r in poller.history], [0.25, 0.5])
        poller.destroy()

    def test_empty_override_is_the_class_table(self) -> None:
        self.assertEqual(Blinker(Clock(), timer_intervals={}).timer_interval("tick"), 5.0)

    def test_unknown_timer_name_is_refused(self) -> None:
        with self.assertRaises(ValueError) as caught:
            Blinker(Clock(), timer_intervals={"tock": 1.0})
        self.assertIn("no timer ['tock']", str(caught.exception))
        self.assertIn("'giveup', 'tick'", str(caught.exception))

    def test_bad_intervals_are_refused(self) -> None:
        for bad in (0, -1.0, float("nan"), float("inf")):
            self.assertRaises(ValueError, Blinker, Clock(), timer_intervals={"tick": bad})
        for bad in ("5", None, True):
            self.assertRaises(TypeError, Blinker, Clock(), timer_intervals={"tick": bad})
        self.assertRaises(TypeError, Blinker, Clock(), timer_intervals=[("tick", 1.0)])

    def test_refused_override_leaves_nothing_registered_or_scheduled(self) -> None:
        clock, registry = Clock(), Registry()
        self.assertRaises(ValueError, Poller, clock, registry=registry, timer_intervals={"tock": 1.0})
        self.assertEqual((len(registry), clock.getDelayedCalls()), (0, []))

    def test_timer_interval_of_unknown_timer(self) -> None:
        self.assertRaises(ValueError, Blinker(Clock()).timer_interval, "tock")


class DestroyTests(unittest.TestCase):
    def test_events_after_destroy_are_recorded_as_unexpected(self) -> None:
        log, logged = capturing_logger()
        gate = Gate(Clock(), log=log)
        gate.destroy()
        gate.event("open", "secret")
        self.assertEqual(gate.state, "CLOSED")
        self.assertEqual(gate.unexpected, [UnexpectedEvent(0.0, "CLOSED", "open", destroyed=True)])
        self.assertIn("destroyed", formatEvent(logged[-1]))

    def test_destroy_twice_is_harmless(self) -> None:
        gate = Gate(Clock())
        gate.destroy()
        gate.destroy()
        self.assertTrue(gate.destroyed)

    def test_destroy_as_action_stops_later_queued_events(self) -> None:
        clock = Clock()
        blinker = Blinker(clock, log=capturing_logger()[0])
        blinker.event("start")
        blinker.event("quit")
        blinker.event("start")
        self.assertEqual(blinker.state, "GONE")
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual([u.event for u in blinker.unexpected], ["start"])


class UnexpectedEventTests(unittest.TestCase):
    def test_unexpected_event_is_logged_and_recorded_not_raised(self) -> None:
        log, logged = capturing_logger()
        gate = Gate(Clock(), machine_id="front-gate", log=log)
        gate.event("close")
        self.assertEqual(gate.state, "CLOSED")
        self.assertEqual(gate.unexpected, [UnexpectedEvent(0.0, "CLOSED", "close")])
        self.assertEqual(gate.unexpected_count, 1)
        self.assertEqual(gate.history, [])
        self.assertEqual(logged[-1]["log_level"], LogLevel.warn)
        text = formatEvent(logged[-1])
        for part in ("front-gate", "CLOSED", "close"):
            self.assertIn(part, text)

    def test_unexpected_list_is_bounded_but_counted(self) -> None:
        gate = Gate(Clock(), log=capturing_logger()[0])
        for _ in range(UNEXPECTED_KEPT + 5):
            gate.event("nonsense")
        self.assertEqual((len(gate.unexpected), gate.unexpected_count), (UNEXPECTED_KEPT, UNEXPECTED_KEPT + 5))

    def test_unexpected_event_reaches_default_logger(self) -> None:
        seen: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(seen.append)
        self.addCleanup(globalLogPublisher.removeObserver, seen.append)
        gate = Gate(Clock())
        gate.event("close")
        self.assertTrue(any(e.get("log_source") is gate and e["log_level"] == LogLevel.warn for e in seen))

    def test_non_string_event_name_raises(self) -> None:
        self.assertRaises(TypeError, Gate(Clock()).event, 42)


class FailureTests(unittest.TestCase):
    def test_action_exception_is_logged_and_stops_remaining_actions(self) -> None:
        log, logged = capturing_logger()
        machine = Fragile(Clock(), log=log)
        machine.event("work")
        self.assertEqual(machine.calls, ["step_one"])
        failures = [e for e in logged if "log_failure" in e]
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0]["log_failure"].value, ZeroDivisionError)
        self.assertIn("explode", formatEvent(failures[0]))

    def test_transition_stands_and_is_recorded_when_an_action_fails(self) -> None:
        machine = Fragile(Clock(), log=capturing_logger()[0])
        machine.event("work")
        self.assertEqual(machine.state, "BUSY")
        self.assertEqual(machine.history, [TransitionRecord(0.0, "work", "READY", "BUSY")])

    def test_machine_still_usable_after_action_exception(self) -> None:
        machine = Fragile(Clock(), log=capturing_logger()[0])
        machine.event("work")
        machine.event("done")
        self.assertEqual(machine.state, "READY")
        self.assertEqual(machine.calls[-1], ("note", "READY", (), {}))

    def test_guard_exception_abandons_event_without_transition(self) -> None:
        log, logged = capturing_logger()
        machine = Fragile(Clock(), log=log)
        machine.event("check")
        self.assertEqual((machine.state, machine.history, machine.calls), ("READY", [], []))
        self.assertIsInstance(logged[-1]["log_failure"].value, KeyError)
        machine.event("work")
        self.assertEqual(machine.state, "BUSY")

    def test_action_exception_with_default_logger_is_logged_error(self) -> None:
        Fragile(Clock()).event("work")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class ListenerTests(unittest.TestCase):
    def test_listener_told_of_state_changes_only(self) -> None:
        gate = Gate(Clock())
        seen: list[tuple[Any, ...]] = []
        gate.add_state_listener(lambda *a: seen.append(a))
        gate.event("open", "secret")
        gate.event("open")  # OPEN -> OPEN is not a change
        gate.event("close")
        self.assertEqual(seen, [(gate, "CLOSED", "OPEN", "open"), (gate, "OPEN", "CLOSED", "close")])

    def test_removed_listener_not_called(self) -> None:
        gate = Gate(Clock())
        seen: list[tuple[Any, ...]] = []
        gate.add_state_listener(seen.append)
        gate.remove_state_listener(seen.append)
        gate.event("open", "secret")
        self.assertEqual(seen, [])

    def test_failing_listener_logged_and_others_still_called(self) -> None:
        log, logged = capturing_logger()
        gate = Gate(Clock(), log=log)
        seen: list[str] = []
        gate.add_state_listener(lambda *a: 1 / 0)
        gate.add_state_listener(lambda m, old, new, event: seen.append(new))
        gate.event("open", "secret")
        self.assertEqual((seen, gate.state), (["OPEN"], "OPEN"))
        self.assertEqual(gate.calls[-1][0], "note")
        self.assertIsInstance(logged[-1]["log_failure"].value, ZeroDivisionError)


class HistoryAndDescribeTests(unittest.TestCase):
    def test_history_ring_is_bounded(self) -> None:
        clock = Clock()
        lamp = Lamp(clock, history_size=3)
        for _ in range(5):
            clock.advance(1)
            lamp.event("switch")
        self.assertEqual([(r.time, r.from_state) for r in lamp.history], [(3.0, "OFF"), (4.0, "ON"), (5.0, "OFF")])

    def test_describe_is_json_serialisable(self) -> None:
        clock = Clock()
        blinker = Blinker(clock, machine_id="blinker-a")
        blinker.event("start")
        clock.advance(5)
        described = json.loads(json.dumps(blinker.describe()))
        transitions = [
            {"time": 0.0, "event": "start", "from": "IDLE", "to": "BLINKING"},
            {"time": 5.0, "event": "tick", "from": "BLINKING", "to": "BLINKING"},
        ]
        self.assertEqual(described, {
            "index": None, "id": "blinker-a", "name": "blinker", "state": "BLINKING",
            "timers": ["giveup", "tick"], "transitions": transitions,
        })

    def test_invalid_history_size_rejected(self) -> None:
        self.assertRaises(ValueError, Gate, Clock(), history_size=0)


class IdentityTests(unittest.TestCase):
    def test_name_defaults_to_snake_case_class_name(self) -> None:
        self.assertEqual(Gate.name, "gate")

    def test_explicit_name_is_inherited(self) -> None:
        class Named(Gate):
            name = "named_gate"

        class Derived(Named):
            pass

        self.assertEqual((Named.name, Derived.name), ("named_gate", "named_gate"))

    def test_explicit_machine_id_is_kept(self) -> None:
        self.assertEqual(Gate(Clock(), machine_id="side-gate").id, "side-gate")

    def test_unregistered_machines_get_distinct_ids(self) -> None:
        first, second = Gate(Clock()), Gate(Clock())
        self.assertNotEqual(first.id, second.id)
        self.assertTrue(first.id.startswith("gate"))
        self.assertIsNone(first.index)


class ClassHelperTests(unittest.TestCase):
    def test_states_exclude_star(self) -> None:
        self.assertEqual(Lamp.states(), {"OFF", "ON", "BROKEN"})

    def test_events_include_timer_events(self) -> None:
        self.assertEqual(Poller.events(), {"poll", "stop"})
        self.assertEqual(Blinker.events(), {"start", "tick", "pause", "giveup", "resume", "stop", "quit"})

    def test_table_rows_are_normalized(self) -> None:
        class Spaced(Automat):
            initial = "A"
            transitions = [("A", "go", "not   ok", "B", ["act"])]

            def ok(self) -> bool:
                return False

            def act(self) -> None:
                pass

        self.assertEqual(Spaced.table(), [Row("A", "go", "not ok", "B", ("act",))])
        self.assertEqual(Spaced.table()[0].actions, ("act",))

    def test_timer_specs_are_normalized(self) -> None:
        self.assertEqual(Blinker.timer_specs()["tick"], (5.0, frozenset({"BLINKING", "PAUSED"})))


class _Base(Automat):
    """Methods shared by the validation tests' classes."""

    def ok(self) -> bool:
        return True

    def act(self) -> None:
        pass


class ValidationTests(unittest.TestCase):
    def assertTableError(self, fragment: str, **attrs: Any) -> None:
        """Defining a class with ``attrs`` (default: a one-row table) must raise TypeError mentioning ``fragment``."""
        attrs.setdefault("initial", "A")
        attrs.setdefault("transitions", [("A", "tick", None, "A", [])])
        with self.assertRaises(TypeError) as caught:
            type("Bad", (_Base,), attrs)
        self.assertIn(fragment, str(caught.exception))

    def test_abstract_base_without_transitions_is_allowed(self) -> None:
        self.assertEqual(_Base.table(), [])

    def test_abstract_base_cannot_be_instantiated(self) -> None:
        self.assertRaises(TypeError, _Base, Clock())

    def test_unknown_action(self) -> None:
        self.assertTableError("'missing' is not a method", transitions=[("A", "go", None, "B", ["missing"])])

    def test_unknown_guard(self) -> None:
        self.assertTableError("'nope' is not a method", transitions=[("A", "go", "nope", "B", [])])

    def test_unknown_negated_guard(self) -> None:
        self.assertTableError("'nope' is not a method", transitions=[("A", "go", "not nope", "B", [])])

    def test_malformed_guard(self) -> None:
        self.assertTableError("must be 'name' or 'not name'", transitions=[("A", "go", "ok or ok", "B", [])])

    def test_non_callable_action(self) -> None:
        self.assertTableError("'initial' is not a method", transitions=[("A", "go", None, "B", ["initial"])])

    def test_row_of_wrong_length(self) -> None:
        self.assertTableError("transitions[0]", transitions=[("A", "go", None, "B")])

    def test_actions_given_as_bare_string(self) -> None:
        self.assertTableError("actions must be a list", transitions=[("A", "go", None, "B", "act")])

    def test_empty_state_name(self) -> None:
        self.assertTableError("state must be a non-empty string", transitions=[("", "go", None, "B", [])])

    def test_star_event(self) -> None:
        self.assertTableError("'*' is not allowed as an event", transitions=[("A", "*", None, "B", [])])

    def test_initial_not_in_table(self) -> None:
        self.assertTableError("initial 'Z'", initial="Z")

    def test_missing_initial(self) -> None:
        self.assertTableError("initial None", initial=None)

    def test_row_after_unguarded_row_is_unreachable(self) -> None:
        self.assertTableError("unreachable", transitions=[("A", "go", None, "B", []), ("A", "go", "ok", "A", [])])

    def test_timer_state_not_in_table(self) -> None:
        self.assertTableError("states ['Q'] do not appear", timers={"tick": (1, {"A", "Q"})})

    def test_timer_event_never_handled(self) -> None:
        self.assertTableError("no row handles", timers={"tock": (1, {"A"})})

    def test_timer_interval_not_positive(self) -> None:
        self.assertTableError("positive number", timers={"tick": (0, {"A"})})

    def test_timer_states_given_as_bare_string(self) -> None:
        self.assertTableError("set or list", timers={"tick": (1, "A")})

    def test_transitions_not_a_list(self) -> None:
        self.assertTableError("must be a list of rows", transitions="A go B")
