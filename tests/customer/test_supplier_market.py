"""Tests for supplier_connector, supplier_finder and fire_hire, driven with fakes and a Clock."""

from __future__ import annotations

import json
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from automats import Registry
from bitnode.customer.fire_hire import FireHire
from bitnode.customer.roster import SupplierRoster
from bitnode.customer.supplier_connector import SupplierConnector
from bitnode.customer.supplier_finder import SupplierFinder
from bitnode.errors import BadRequest, InsufficientStorage, NotFound, Unavailable


class FakeNetwork:
    """Suppliers that accept, refuse, or are offline, as a test says."""

    def __init__(self) -> None:
        self.behaviour: dict[str, str] = {}  # supplier -> "ok" | "full" | "offline" | "hang"
        self.calls: list[tuple[str, str]] = []
        self.hanging: list[defer.Deferred] = []
        self.customers: dict[str, int] = {}  # the load a supplier reports in its answer, if any

    def _answer(self, op: str, supplier_id: str, value):
        self.calls.append((op, supplier_id))
        how = self.behaviour.get(supplier_id, "ok")
        if how == "full":
            return defer.fail(InsufficientStorage("no space"))
        if how == "offline":
            return defer.fail(Unavailable("no answer"))
        if how == "hang":
            d = defer.Deferred()
            self.hanging.append(d)
            return d
        return defer.succeed(value)

    def request_service(self, supplier_id: str, needed: int):
        answer = {"accepted": True, "quota_bytes": needed}
        if supplier_id in self.customers:
            answer["customers"] = self.customers[supplier_id]
        return self._answer("request", supplier_id, answer)

    def ping(self, supplier_id: str):
        return self._answer("ping", supplier_id, None)

    def cancel_service(self, supplier_id: str):
        return self._answer("cancel", supplier_id, {"cancelled": True})


class ConnectorTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.net = FakeNetwork()

    def connector(self, supplier_id: str = "s1") -> SupplierConnector:
        return SupplierConnector(self.clock, supplier_id, self.net, 1000)

    def test_accepted_then_pinged(self) -> None:
        c = self.connector()
        c.event("connect")
        self.assertEqual(c.state, "CONNECTED")
        self.assertEqual(c.info()["quota_bytes"], 1000)
        self.assertEqual(c.active_timers(), ["timer-ping"])
        self.clock.advance(60)
        self.assertEqual(self.net.calls[-1], ("ping", "s1"))
        self.assertEqual(c.state, "CONNECTED")

    def test_refusal_and_silence_are_different(self) -> None:
        self.net.behaviour = {"s1": "full", "s2": "offline"}
        refused, silent = self.connector("s1"), self.connector("s2")
        refused.event("connect")
        silent.event("connect")
        self.assertEqual((refused.state, refused.refusal), ("REFUSE", "no space"))
        self.assertEqual(refused.offline_for(), 0.0)
        self.assertEqual(silent.state, "DISCONNECTED")
        self.clock.advance(10)
        self.assertEqual(silent.offline_for(), 10.0)

    def test_disconnected_retries_and_recovers(self) -> None:
        self.net.behaviour["s1"] = "offline"
        c = self.connector()
        c.event("connect")
        self.net.behaviour["s1"] = "ok"
        self.clock.advance(30)
        self.assertEqual(c.state, "CONNECTED")
        self.assertIsNone(c.offline_since)
        self.assertEqual(c.failures, 0)

    def test_failed_ping_goes_offline(self) -> None:
        c = self.connector()
        c.event("connect")
        self.net.behaviour["s1"] = "offline"
        self.clock.advance(60)
        self.assertEqual(c.state, "DISCONNECTED")
        self.assertEqual(c.offline_since, 60)

    def test_close_cancels_contract_and_destroys(self) -> None:
        c = self.connector()
        c.event("connect")
        c.event("close")
        self.assertEqual(c.state, "CLOSED")
        self.assertTrue(c.destroyed)
        self.assertIn(("cancel", "s1"), self.net.calls)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unexpected_event_is_logged_not_dropped(self) -> None:
        c = self.connector()
        c.event("service-accepted", {})
        self.assertEqual(c.state, "NO_SERVICE")
        self.assertEqual([u.event for u in c.unexpected], ["service-accepted"])


class Harness:
    """A finder and fire_hire over a fake DHT layer and fake suppliers."""

    def __init__(self, testcase: unittest.TestCase, layer: list[str], wanted: int = 3) -> None:
        self.clock = Clock()
        self.net = FakeNetwork()
        self.layer = layer
        self.wanted = wanted
        self.registry = Registry()
        self.changes: list[tuple[list[str], str]] = []
        self.network = "CONNECTED"
        self.dead_after = 300.0
        self.lookups = 0
        self.finder = SupplierFinder(self.clock, self.random_suppliers, self.make_connector, registry=self.registry)
        directory = testcase.mktemp()
        os.makedirs(directory)
        self.roster_file = os.path.join(directory, "suppliers.json")
        self.roster = SupplierRoster(self.roster_file)
        self.fire_hire = self.make_fire_hire()

    def make_fire_hire(self, **kwargs) -> FireHire:
        kwargs.setdefault("network_state", lambda: self.network)
        kwargs.setdefault("cancel_service", self.net.cancel_service)
        kwargs.setdefault("monotonic", self.clock.seconds)  # no suspend unless a test says so
        return FireHire(self.clock, self.roster, self.finder, self.make_connector, lambda: self.wanted,
                        lambda: self.dead_after, lambda positions, reason: self.changes.append((positions, reason)),
                        registry=self.registry, **kwargs)

    def run(self, seconds: float, step: float = 1.0) -> None:
        """Let ``seconds`` of Clock time pass in small steps (one big step would look like a pause)."""
        whole, rest = divmod(seconds, step)
        self.clock.pump([step] * int(whole) + ([rest] if rest else []))

    def random_suppliers(self, count: int):
        self.lookups += 1
        return defer.succeed(list(self.layer)[:count])

    def make_connector(self, supplier_id: str) -> SupplierConnector:
        return SupplierConnector(self.clock, supplier_id, self.net, 1000, registry=self.registry)


class FinderTests(unittest.TestCase):
    def test_finds_first_willing_candidate_skipping_hired(self) -> None:
        h = Harness(self, ["s1", "s2", "s3"])
        h.net.behaviour["s2"] = "full"
        connector = self.successResultOf(h.finder.find({"s1"}))
        self.assertEqual((connector.supplier_id, connector.state), ("s3", "CONNECTED"))
        self.assertIn("s2", h.finder.refused_at)
        self.assertEqual(h.finder.state, "READY")

    def test_gives_up_after_max_attempts(self) -> None:
        h = Harness(self, ["s1"])
        h.net.behaviour["s1"] = "full"
        self.failureResultOf(h.finder.find(set()), Unavailable)
        self.assertEqual(h.lookups, SupplierFinder.max_attempts)
        # s1 refused recently: not asked again at once, then asked after the memory expires.
        self.failureResultOf(h.finder.find(set()), Unavailable)
        self.assertEqual(h.net.calls.count(("request", "s1")), 1)

    def test_silent_candidate_times_out(self) -> None:
        h = Harness(self, ["s1", "s2"])
        h.net.behaviour["s1"] = "hang"
        d = h.finder.find(set())
        self.assertNoResult(d)
        h.clock.advance(30)
        self.assertEqual(self.successResultOf(d).supplier_id, "s2")

    def test_with_choices_the_least_loaded_of_the_accepting_candidates_is_kept_the_other_cancelled(self) -> None:
        h = Harness(self, ["s1", "s2", "s3"])
        h.finder.choices = 2
        h.net.customers.update({"s1": 7, "s2": 2, "s3": 0})
        connector = self.successResultOf(h.finder.find(set()))
        self.assertEqual((connector.supplier_id, connector.state), ("s2", "CONNECTED"))
        self.assertEqual(h.net.calls, [("request", "s1"), ("request", "s2"), ("cancel", "s1")])
        self.assertEqual(h.finder.refused_at, {})  # s1 said yes: it may be asked again
        self.assertEqual(h.finder.state, "READY")

    def test_with_choices_a_supplier_that_does_not_say_its_load_counts_as_the_busiest(self) -> None:
        h = Harness(self, ["s1", "s2"])
        h.finder.choices = 2
        h.net.customers["s2"] = 50
        self.assertEqual(self.successResultOf(h.finder.find(set())).supplier_id, "s2")

    def test_with_choices_a_silent_candidate_holds_the_answer_up_only_until_the_timer(self) -> None:
        h = Harness(self, ["s1", "s2"])
        h.finder.choices = 2
        h.net.behaviour["s1"] = "hang"
        h.net.customers["s2"] = 9
        d = h.finder.find(set())
        self.assertNoResult(d)
        h.clock.advance(30)
        self.assertEqual(self.successResultOf(d).supplier_id, "s2")
        self.assertIn("s1", h.finder.refused_at)

    def test_with_choices_when_nobody_accepts_it_looks_again(self) -> None:
        h = Harness(self, ["s1", "s2", "s3"])
        h.finder.choices = 2
        h.net.behaviour.update({"s1": "full", "s2": "offline"})
        self.assertEqual(self.successResultOf(h.finder.find(set())).supplier_id, "s3")
        self.assertEqual(h.lookups, 2)
        self.assertEqual(set(h.finder.refused_at), {"s1", "s2"})

    def test_choices_must_be_a_positive_int(self) -> None:
        for bad in (0, -1, 1.5, "2"):
            self.assertRaises(BadRequest, SupplierFinder, Clock(), lambda n: defer.succeed([]), lambda s: None,
                              choices=bad)

    def test_only_one_search_at_a_time(self) -> None:
        h = Harness(self, ["s1"])
        h.net.behaviour["s1"] = "hang"
        h.finder.find(set())
        self.failureResultOf(h.finder.find(set()), Unavailable)


class FireHireTests(unittest.TestCase):
    def test_hires_up_to_wanted_and_persists_positions(self) -> None:
        h = Harness(self, ["s1", "s2", "s3", "s4"])
        h.fire_hire.event("init")
        self.assertEqual(h.fire_hire.state, "READY")
        self.assertEqual(h.roster.positions, ["s1", "s2", "s3"])
        with open(h.roster_file) as handle:
            self.assertEqual(json.load(handle)["positions"], ["s1", "s2", "s3"])
        self.assertEqual(len(h.changes), 3)
        self.assertEqual([s["state"] for s in h.fire_hire.suppliers()], ["CONNECTED"] * 3)

    def test_dead_supplier_is_fired_and_replaced_in_its_position(self) -> None:
        h = Harness(self, ["s1", "s2", "s3", "s4"])
        h.fire_hire.event("init")
        h.net.behaviour["s2"] = "offline"
        h.run(60)  # ping fails: s2 offline
        self.assertEqual(h.roster.positions, ["s1", "s2", "s3"])  # not dead yet
        h.run(240)
        self.assertEqual(h.roster.positions, ["s1", "s2", "s3"])  # 240 s offline, still not dead
        h.run(120)  # the next check after 300 s offline
        self.assertEqual(h.roster.positions, ["s1", "s4", "s3"])
        self.assertIn("fired s2 at 1", h.changes[-2][1])
        # s2 keeps its blocks (no CancelService) until storage says they are rebuilt on s4
        self.assertNotIn(("cancel", "s2"), h.net.calls)
        self.assertEqual([(r["supplier_id"], r["position"], r["fault"]) for r in h.fire_hire.retiring()],
                         [("s2", 1, True)])

    def test_with_a_spread_a_dead_supplier_is_fired_after_dead_after_plus_its_drawn_share(self) -> None:
        h = Harness(self, ["s1", "s2", "s3", "s4"])
        draws: list[tuple[float, float]] = []

        class Half:
            def uniform(self, low: float, high: float) -> float:
                draws.append((low, high))
                return low + (high - low) / 2

        h.fire_hire = h.make_fire_hire(dead_spread=lambda: 1.0, rng=Half())
        h.fire_hire.event("init")
        h.net.behaviour["s2"] = "offline"
        h.run(60)  # ping fails: s2 offline
        h.run(360)  # 360 s offline: past dead_after (300), not past 300 + its share (150)
        self.assertEqual(h.roster.positions, ["s1", "s2", "s3"])
        self.assertEqual(draws, [(0.0, 300.0)])  # drawn once for this silence
        h.run(120)
        self.assertEqual(h.roster.positions, ["s1", "s4", "s3"])
        self.assertEqual(draws, [(0.0, 300.0)])

    def test_no_candidate_leaves_a_gap_and_retries_on_timer(self) -> None:
        h = Harness(self, ["s1", "s2"])
        h.fire_hire.event("init")
        self.assertEqual(h.roster.positions, ["s1", "s2"])
        self.assertTrue(h.fire_hire.shortage)
        self.assertEqual(h.fire_hire.state, "WAITING")
        self.assertIn("could not hire a supplier", h.fire_hire.waiting)
        h.layer.append("s3")
        h.run(60)
        self.assertEqual(h.roster.positions, ["s1", "s2", "s3"])
        self.assertEqual(h.fire_hire.shortage, "")

    def test_shrinking_retires_the_last_positions_without_blame(self) -> None:
        h = Harness(self, ["s1", "s2", "s3"])
        h.fire_hire.event("init")
        h.wanted = 2
        h.fire_hire.event("restart")
        self.assertEqual(h.roster.positions, ["s1", "s2"])
        self.assertNotIn(("cancel", "s3"), h.net.calls)  # its blocks are read until the files are re-laid out
        self.assertEqual([(r["supplier_id"], r["position"], r["fault"], r["reason"]) for r in h.fire_hire.retiring()],
                         [("s3", 2, False, "fewer suppliers wanted")])
        self.assertNotIn("s3", h.fire_hire.fired_at)  # not its fault: it may be hired again later

    def test_replace_with_a_named_supplier_keeps_the_position(self) -> None:
        h = Harness(self, ["s1", "s2", "s3", "s4"])
        h.fire_hire.event("init")
        h.fire_hire.replace(0, "s9")
        self.assertEqual(h.roster.positions, ["s9", "s2", "s3"])
        self.assertRaises(BadRequest, h.fire_hire.replace, 7)
        h.roster.save(["", "s2", "s3"])
        self.assertRaises(NotFound, h.fire_hire.replace, 0)

    def test_replace_with_a_refusing_supplier_hires_a_random_one(self) -> None:
        h = Harness(self, ["s1", "s2", "s3", "s4"])
        h.fire_hire.event("init")
        h.net.behaviour["s9"] = "full"
        h.fire_hire.replace(1, "s9")
        self.assertEqual(h.roster.positions, ["s1", "s4", "s3"])

    def test_restart_reconnects_saved_roster(self) -> None:
        h = Harness(self, ["s1", "s2", "s3"])
        h.fire_hire.event("init")
        h.fire_hire.event("shutdown")
        h.net.calls.clear()
        h.roster = SupplierRoster(h.roster_file)
        h.finder = SupplierFinder(h.clock, h.random_suppliers, h.make_connector)
        again = h.make_fire_hire()
        again.event("init")
        self.assertEqual(h.roster.positions, ["s1", "s2", "s3"])
        self.assertEqual(sorted(c for c in h.net.calls if c[0] == "request"),
                         [("request", "s1"), ("request", "s2"), ("request", "s3")])
        self.assertEqual(again.state, "READY")

    def test_shutdown_leaves_no_timers(self) -> None:
        h = Harness(self, ["s1", "s2", "s3"])
        h.fire_hire.event("init")
        h.fire_hire.event("shutdown")
        self.assertEqual(h.clock.getDelayedCalls(), [])
        self.assertEqual(h.registry.list(), [])
