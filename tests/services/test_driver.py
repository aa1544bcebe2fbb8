"""Tests for bitnode.services.driver (and the Service base class) with fake services."""

from __future__ import annotations

import os
from typing import Protocol

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial import unittest

from bitnode.errors import BadRequest, Conflict, NotFound, Timeout, Unavailable
from bitnode.main.options import INTEGER, Option
from bitnode.main.settings import Settings
from bitnode.services import driver as driver_module
from bitnode.services.base import Service
from bitnode.services.driver import DEPENDS_OFF, FAILED, OFF, ON, ServiceDriver, dependency_order


class FakeNode:
    """What services see as ``self.ctx``: settings, a clock and a journal of start/stop calls."""

    def __init__(self, settings=None, clock=None):
        self.settings = settings
        self.clock = clock
        self.journal: list[str] = []
        self.fail_start: set[str] = set()
        self.fail_stop: set[str] = set()
        self.pending: dict[str, defer.Deferred] = {}
        self.hold_start: set[str] = set()
        self.hold_stop: set[str] = set()
        self.start_errors: dict[str, Exception] = {}


class Fake(Service):
    """Logs start/stop on the node; fails or holds when the node says so."""

    def _act(self, what: str, fail: set[str], hold: set[str]):
        self.ctx.journal.append(f"{what} {self.name}")
        if what == "start" and self.name in self.ctx.start_errors:
            raise self.ctx.start_errors[self.name]
        if self.name in fail:
            raise RuntimeError(f"{self.name} cannot {what}")
        if self.name in hold:
            d = self.ctx.pending[f"{what} {self.name}"] = defer.Deferred()
            return d
        return defer.succeed(None) if what == "stop" else None

    def start(self):
        return self._act("start", self.ctx.fail_start, self.ctx.hold_start)

    def stop(self):
        return self._act("stop", self.ctx.fail_stop, self.ctx.hold_stop)

    def status(self):
        return {"ticks": 3}


class Base(Fake):
    name = "service_base"
    description = "the bottom"
    options = (Option("services/base/size", INTEGER, 4, "How many.", minimum=1),)


class Middle(Fake):
    name = "service_middle_part"
    requires = {"base": Base}


class Top(Fake):
    name = "service_top"
    requires = {"middle": Middle, "base": Base}


class Other(Fake):
    name = "service_other"


class Optional(Fake):
    name = "service_optional"
    enabled_by_default = False
    requires = {"base": Base}


ALL = (Top, Optional, Other, Middle, Base)


def assert_order_refused(case: unittest.TestCase, services: tuple, reason: str) -> None:
    """dependency_order refuses ``services`` with a ValueError that says ``reason``."""
    err = case.assertRaises(ValueError, dependency_order, services)
    case.assertIn(reason, str(err))


class DependencyOrderTests(unittest.TestCase):
    def test_dependencies_first(self) -> None:
        names = [cls.name for cls in dependency_order(ALL)]
        for cls in ALL:
            for dep in cls.requires.values():
                self.assertLess(names.index(dep.name), names.index(cls.name))
        self.assertEqual(sorted(names), sorted(cls.name for cls in ALL))

    def test_unknown_dependency(self) -> None:
        class Missing(Fake):
            name = "service_missing"

        class Lonely(Fake):
            name = "service_lonely"
            requires = {"missing": Missing}

        assert_order_refused(self, (Lonely,), "service_lonely depends on unknown service service_missing")

    def test_repeated_or_missing_name(self) -> None:
        class Twin(Fake):
            name = "service_base"

        class Nameless(Fake):
            pass

        assert_order_refused(self, (Base, Twin), "Twin")
        self.assertRaises(ValueError, dependency_order, (Nameless,))

    def test_cycle(self) -> None:
        class A(Fake):
            name = "service_a"

        class B(Fake):
            name = "service_b"
            requires = {"a": A}

        A.requires = {"b": B}

        assert_order_refused(self, (A, B), "cycle")
        assert_order_refused(self, (A, B), "service_a -> service_b -> service_a")


class ServiceBaseTests(unittest.TestCase):
    def test_config_keys(self) -> None:
        self.assertEqual(Middle.config_prefix(), "services/middle-part")
        self.assertEqual(Middle.enabled_key(), "services/middle-part/enabled")
        option = Optional.enabled_option()
        self.assertEqual((option.key, option.default, option.kind.name),
                         ("services/optional/enabled", False, "boolean"))

    def test_defaults_do_nothing(self) -> None:
        service = Service(object())
        self.assertIsNone(service.start())
        self.assertIsNone(service.stop())
        self.assertEqual(service.status(), {})


class DriverTestCase(unittest.TestCase):
    classes = ALL

    def setUp(self) -> None:
        self.clock = Clock()
        self.node = FakeNode()
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "settings.json")
        self.settings = Settings(self.path, ())
        self.node.settings, self.node.clock = self.settings, self.clock
        self.driver = ServiceDriver(self.node, self.classes)

    def tearDown(self) -> None:
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def state(self, name: str) -> str:
        return self.driver.info(name)["state"]

    def states(self) -> dict:
        return {item["name"]: item["state"] for item in self.driver.list()}

    def started(self) -> None:
        self.successResultOf(self.driver.start_all())
        del self.node.journal[:]


class StartStopAllTests(DriverTestCase):
    def test_options_registered(self) -> None:
        self.assertEqual(self.settings.get("services/base/size"), 4)
        self.assertEqual(self.settings.get("services/middle-part/enabled"), True)
        self.assertEqual(self.settings.get("services/optional/enabled"), False)
        self.assertRaises(BadRequest, self.settings.set, "services/base/size", 0)

    def test_names_in_dependency_order(self) -> None:
        names = self.driver.names()
        self.assertLess(names.index("service_base"), names.index("service_middle_part"))
        self.assertLess(names.index("service_middle_part"), names.index("service_top"))
        self.assertIsInstance(self.driver.get("service_top"), Top)
        self.assertIs(self.driver.get("service_top").ctx, self.node)
        self.assertRaises(NotFound, self.driver.get, "service_nope")

    def test_start_all_starts_enabled_in_order(self) -> None:
        self.successResultOf(self.driver.start_all())
        order = [entry.split()[1] for entry in self.node.journal]
        self.assertEqual(order, [n for n in self.driver.names() if n != "service_optional"])
        self.assertEqual(self.states(), {"service_base": ON, "service_middle_part": ON, "service_top": ON,
                                         "service_other": ON, "service_optional": OFF})
        self.assertTrue(self.driver.is_on("service_top"))
        self.assertFalse(self.driver.is_on("service_optional"))
        self.assertFalse(self.driver.is_on("service_nope"))

    def test_failed_dependency_reported(self) -> None:
        self.node.fail_start.add("service_base")
        self.successResultOf(self.driver.start_all())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        base = self.driver.info("service_base")
        self.assertEqual(base["state"], FAILED)
        self.assertEqual(base["reason"], "start failed: service_base cannot start")
        middle = self.driver.info("service_middle_part")
        self.assertEqual(middle["state"], DEPENDS_OFF)
        self.assertEqual(middle["reason"], "needs service_base (FAILED)")
        top = self.driver.info("service_top")
        self.assertEqual(top["state"], DEPENDS_OFF)
        self.assertIn("service_middle_part (DEPENDS_OFF)", top["reason"])
        self.assertIn("service_base (FAILED)", top["reason"])
        self.assertEqual(self.state("service_other"), ON)
        self.assertEqual(self.node.journal, ["start service_base", "start service_other"])

    def test_disabled_dependency_reported(self) -> None:
        self.settings.set("services/base/enabled", False)
        self.successResultOf(self.driver.start_all())
        self.assertEqual(self.state("service_base"), OFF)
        self.assertEqual(self.driver.info("service_middle_part")["reason"], "needs service_base (OFF)")

    def test_deferred_start(self) -> None:
        self.node.hold_start.add("service_base")
        d = self.driver.start_all()
        self.assertNoResult(d)
        self.assertEqual(self.state("service_base"), "STARTING")
        self.assertEqual(self.node.journal, ["start service_base"])
        self.node.pending["start service_base"].callback(None)
        self.successResultOf(d)
        self.assertEqual(self.state("service_top"), ON)

    def test_deferred_start_failure(self) -> None:
        self.node.hold_start.add("service_base")
        d = self.driver.start_all()
        self.node.pending["start service_base"].errback(RuntimeError("late failure"))
        self.successResultOf(d)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.driver.info("service_base")["reason"], "start failed: late failure")
        self.assertEqual(self.state("service_middle_part"), DEPENDS_OFF)

    def test_stop_all_reverse_order(self) -> None:
        self.started()
        self.successResultOf(self.driver.stop_all())
        order = [entry.split()[1] for entry in self.node.journal]
        running = [n for n in self.driver.names() if n != "service_optional"]
        self.assertEqual(order, list(reversed(running)))
        self.assertEqual(set(self.states().values()), {OFF})
        # stop_all does not switch anything off.
        self.assertTrue(self.settings.get("services/top/enabled"))

    def test_stop_failure_reported(self) -> None:
        self.started()
        self.node.fail_stop.add("service_middle_part")
        self.successResultOf(self.driver.stop_all())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.state("service_middle_part"), FAILED)
        self.assertIn("stop failed", self.driver.info("service_middle_part")["reason"])
        self.assertEqual(self.state("service_base"), OFF)

    def test_stop_that_hangs_times_out(self) -> None:
        self.started()
        self.node.hold_stop.add("service_top")
        d = self.driver.stop_all()
        self.assertNoResult(d)
        self.clock.advance(driver_module.STOP_TIMEOUT)
        self.successResultOf(d)
        self.assertEqual(len(self.flushLoggedErrors(defer.TimeoutError)), 1)
        self.assertEqual(self.state("service_top"), FAILED)
        self.assertEqual(self.state("service_base"), OFF)


class StartStopOneTests(DriverTestCase):
    def test_unknown_service(self) -> None:
        for call in (self.driver.start, self.driver.stop, self.driver.restart, self.driver.info):
            self.assertRaises(NotFound, call, "service_nope")
        self.assertRaises(NotFound, self.driver.start, None)

    def test_start_enables_and_persists(self) -> None:
        self.started()
        info = self.successResultOf(self.driver.start("service_optional"))
        self.assertEqual((info["name"], info["state"], info["enabled"]), ("service_optional", ON, True))
        self.assertTrue(Settings(self.path, (Optional.enabled_option(),)).get("services/optional/enabled"))

    def test_start_with_dependency_off_conflicts(self) -> None:
        self.settings.set("services/base/enabled", False)
        self.successResultOf(self.driver.start_all())
        failure = self.failureResultOf(self.driver.start("service_middle_part"), Conflict)
        self.assertEqual(failure.value.http_code, 409)
        self.assertIn("service_base which is OFF", str(failure.value))
        self.assertEqual(self.node.journal, ["start service_other"])

    def test_start_dependency_starts_waiting_dependents(self) -> None:
        self.settings.set("services/base/enabled", False)
        self.successResultOf(self.driver.start_all())
        self.assertEqual(self.state("service_top"), DEPENDS_OFF)
        info = self.successResultOf(self.driver.start("service_base"))
        self.assertEqual(info["state"], ON)
        self.assertEqual(self.state("service_middle_part"), ON)
        self.assertEqual(self.state("service_top"), ON)
        # Optional is disabled: it stays off.
        self.assertEqual(self.state("service_optional"), OFF)

    def test_failed_start_reported_in_answer(self) -> None:
        self.node.fail_start.add("service_optional")
        self.started()
        info = self.successResultOf(self.driver.start("service_optional"))
        self.assertEqual(info["state"], FAILED)
        self.assertIn("cannot start", info["reason"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stop_stops_dependents_first(self) -> None:
        self.started()
        info = self.successResultOf(self.driver.stop("service_base"))
        self.assertEqual((info["state"], info["enabled"]), (OFF, False))
        self.assertEqual(self.node.journal, ["stop service_top", "stop service_middle_part", "stop service_base"])
        for name in ("service_middle_part", "service_top"):
            item = self.driver.info(name)
            self.assertEqual((item["state"], item["enabled"]), (DEPENDS_OFF, True))
            self.assertEqual(item["reason"], "needs service_base (OFF)")
        self.assertEqual(self.state("service_other"), ON)
        self.assertFalse(Settings(self.path, (Base.enabled_option(),)).get("services/base/enabled"))

    def test_stop_then_start_again(self) -> None:
        self.started()
        self.successResultOf(self.driver.stop("service_base"))
        self.successResultOf(self.driver.start("service_base"))
        self.assertEqual(self.state("service_top"), ON)

    def test_stop_of_waiting_service_clears_reason(self) -> None:
        self.settings.set("services/base/enabled", False)
        self.successResultOf(self.driver.start_all())
        info = self.successResultOf(self.driver.stop("service_middle_part"))
        self.assertEqual((info["state"], info["enabled"]), (OFF, False))
        self.assertNotIn("reason", info)

    def test_operations_are_serialised(self) -> None:
        self.node.hold_start.add("service_base")
        first = self.driver.start_all()
        second = self.driver.stop("service_other")
        self.assertNoResult(second)
        self.node.pending["start service_base"].callback(None)
        self.successResultOf(first)
        self.assertEqual(self.successResultOf(second)["state"], OFF)
        self.assertEqual(self.node.journal[-1], "stop service_other")


class StartLoggingTests(DriverTestCase):
    """An expected start failure is a one-line warning; only a bug gets a traceback."""

    def setUp(self) -> None:
        super().setUp()
        self.logged: list[dict] = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def test_typed_error_is_a_warning_with_the_reason(self) -> None:
        self.node.start_errors["service_base"] = Conflict("no identity yet: create one first")
        self.successResultOf(self.driver.start_all())
        self.assertEqual(self.flushLoggedErrors(), [])
        (event,) = [e for e in self.logged if "failed to start" in e.get("log_format", "")]
        self.assertEqual(event["log_level"], LogLevel.warn)
        self.assertNotIn("log_failure", event)
        self.assertEqual(formatEvent(event), "service_base failed to start: no identity yet: create one first")
        self.assertEqual(self.driver.info("service_base")["reason"], "start failed: no identity yet: create one first")

    def test_unexpected_error_has_a_traceback(self) -> None:
        self.node.fail_start.add("service_other")
        self.successResultOf(self.driver.start_all())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        (event,) = [e for e in self.logged if "failed to start" in e.get("log_format", "")]
        self.assertEqual(event["log_level"], LogLevel.critical)
        self.assertIn("log_failure", event)


class SwitchTests(DriverTestCase):
    """The services/<x>/enabled settings start and stop services once the driver runs."""

    def test_switch_on_starts_and_off_stops(self) -> None:
        self.started()
        self.settings.set("services/optional/enabled", True)
        self.assertEqual(self.state("service_optional"), ON)
        self.settings.set("services/optional/enabled", False)
        self.assertEqual(self.state("service_optional"), OFF)
        self.assertEqual(self.node.journal, ["start service_optional", "stop service_optional"])

    def test_switching_a_dependency_moves_its_dependents(self) -> None:
        self.started()
        self.settings.set("services/base/enabled", False)
        self.assertEqual(self.node.journal, ["stop service_top", "stop service_middle_part", "stop service_base"])
        self.assertEqual(self.driver.info("service_top")["reason"], "needs service_base (OFF)")
        del self.node.journal[:]
        self.settings.set("services/base/enabled", True)
        self.assertEqual(self.node.journal, ["start service_base", "start service_middle_part", "start service_top"])
        self.assertEqual(self.state("service_top"), ON)

    def test_switch_on_with_dependency_off_waits_for_it(self) -> None:
        self.started()
        self.successResultOf(self.driver.stop("service_base"))
        self.settings.set("services/optional/enabled", True)
        info = self.driver.info("service_optional")
        self.assertEqual((info["state"], info["reason"]), (DEPENDS_OFF, "needs service_base (OFF)"))
        self.successResultOf(self.driver.start("service_base"))
        self.assertEqual(self.state("service_optional"), ON)

    def test_service_start_and_stop_act_once(self) -> None:
        self.started()
        self.successResultOf(self.driver.start("service_optional"))
        self.successResultOf(self.driver.stop("service_optional"))
        self.assertEqual(self.node.journal, ["start service_optional", "stop service_optional"])
        self.assertFalse(self.settings.get("services/optional/enabled"))

    def test_switches_ignored_before_start_all_and_after_stop_all(self) -> None:
        self.settings.set("services/optional/enabled", True)
        self.assertEqual(self.node.journal, [])
        self.started()
        self.assertEqual(self.state("service_optional"), ON)
        self.successResultOf(self.driver.stop_all())
        del self.node.journal[:]
        self.settings.set("services/other/enabled", False)
        self.settings.set("services/other/enabled", True)
        self.assertEqual(self.node.journal, [])

    def test_switch_waits_for_a_running_operation(self) -> None:
        self.node.hold_start.add("service_base")
        d = self.driver.start_all()
        self.settings.set("services/other/enabled", False)
        self.settings.set("services/optional/enabled", True)
        self.settings.set("services/optional/enabled", False)  # flipped back before its turn: nothing to do
        self.node.pending["start service_base"].callback(None)
        self.successResultOf(d)
        self.assertEqual(self.state("service_other"), OFF)
        self.assertEqual(self.state("service_optional"), OFF)
        self.assertNotIn("start service_optional", self.node.journal)

    def test_failed_switch_on_is_reported_in_the_state(self) -> None:
        self.started()
        self.node.start_errors["service_optional"] = Conflict("not configured")
        self.settings.set("services/optional/enabled", True)
        info = self.driver.info("service_optional")
        self.assertEqual((info["state"], info["enabled"]), (FAILED, True))
        self.assertEqual(info["reason"], "start failed: not configured")

    def test_failed_service_start_stays_enabled(self) -> None:
        self.started()
        self.node.start_errors["service_optional"] = Conflict("not configured")
        info = self.successResultOf(self.driver.start("service_optional"))
        self.assertEqual((info["state"], info["enabled"]), (FAILED, True))
        # Tried again at the next start of the node.
        self.successResultOf(self.driver.stop_all())
        del self.node.start_errors["service_optional"]
        self.successResultOf(self.driver.start_all())
        self.assertEqual(self.state("service_optional"), ON)


class RestartTests(DriverTestCase):
    def test_restart_stops_and_starts_dependents(self) -> None:
        self.started()
        info = self.successResultOf(self.driver.restart("service_middle_part"))
        self.assertEqual(info["state"], ON)
        self.assertEqual(self.node.journal, ["stop service_top", "stop service_middle_part",
                                             "start service_middle_part", "start service_top"])
        self.assertTrue(self.settings.get("services/middle-part/enabled"))

    def test_restart_disabled_conflicts(self) -> None:
        self.started()
        self.assertRaises(Conflict, self.driver.restart, "service_optional")

    def test_restart_bad_timeout(self) -> None:
        self.assertRaises(BadRequest, self.driver.restart, "service_base", 0)

    def test_restart_timeout(self) -> None:
        self.started()
        self.node.hold_start.add("service_base")
        d = self.driver.restart("service_base", wait_timeout=5)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        failure = self.failureResultOf(d, Timeout)
        self.assertEqual(failure.value.http_code, 503)
        self.assertIn("service_base did not restart within 5 seconds", str(failure.value))
        # The hung start was cancelled, so the driver is free again.
        self.flushLoggedErrors(defer.CancelledError)
        self.assertEqual(self.state("service_base"), FAILED)
        self.node.hold_start.clear()
        self.assertEqual(self.successResultOf(self.driver.restart("service_base"))["state"], ON)
        self.assertEqual(self.state("service_top"), ON)

    def test_failed_restart_leaves_dependents_explained(self) -> None:
        self.started()
        self.node.fail_start.add("service_base")
        info = self.successResultOf(self.driver.restart("service_base"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(info["state"], FAILED)
        self.assertEqual(self.state("service_middle_part"), DEPENDS_OFF)
        self.assertEqual(self.driver.info("service_middle_part")["reason"], "needs service_base (FAILED)")


class InfoTests(DriverTestCase):
    def test_info_shape(self) -> None:
        self.started()
        info = self.driver.info("service_base")
        self.assertEqual(info, {
            "index": self.driver.names().index("service_base"),
            "name": "service_base",
            "state": ON,
            "enabled": True,
            "depends": [],
            "optional": [],
            "dependents": ["service_middle_part", "service_top", "service_optional"],
            "used_by": [],
            "config_path": "services/base/enabled",
            "description": "the bottom",
            "installed": True,
            "status": {"ticks": 3},
        })

    def test_status_only_when_on(self) -> None:
        self.assertNotIn("status", self.driver.info("service_base"))

    def test_failing_status_logged(self) -> None:
        self.started()

        def broken():
            raise RuntimeError("status bug")

        self.driver.get("service_other").status = broken
        self.assertNotIn("status", self.driver.info("service_other"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_with_configs(self) -> None:
        info = self.driver.info("service_base", with_configs=True)
        self.assertEqual([c["key"] for c in info["configs"]], ["services/base/enabled", "services/base/size"])
        self.assertEqual(info["configs"][1], {"key": "services/base/size", "value": 4, "type": "integer"})

    def test_list(self) -> None:
        items = self.driver.list()
        self.assertEqual([item["name"] for item in items], self.driver.names())
        self.assertEqual([item["index"] for item in items], list(range(len(ALL))))
        self.assertNotIn("configs", items[0])
        self.assertIn("configs", self.driver.list(with_configs=True)[0])


class Port(Protocol):
    """A port a consumer declares by type; some service provides it."""

    def answer(self) -> int: ...


class Provider(Fake):
    name = "service_provider"
    requires = {"base": Base}
    provides = (Port,)

    def answer(self) -> int:
        return 42


class Consumer(Fake):
    name = "service_consumer"
    requires = {"base": Base}
    optional = {"port": Port, "other": Other}


class DeclaredDependencyTests(DriverTestCase):
    """requires / optional / provides: start-up order, ``self.deps``, and lookups by class."""

    classes = (Consumer, Provider, Other, Base)

    def test_optional_dependencies_start_first(self) -> None:
        names = self.driver.names()
        self.assertLess(names.index("service_provider"), names.index("service_consumer"))
        self.assertLess(names.index("service_other"), names.index("service_consumer"))

    def test_deps_are_the_running_neighbours(self) -> None:
        self.started()
        consumer = self.driver.get("service_consumer")
        self.assertIs(consumer.deps.base, self.driver.get("service_base"))
        self.assertIs(consumer.deps.port, self.driver.get("service_provider"))
        self.assertEqual(consumer.deps.port.answer(), 42)
        self.assertIs(consumer.deps.other, self.driver.get("service_other"))
        self.assertTrue(consumer.deps.is_on("port"))
        self.assertRaises(AttributeError, getattr, consumer.deps, "gateway")

    def test_an_optional_neighbour_that_is_off_is_none_and_does_not_stop_its_user(self) -> None:
        self.started()
        self.successResultOf(self.driver.stop("service_provider"))
        consumer = self.driver.get("service_consumer")
        self.assertIsNone(consumer.deps.port)
        self.assertFalse(consumer.deps.is_on("port"))
        self.assertIs(consumer.deps.installed("port"), self.driver.get("service_provider"))
        self.assertEqual(self.state("service_consumer"), ON)
        self.assertEqual(self.node.journal, ["stop service_provider"])

    def test_an_optional_port_nobody_provides_is_none(self) -> None:
        driver = ServiceDriver(self.node, (Consumer, Other, Base))
        self.successResultOf(driver.start_all())
        consumer = driver.get("service_consumer")
        self.assertIsNone(consumer.deps.port)
        self.assertIsNone(consumer.deps.installed("port"))
        self.assertEqual(driver.info("service_consumer")["optional"], ["service_other"])
        self.successResultOf(driver.stop_all())

    def test_info_shows_the_graph(self) -> None:
        consumer = self.driver.info("service_consumer")
        self.assertEqual((consumer["depends"], consumer["optional"]),
                         (["service_base"], ["service_provider", "service_other"]))
        self.assertEqual(self.driver.info("service_provider")["used_by"], ["service_consumer"])
        self.assertEqual(self.driver.info("service_base")["dependents"], ["service_provider", "service_consumer"])

    def test_a_port_provided_twice_is_refused(self) -> None:
        class Twin(Provider):
            name = "service_twin"

        assert_order_refused(self, (Consumer, Provider, Twin, Other, Base), "Port is provided by more than one service")

    def test_a_required_port_nobody_provides_is_refused(self) -> None:
        class Needy(Fake):
            name = "service_needy"
            requires = {"port": Port}

        assert_order_refused(self, (Needy,), "service_needy depends on unknown service Port")

    def test_a_stand_in_of_the_same_name_satisfies_a_class_dependency(self) -> None:
        class FakeBase(Fake):
            name = "service_base"

        ctx = FakeNode(Settings(os.path.join(os.path.dirname(self.path), "other.json"), ()), self.clock)
        driver = ServiceDriver(ctx, (Consumer, FakeBase))
        self.assertIsInstance(driver.get("service_consumer").deps.base, FakeBase)


class LookupByClassTests(DriverTestCase):
    """driver.running / find / installed / state: how other layers reach a service."""

    def test_a_running_service_is_returned(self) -> None:
        self.started()
        self.assertIs(self.driver.running(Top), self.driver.get("service_top"))
        self.assertIs(self.driver.find(Top), self.driver.get("service_top"))

    def test_a_stopped_service_is_503_with_its_state(self) -> None:
        err = self.assertRaises(Unavailable, self.driver.running, Top)
        self.assertEqual((err.http_code, str(err)), (503, "service_top is not running (OFF)"))
        self.assertIsNone(self.driver.find(Top))
        self.assertIs(self.driver.installed(Top), self.driver.get("service_top"))
        self.assertEqual(self.driver.state(Top), OFF)

    def test_a_failed_service_is_503_with_its_reason(self) -> None:
        self.node.fail_start.add("service_base")
        self.successResultOf(self.driver.start_all())
        self.flushLoggedErrors(RuntimeError)
        err = self.assertRaises(Unavailable, self.driver.running, Base)
        self.assertEqual(str(err), "service_base is not running (FAILED: start failed: service_base cannot start)")

    def test_a_service_the_node_does_not_have_is_503_not_installed(self) -> None:
        err = self.assertRaises(Unavailable, self.driver.running, Provider)
        self.assertEqual(str(err), "service_provider is not installed")
        self.assertIsNone(self.driver.installed(Provider))
        self.assertEqual(self.driver.state(Provider), "NOT_INSTALLED")


class StateEventTests(DriverTestCase):
    """Every state change is heard (the node publishes it as ``service-state-changed``)."""

    def setUp(self) -> None:
        super().setUp()
        self.changes: list[dict] = []
        self.driver = ServiceDriver(self.node, self.classes, on_state_changed=self.changes.append)

    def test_start_and_stop_are_heard_with_their_reasons(self) -> None:
        self.node.fail_start.add("service_base")
        self.successResultOf(self.driver.start_all())
        self.flushLoggedErrors(RuntimeError)
        base = [(c["old_state"], c["new_state"], c["reason"]) for c in self.changes if c["name"] == "service_base"]
        self.assertEqual(base, [(OFF, "STARTING", ""), ("STARTING", FAILED, "start failed: service_base cannot start")])
        middle = [c for c in self.changes if c["name"] == "service_middle_part"]
        self.assertEqual([(c["new_state"], c["reason"]) for c in middle],
                         [(DEPENDS_OFF, "needs service_base (FAILED)")])

    def test_a_stopped_dependency_says_why_its_dependents_are_off_once(self) -> None:
        self.started()
        del self.changes[:]
        self.successResultOf(self.driver.stop("service_base"))
        top = [(c["old_state"], c["new_state"]) for c in self.changes if c["name"] == "service_top"]
        self.assertEqual(top, [(ON, "STOPPING"), ("STOPPING", DEPENDS_OFF)])
