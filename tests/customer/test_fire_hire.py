"""fire_hire judges suppliers only when it can see, one position at a time, and never drops the last copy.

Clock-driven: fake suppliers (tests/customer/test_supplier_market.py FakeNetwork), a
fake network state, and both clocks injected (``monotonic`` follows the Clock unless a
test suspends the machine). Time passes in small steps, for hours or days.
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.trial import unittest

from bitnode.customer.fire_hire import FIRED_MEMORY, RELEASE_FOR
from bitnode.customer.roster import SupplierRoster
from bitnode.customer.supplier_finder import SupplierFinder
from tests.customer.test_supplier_market import Harness

DEAD_AFTER = 300.0
HOUR = 3600.0
DAY = 86400.0


class Setup:
    """Four suppliers hired (k=2 of n=4), a fake network state, a suspendable monotonic clock, log kept."""

    def __init__(self, testcase: unittest.TestCase, hired: int = 4, spare: int = 3):
        ids = [f"s{i}" for i in range(1, hired + spare + 1)]
        self.h = Harness(testcase, ids, wanted=hired)
        self.h.dead_after = DEAD_AFTER
        self.suspended = 0.0  # seconds the monotonic clock did not see
        self.network_checks = 0
        self.logged: list[dict] = []
        self.cancelled: list[str] = []
        self.h.fire_hire.event("shutdown")  # the Harness's own, replaced by one with our neighbours
        self.h.finder = SupplierFinder(self.h.clock, self.h.random_suppliers, self.h.make_connector,
                                       registry=self.h.registry)
        self.fire_hire = self.h.fire_hire = self.make()
        self.fire_hire.event("init")
        self.first = list(self.h.roster.positions)
        self.h.changes.clear()
        self.h.net.calls.clear()

    def make(self):
        return self.h.make_fire_hire(monotonic=lambda: self.h.clock.seconds() - self.suspended,
                                     check_network=self.count_check, cancel_service=self.cancel,
                                     log=Logger(observer=self.logged.append))

    def cancel(self, supplier_id: str):
        """CancelService; a supplier that answered it has deleted our blocks (kept in ``cancelled``)."""
        return self.h.net.cancel_service(supplier_id).addCallback(lambda _: self.cancelled.append(supplier_id))

    def count_check(self) -> None:
        self.network_checks += 1

    def silence(self, *suppliers: str) -> None:
        for supplier_id in suppliers:
            self.h.net.behaviour[supplier_id] = "offline"

    def answer(self, *suppliers: str) -> None:
        for supplier_id in suppliers:
            self.h.net.behaviour[supplier_id] = "ok"

    def run(self, seconds: float, step: float = 5.0) -> None:
        self.h.run(seconds, step)

    def fired(self) -> list[str]:
        return [reason for _, reason in self.h.changes if reason.startswith("fired")]

    def cancels(self) -> list[str]:
        return list(self.cancelled)

    def waits_logged(self) -> list[str]:
        return [e["reason"] for e in self.logged if e.get("log_format", "").startswith("{id}: waiting:")]


class OfflineNodeTests(unittest.TestCase):
    def test_node_offline_for_ten_times_dead_after_fires_nobody(self):
        s = Setup(self)
        s.h.network = "DISCONNECTED"
        s.silence(*s.first)  # cut off: nobody answers us
        s.run(10 * DEAD_AFTER)
        self.assertEqual((s.fired(), s.cancels(), s.h.roster.positions), ([], [], s.first))
        self.assertEqual(s.fire_hire.state, "WAITING")
        self.assertIn("this node is not connected", s.fire_hire.waiting)
        self.assertEqual(len(s.waits_logged()), 1)  # logged once, not on every tick
        info = next(m for m in s.h.registry.list() if m["name"] == "fire_hire")["info"]
        self.assertEqual(info["waiting"], s.fire_hire.waiting)  # automats_list shows it
        # back online: every supplier is asked again before anyone is judged, and all answer
        s.h.network = "CONNECTED"
        s.answer(*s.first)
        s.run(60)
        self.assertEqual(s.fire_hire.reprobes, 1)
        self.assertEqual((s.fire_hire.state, s.fire_hire.waiting), ("READY", ""))
        s.run(10 * DEAD_AFTER)
        self.assertEqual((s.fired(), s.h.roster.positions), ([], s.first))

    def test_a_supplier_dead_while_we_were_offline_gets_a_full_dead_after_once_we_see(self):
        s = Setup(self)
        s.h.network = "DISCONNECTED"
        s.silence(*s.first)
        s.run(10 * DEAD_AFTER)
        s.h.network = "CONNECTED"
        s.answer(*s.first[1:])  # s1 really is gone
        s.run(60)
        self.assertEqual(s.fired(), [])  # its silence while we were away does not count
        s.run(DEAD_AFTER + 60)
        self.assertEqual(len(s.fired()), 1)
        self.assertIn(f"fired {s.first[0]} at 0", s.fired()[0])

    def test_all_suppliers_silent_at_once_fires_nobody(self):
        s = Setup(self)
        s.silence(*s.first)  # the network connector still says CONNECTED (it checks every 5 min)
        s.run(120)
        logged = s.waits_logged()
        s.run(10 * DEAD_AFTER)
        self.assertEqual((s.fired(), s.cancels(), s.h.roster.positions), ([], [], s.first))
        self.assertIn("no supplier answers", s.fire_hire.waiting)
        self.assertEqual(s.network_checks, 1)  # maybe it is us: network_connector is asked once
        self.assertEqual(s.waits_logged(), logged)  # logged when the reason changed, not on every tick
        self.assertIn("no supplier answers", logged[-1])
        s.answer(*s.first)
        s.run(120)
        self.assertEqual((s.fire_hire.state, s.fired()), ("READY", []))

    def test_more_silent_positions_than_n_minus_k_is_an_outage_to_wait_out(self):
        s = Setup(self)
        s.silence(*s.first[:3])  # 3 of 4 silent; a 2-of-4 code can lose 2
        s.run(DAY, step=10.0)
        self.assertEqual((s.fired(), s.h.roster.positions), ([], s.first))
        self.assertIn("3 of 4 positions silent, more than the 2 a 2-of-4 code can lose", s.fire_hire.waiting)
        self.assertEqual(len(s.waits_logged()), 1)
        rows = [r for r in s.fire_hire.suppliers()]
        self.assertEqual([r["state"] for r in rows], ["DISCONNECTED"] * 3 + ["CONNECTED"])


class ReplacementTests(unittest.TestCase):
    def test_one_dead_of_four_is_replaced_and_released_only_when_storage_says_so(self):
        s = Setup(self)
        dead = s.first[2]
        s.silence(dead)
        s.run(DEAD_AFTER + 120)
        self.assertEqual(len(s.fired()), 1)
        self.assertEqual(s.h.roster.positions, s.first[:2] + ["s5"] + s.first[3:])
        self.assertEqual(s.cancels(), [])  # retiring: still holds blocks we may need
        self.assertEqual([r["supplier_id"] for r in s.fire_hire.retiring()], [dead])
        s.fire_hire.rebuild_progress({dead: {"done": 3, "total": 10}})
        self.assertEqual(s.fire_hire.retiring()[0]["rebuild"], {"done": 3, "total": 10})
        s.run(DAY, step=60.0)
        self.assertEqual(s.cancels(), [])  # nothing releases it but storage
        # storage: every block it held is on s5 now
        self.assertTrue(s.fire_hire.release(dead))
        self.assertFalse(s.fire_hire.release(dead))
        self.assertEqual(s.cancels(), [])  # it is silent: the CancelService is kept and retried
        self.assertEqual([r["supplier_id"] for r in s.fire_hire.releasing()], [dead])
        s.run(HOUR, step=60.0)
        self.assertGreater(s.fire_hire.releasing()[0]["attempts"], 10)
        s.answer(dead)
        s.run(60)
        self.assertEqual(s.cancels(), [dead])
        self.assertEqual((s.fire_hire.retiring(), s.fire_hire.releasing()), ([], []))
        with open(s.h.roster_file) as handle:
            saved = json.load(handle)
        self.assertEqual((saved["format"], saved["retiring"], saved["releasing"]), (2, [], []))

    def test_two_dead_of_four_with_k_2_are_replaced_one_at_a_time(self):
        s = Setup(self)
        s.silence(s.first[0], s.first[1])
        s.run(DEAD_AFTER + 120)
        self.assertEqual(len(s.fired()), 1, s.fired())
        self.assertEqual(s.h.roster.positions[1], s.first[1])  # the second waits
        self.assertIn("one position at a time: position 0 is being rebuilt", s.fire_hire.waiting)
        s.run(DEAD_AFTER / 2)
        self.assertEqual(len(s.fired()), 1)
        # the first replacement is rebuilt: storage releases its former holder, the next one goes
        s.fire_hire.release(s.first[0])
        s.run(120)
        self.assertEqual(len(s.fired()), 2)
        self.assertEqual(s.h.roster.positions[:2], ["s5", "s6"])
        self.assertEqual([r["supplier_id"] for r in s.fire_hire.retiring()], [s.first[1]])

    def test_a_rebuild_that_never_ends_holds_the_next_replacement_for_dead_after_only(self):
        s = Setup(self)
        s.silence(s.first[0], s.first[1])
        s.run(DEAD_AFTER + 120)
        self.assertEqual(len(s.fired()), 1)
        s.run(DEAD_AFTER + 60)
        self.assertEqual(len(s.fired()), 2)
        self.assertEqual(sorted(r["supplier_id"] for r in s.fire_hire.retiring()), s.first[:2])

    def test_replaced_on_request_may_be_hired_again_a_dead_one_only_after_an_hour(self):
        s = Setup(self)
        s.fire_hire.replace(3)
        self.assertEqual(s.h.roster.positions[3], "s5")
        s.fire_hire.release(s.first[3])
        self.assertEqual(s.cancels(), [s.first[3]])
        self.assertNotIn(s.first[3], s.fire_hire.fired_at)
        s.silence(s.first[0])
        s.run(DEAD_AFTER + 120)
        # s4 left on request, not for a failure: it is the first candidate again
        self.assertEqual(s.h.roster.positions[0], s.first[3])
        s.fire_hire.release(s.first[0])
        s.answer(s.first[0])
        s.h.layer[:] = [s.first[0], "s7"]
        s.h.wanted = 5
        s.fire_hire.event("restart")
        s.run(60)
        self.assertEqual(s.h.roster.positions[4], "s7")  # s1 died less than an hour ago: skipped
        s.run(FIRED_MEMORY)
        s.h.wanted = 6
        s.fire_hire.event("restart")
        s.run(60)
        self.assertEqual(s.h.roster.positions[5], s.first[0])

    def test_retiring_and_releasing_holders_survive_a_restart(self):
        s = Setup(self)
        s.silence(s.first[0], s.first[1])
        s.run(DEAD_AFTER + 120)
        s.fire_hire.release(s.first[0])  # silent: its CancelService is pending
        s.fire_hire.event("shutdown")
        s.h.net.calls.clear()
        s.h.roster = SupplierRoster(s.h.roster_file)
        self.assertEqual([r.supplier_id for r in s.h.roster.retiring], [])
        self.assertEqual([r.supplier_id for r in s.h.roster.releasing], [s.first[0]])
        # (the second dead one was not fired yet: one at a time) -- fire it, then restart again
        s.h.finder = SupplierFinder(s.h.clock, s.h.random_suppliers, s.h.make_connector)
        s.fire_hire = s.h.fire_hire = s.make()
        s.fire_hire.event("init")
        s.run(DEAD_AFTER + 120)
        self.assertEqual([r["supplier_id"] for r in s.fire_hire.retiring()], [s.first[1]])
        s.fire_hire.event("shutdown")
        roster = SupplierRoster(s.h.roster_file)
        self.assertEqual([r.supplier_id for r in roster.retiring], [s.first[1]])
        self.assertEqual([r.supplier_id for r in roster.releasing], [s.first[0]])
        # the pending cancel goes out once the supplier answers, after any number of restarts
        s.answer(s.first[0])
        s.h.roster = roster
        s.h.finder = SupplierFinder(s.h.clock, s.h.random_suppliers, s.h.make_connector)
        s.fire_hire = s.h.fire_hire = s.make()
        s.fire_hire.event("init")
        self.assertIn(s.first[0], s.cancels())
        self.assertEqual(s.fire_hire.releasing(), [])

    def test_a_cancel_that_never_arrives_is_given_up_after_a_month(self):
        s = Setup(self)
        s.silence(s.first[0])
        s.run(DEAD_AFTER + 120)
        s.fire_hire.release(s.first[0])
        s.run(RELEASE_FOR + DAY, step=600.0)
        self.assertEqual((s.fire_hire.releasing(), s.cancels()), ([], []))


class PauseTests(unittest.TestCase):
    def test_after_a_process_pause_every_supplier_is_asked_again_before_anyone_is_judged(self):
        s = Setup(self)
        s.silence(s.first[1])
        s.run(120)  # s2 is silent since a minute
        s.answer(s.first[1])  # it came back while we were stopped
        s.silence(s.first[3])  # and s4 went away
        s.h.clock.advance(10 * DEAD_AFTER)  # SIGSTOP: nothing ran, both clocks went on
        self.assertEqual(s.fired(), [])
        self.assertEqual(s.fire_hire.reprobes, 1)
        self.assertIn("nothing ran for", s.fire_hire.watch.last_pause)
        self.assertEqual(s.fire_hire.suppliers()[1]["state"], "CONNECTED")
        s.run(DEAD_AFTER - 60)
        self.assertEqual(s.fired(), [])  # s4's silence counts from the probe, not from before the pause
        s.run(180)
        self.assertEqual(len(s.fired()), 1)
        self.assertIn(f"fired {s.first[3]} at 3", s.fired()[0])

    def test_a_suspend_seen_as_a_clock_jump_is_a_pause_too(self):
        s = Setup(self)
        s.silence(s.first[0])
        s.run(60)
        s.suspended += 10 * DEAD_AFTER  # lid closed: the monotonic clock stood still
        s.h.clock.advance(10 * DEAD_AFTER)
        self.assertEqual(s.fired(), [])
        self.assertIn("the wall clock moved", s.fire_hire.watch.last_pause)
        s.run(DEAD_AFTER - 60)
        self.assertEqual(s.fired(), [])
        s.run(180)
        self.assertEqual(len(s.fired()), 1)

    def test_three_days_of_flapping_network_and_pauses_fire_nobody(self):
        s = Setup(self)
        for _ in range(36):  # every two hours: an hour offline, a pause, an hour fine
            s.h.network = "DISCONNECTED"
            s.silence(*s.first)
            s.run(HOUR, step=30.0)
            s.h.clock.advance(5 * DEAD_AFTER)
            s.h.network = "CONNECTED"
            s.answer(*s.first)
            s.run(HOUR - 5 * DEAD_AFTER, step=30.0)
        self.assertGreaterEqual(s.h.clock.seconds(), 3 * DAY)
        self.assertEqual((s.fired(), s.cancels(), s.h.roster.positions), ([], [], s.first))
        self.assertEqual(s.fire_hire.state, "READY")
        self.assertGreaterEqual(s.fire_hire.reprobes, 36)
