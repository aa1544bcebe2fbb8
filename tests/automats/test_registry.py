"""Tests for automats.registry: numbering, lookup, listing and state-change listeners."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial import unittest

from automats import Automat, Registry


class Switch(Automat):
    initial = "OFF"
    transitions = [
        ("OFF", "flip", None, "ON",  []),
        ("ON",  "flip", None, "OFF", []),
        ("*",   "nop",  None, "*",   []),  # a stay row: never a state change
    ]


class Valve(Automat):
    name = "valve"
    initial = "SHUT"
    timers = {"leak-check": (10.0, {"SHUT"})}
    transitions = [
        ("SHUT", "open",       None, "OPEN", []),
        ("SHUT", "leak-check", None, "SHUT", []),
        ("OPEN", "shut",       None, "SHUT", []),
    ]


class RegistrationTests(unittest.TestCase):
    def test_indices_start_at_one_and_increase(self) -> None:
        registry = Registry()
        machines = [Switch(Clock(), registry=registry) for _ in range(3)]
        self.assertEqual([m.index for m in machines], [1, 2, 3])

    def test_indices_are_not_reused_after_unregister(self) -> None:
        registry = Registry()
        first = Switch(Clock(), registry=registry)
        first.destroy()
        second = Switch(Clock(), registry=registry)
        self.assertEqual(second.index, 2)

    def test_default_id_is_name_and_index(self) -> None:
        registry = Registry()
        Switch(Clock(), registry=registry)
        valve = Valve(Clock(), registry=registry)
        self.assertEqual(valve.id, "valve2")
        self.assertIs(registry.get("valve2"), valve)

    def test_get_unknown_id_returns_none(self) -> None:
        self.assertIsNone(Registry().get("nothing1"))

    def test_register_returns_index_and_is_idempotent(self) -> None:
        registry = Registry()
        switch = Switch(Clock())
        self.assertEqual(registry.register(switch), 1)
        self.assertEqual(registry.register(switch), 1)
        self.assertEqual((switch.index, len(registry)), (1, 1))

    def test_machine_built_without_registry_keeps_its_id(self) -> None:
        registry = Registry()
        switch = Switch(Clock(), machine_id="hall-switch")
        registry.register(switch)
        self.assertIs(registry.get("hall-switch"), switch)

    def test_duplicate_id_is_rejected(self) -> None:
        registry = Registry()
        Switch(Clock(), registry=registry, machine_id="same")
        self.assertRaises(ValueError, Switch, Clock(), registry=registry, machine_id="same")
        self.assertEqual(len(registry), 1)

    def test_machine_in_another_registry_is_rejected(self) -> None:
        switch = Switch(Clock(), registry=Registry())
        self.assertRaises(ValueError, Registry().register, switch)

    def test_non_machine_is_rejected(self) -> None:
        self.assertRaises(TypeError, Registry().register, object())

    def test_destroy_unregisters(self) -> None:
        registry = Registry()
        switch = Switch(Clock(), registry=registry)
        switch.destroy()
        self.assertEqual((len(registry), registry.get(switch.id), switch in registry), (0, None, False))

    def test_unregister_unknown_machine_is_harmless(self) -> None:
        registry = Registry()
        registry.unregister(Switch(Clock()))
        self.assertEqual(len(registry), 0)

    def test_two_registries_are_independent(self) -> None:
        first, second = Registry(), Registry()
        a = Switch(Clock(), registry=first)
        b = Switch(Clock(), registry=second)
        heard: list[str] = []
        first.add_listener(lambda m, old, new, event: heard.append(m.id))
        b.event("flip")
        self.assertEqual((a.index, b.index, a.id, b.id), (1, 1, "switch1", "switch1"))
        self.assertEqual((list(first), list(second), heard), ([a], [b], []))


class LookupTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.registry = Registry()
        self.s1 = Switch(self.clock, registry=self.registry)
        self.v2 = Valve(self.clock, registry=self.registry)
        self.s3 = Switch(self.clock, registry=self.registry)

    def test_find_by_name_in_index_order(self) -> None:
        self.assertEqual(self.registry.find("switch"), [self.s1, self.s3])
        self.assertEqual(self.registry.find("pump"), [])

    def test_iteration_in_index_order(self) -> None:
        self.assertEqual(list(self.registry), [self.s1, self.v2, self.s3])

    def test_list_is_describe_in_index_order(self) -> None:
        self.s3.event("flip")
        listed = self.registry.list()
        self.assertEqual(listed, [self.s1.describe(), self.v2.describe(), self.s3.describe()])
        self.assertEqual([d["index"] for d in listed], [1, 2, 3])

    def test_list_is_json_serialisable(self) -> None:
        self.v2.event("open")
        listed = json.loads(json.dumps(self.registry.list()))
        self.assertEqual(listed[1]["transitions"], [{"time": 0.0, "event": "open", "from": "SHUT", "to": "OPEN"}])
        self.assertEqual(listed[0]["timers"], [])


class ListenerTests(unittest.TestCase):
    def setUp(self) -> None:
        self.registry = Registry()
        self.heard: list[tuple[Any, ...]] = []
        self.registry.add_listener(self.record)

    def record(self, machine: Automat, old: str, new: str, event: str) -> None:
        self.heard.append((machine.id, old, new, event))

    def test_listener_hears_every_registered_machine(self) -> None:
        switch = Switch(Clock(), registry=self.registry)
        valve = Valve(Clock(), registry=self.registry)
        switch.event("flip")
        valve.event("open")
        self.assertEqual(self.heard, [("switch1", "OFF", "ON", "flip"), ("valve2", "SHUT", "OPEN", "open")])

    def test_listener_not_told_of_stays(self) -> None:
        switch = Switch(Clock(), registry=self.registry)
        switch.event("nop")
        self.assertEqual(self.heard, [])

    def test_listener_not_told_after_unregister(self) -> None:
        switch = Switch(Clock(), registry=self.registry)
        self.registry.unregister(switch)
        switch.event("flip")
        self.assertEqual(self.heard, [])

    def test_removed_listener_not_told(self) -> None:
        switch = Switch(Clock(), registry=self.registry)
        self.registry.remove_listener(self.record)
        switch.event("flip")
        self.assertEqual(self.heard, [])

    def test_failing_listener_is_logged_not_propagated(self) -> None:
        logged: list[dict[str, Any]] = []
        registry = Registry(log=Logger(observer=logged.append))
        registry.add_listener(lambda *a: 1 / 0)
        registry.add_listener(self.record)
        switch = Switch(Clock(), registry=registry)
        switch.event("flip")
        switch.event("flip")
        self.assertEqual(switch.state, "OFF")
        self.assertEqual(len(self.heard), 2)
        failures = [e["log_failure"].value for e in logged if "log_failure" in e]
        self.assertEqual(len(failures), 2)
        self.assertIsInstance(failures[0], ZeroDivisionError)

    def test_failing_listener_with_default_logger_is_logged_error(self) -> None:
        registry = Registry()
        registry.add_listener(lambda *a: 1 / 0)
        Switch(Clock(), registry=registry).event("flip")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_non_callable_listener_is_rejected(self) -> None:
        self.assertRaises(TypeError, self.registry.add_listener, "not callable")
