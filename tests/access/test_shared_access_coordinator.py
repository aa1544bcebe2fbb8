"""Tests for bitnode.access.shared_access_coordinator: the reader's machine with a Clock and a fake link."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from automats.registry import Registry
from bitnode.access.shared_access_coordinator import SharedAccessCoordinator
from bitnode.errors import Forbidden, NotFound, Timeout, Unavailable

KEY = "share_0123456789abcdef0123456789abcdef$alice@id.example.net_8084"
OWNER = "alice@id.example.net_8084"
POSITIONS = ["s0@id.example.net_8084", "", "s2@id.example.net_8084"]


class FakeLink:
    """Records every call; each answer is a Deferred the test fires (or an immediate value)."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.pending: dict[str, list[defer.Deferred]] = {}
        self.auto: dict[str, object] = {}

    def _answer(self, name, *args):
        self.calls.append((name, *args))
        if name in self.auto:
            value = self.auto[name]
            return defer.fail(value) if isinstance(value, Exception) else defer.succeed(value)
        d = defer.Deferred()
        self.pending.setdefault(name, []).append(d)
        return d

    def find_suppliers(self):
        return self._answer("find_suppliers")

    def connect(self, positions):
        return self._answer("connect", positions)

    def load_index(self, positions):
        return self._answer("load_index", positions)

    def release(self):
        self.calls.append(("release",))


class CoordinatorTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.link = FakeLink()
        self.news: list[tuple[str, dict]] = []
        self.registry = Registry()
        self.machine = SharedAccessCoordinator(self.clock, KEY, OWNER, self.link,
                                               lambda event_id, data: self.news.append((event_id, data)),
                                               registry=self.registry)

    def connect_all(self, serial=3, files=2):
        self.link.auto = {"find_suppliers": POSITIONS, "connect": 2, "load_index": {"serial": serial, "files": files}}

    def test_open_finds_suppliers_pings_them_reads_the_index_and_answers_the_waiter(self):
        self.connect_all()
        d = self.machine.wait()
        self.machine.event("open")
        info = self.successResultOf(d)
        self.assertEqual(self.machine.state, "CONNECTED")
        self.assertEqual(self.link.calls, [("find_suppliers",), ("connect", POSITIONS), ("load_index", POSITIONS)])
        self.assertEqual((info["state"], info["index_serial"], info["files"], info["suppliers"]),
                         ("CONNECTED", 3, 2, POSITIONS))
        self.assertEqual([(r.from_state, r.event, r.to_state) for r in self.machine.history],
                         [("AT_STARTUP", "open", "DHT_LOOKUP"), ("DHT_LOOKUP", "suppliers-found", "SUPPLIERS?"),
                          ("SUPPLIERS?", "suppliers-connected", "INDEX?"), ("INDEX?", "index-read", "CONNECTED")])
        self.assertEqual([n[0] for n in self.news], ["share-connected"])
        self.assertEqual(self.machine.active_timers(), ["timer-10min"])
        self.assertIn(self.machine, list(self.registry))

    def test_refused_by_the_suppliers_answers_forbidden_and_retries_every_minute(self):
        self.link.auto = {"find_suppliers": POSITIONS, "connect": 2,
                          "load_index": Forbidden("alice's suppliers refuse to serve share")}
        d = self.machine.wait()
        self.machine.event("open")
        failure = self.failureResultOf(d, Forbidden)
        self.assertIn("refuse", failure.getErrorMessage())
        self.assertEqual(self.machine.state, "DISCONNECTED")
        self.assertEqual(self.machine.info()["error"], "alice's suppliers refuse to serve share")
        self.assertEqual(self.news[-1][0], "share-disconnected")
        # a minute later it tries again, and this time the owner has granted access
        self.link.auto["load_index"] = {"serial": 1, "files": 0}
        self.clock.advance(60)
        self.assertEqual(self.machine.state, "CONNECTED")
        self.assertEqual(self.machine.info()["error"], "")
        self.assertEqual(sum(1 for c in self.link.calls if c[0] == "find_suppliers"), 2)

    def test_no_suppliers_record_is_not_found(self):
        self.link.auto = {"find_suppliers": NotFound("alice has no suppliers")}
        d = self.machine.wait()
        self.machine.event("open")
        self.failureResultOf(d, NotFound)
        self.assertEqual(self.link.calls, [("find_suppliers",)])

    def test_an_unexpected_exception_becomes_unavailable(self):
        self.link.auto = {"find_suppliers": POSITIONS, "connect": RuntimeError("socket exploded")}
        d = self.machine.wait()
        self.machine.event("open")
        self.assertIn("socket exploded", self.failureResultOf(d, Unavailable).getErrorMessage())

    def test_a_step_that_hangs_times_out_and_its_late_answer_is_ignored(self):
        self.link.auto = {"find_suppliers": POSITIONS}
        d = self.machine.wait()
        self.machine.event("open")
        self.assertEqual(self.machine.state, "SUPPLIERS?")
        self.clock.advance(30)
        self.assertIn("reaching the owner's suppliers took too long", self.failureResultOf(d, Timeout).getErrorMessage())
        self.assertEqual(self.machine.state, "DISCONNECTED")
        # the answer of the abandoned attempt comes late: nothing moves
        self.link.pending["connect"][0].callback(2)
        self.assertEqual(self.machine.state, "DISCONNECTED")
        self.assertEqual(self.machine.unexpected_count, 0)

    def test_an_open_during_an_attempt_waits_for_it(self):
        self.link.auto = {"find_suppliers": POSITIONS, "connect": 1}
        first, second = self.machine.wait(), None
        self.machine.event("open")
        second = self.machine.wait()
        self.machine.event("open")
        self.assertEqual(self.machine.state, "INDEX?")
        self.assertEqual(len(self.link.pending["load_index"]), 1)
        self.link.pending["load_index"][0].callback({"serial": 1, "files": 5})
        self.assertEqual(self.successResultOf(first)["files"], 5)
        self.assertEqual(self.successResultOf(second)["files"], 5)

    def test_connected_share_reads_again_on_open_and_every_ten_minutes(self):
        self.connect_all(serial=1)
        self.machine.event("open")
        self.connect_all(serial=2, files=7)
        d = self.machine.wait()
        self.machine.event("open")
        self.assertEqual(self.successResultOf(d)["index_serial"], 2)
        self.connect_all(serial=3)
        self.clock.advance(600)
        self.assertEqual((self.machine.state, self.machine.index_serial), ("CONNECTED", 3))
        self.assertEqual(sum(1 for c in self.link.calls if c[0] == "load_index"), 3)

    def test_close_answers_waiters_releases_the_view_and_leaves_the_registry(self):
        self.link.auto = {"find_suppliers": POSITIONS}
        d = self.machine.wait()
        self.machine.event("open")
        self.machine.event("close")
        self.assertIn("closed", self.failureResultOf(d, Unavailable).getErrorMessage())
        self.assertTrue(self.machine.destroyed)
        self.assertEqual(self.link.calls[-1], ("release",))
        self.assertNotIn(self.machine, list(self.registry))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # the pending ping answers after the close: the destroyed machine is not bothered
        self.link.pending["connect"][0].callback(2)
        self.assertEqual(self.machine.unexpected_count, 0)

    def test_disconnected_share_opened_again_by_the_user_tries_at_once(self):
        self.link.auto = {"find_suppliers": Unavailable("DHT is not running")}
        self.failureResultOf(self.defer_open(), Unavailable)
        self.connect_all()
        self.assertEqual(self.successResultOf(self.defer_open())["state"], "CONNECTED")

    def defer_open(self):
        d = self.machine.wait()
        self.machine.event("open")
        return d
