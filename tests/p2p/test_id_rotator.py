"""id_rotator driven by a Clock over hours of simulated time, with fake neighbours (no sockets)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.errors import Conflict, Unavailable
from bitnode.p2p.id_rotator import IdRotator
from bitnode.userid.id_rotation import CURRENT, DEAD, STALE, SourceState

S1, S2, S3 = (f"http://id{n}.example.net:8084/alice.xml" for n in (1, 2, 3))
DEAD_AFTER = 1800.0
CHECK = 600.0
RECHECK = 60.0


class World:
    """My sources and what they answer; records what the machine asked for."""

    def __init__(self) -> None:
        self.sources = [S1, S2]
        self.alive = {S1, S2}
        self.stale: set[str] = set()
        self.online = True
        self.automatic = True
        self.move_error: Exception | None = None
        self.calls: list[str] = []
        self.move_times: list[float] = []
        self.clock: Clock | None = None

    def probe(self):
        self.calls.append("probe")
        return defer.succeed([SourceState(s, (STALE if s in self.stale else CURRENT) if s in self.alive else DEAD)
                              for s in self.sources])

    def primary(self):
        return self.sources[0]

    def move(self):
        self.calls.append("move")
        self.move_times.append(self.clock.seconds())
        if self.move_error is not None:
            return defer.fail(self.move_error)
        target = next((s for s in self.sources[1:] if s in self.alive), None)
        if target is None:
            return defer.fail(Unavailable("nowhere to move"))
        self.sources = [target] + [s for s in self.sources if s != target]
        return defer.succeed("moved")

    def republish(self):
        self.calls.append("republish")
        self.stale.clear()
        return defer.succeed([])


class IdRotatorTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.world = World()
        self.world.clock = self.clock
        self.rotator = IdRotator(self.clock, self.world.probe, self.world.primary, self.world.move,
                                 self.world.republish, lambda: self.world.automatic, lambda: self.world.online,
                                 dead_after=DEAD_AFTER, check_interval=CHECK, recheck_interval=RECHECK)
        self.rotator.event("init")

    def run_for(self, seconds: float, step: float = 10.0) -> None:
        for _ in range(int(seconds / step)):
            self.clock.advance(step)

    def test_a_healthy_primary_is_only_checked_now_and_then_for_days(self) -> None:
        self.assertEqual(self.rotator.state, "HEALTHY")
        self.run_for(3 * 24 * 3600, step=60)
        self.assertEqual(self.rotator.state, "HEALTHY")
        self.assertEqual(self.world.calls.count("move"), 0)
        self.assertEqual(self.world.calls.count("probe"), 1 + 3 * 24 * 3600 // CHECK)

    def test_a_dead_primary_is_moved_once_after_dead_after_not_a_storm(self) -> None:
        self.world.alive.discard(S1)
        self.run_for(CHECK)  # noticed at the next check
        self.assertEqual(self.rotator.state, "SUSPECT")
        noticed = self.clock.seconds()
        self.run_for(DEAD_AFTER - 2 * RECHECK)
        self.assertEqual(self.world.calls.count("move"), 0, "not before dead_after")
        self.run_for(4 * 3600)
        self.assertEqual(self.world.calls.count("move"), 1)
        self.assertEqual(self.world.sources, [S2, S1])
        self.assertEqual(self.rotator.state, "HEALTHY")
        self.assertEqual(self.rotator.moves, 1)
        moved_at = self.world.move_times[0]
        self.assertGreaterEqual(moved_at - noticed, DEAD_AFTER)
        self.assertLessEqual(moved_at - noticed, DEAD_AFTER + RECHECK + 10)

    def test_a_primary_back_before_dead_after_changes_nothing(self) -> None:
        self.world.alive.discard(S1)
        self.run_for(CHECK + DEAD_AFTER / 2)
        self.assertEqual(self.rotator.state, "SUSPECT")
        self.world.alive.add(S1)
        self.run_for(RECHECK)
        self.assertEqual(self.rotator.state, "HEALTHY")
        self.assertIsNone(self.rotator.primary_dead_since)
        # it dies again: the count starts over
        self.world.alive.discard(S1)
        self.run_for(CHECK + DEAD_AFTER / 2)
        self.assertEqual(self.world.calls.count("move"), 0)
        self.run_for(DEAD_AFTER)
        self.assertEqual(self.world.calls.count("move"), 1)

    def test_when_every_source_is_dead_and_we_are_offline_it_waits(self) -> None:
        self.world.alive.clear()
        self.world.online = False
        self.run_for(12 * 3600)
        self.assertEqual(self.rotator.state, "ALL_DEAD")
        self.assertEqual(self.world.calls.count("move"), 0)
        self.assertIn("waiting", self.rotator.reason)
        # the network comes back, the second server too: then it moves
        self.world.alive.add(S2)
        self.world.online = True
        self.run_for(2 * RECHECK)
        self.assertEqual(self.world.calls.count("move"), 1)
        self.assertEqual(self.rotator.state, "HEALTHY")

    def test_every_source_dead_but_the_network_answers_tries_a_configured_server(self) -> None:
        self.world.alive.clear()
        self.world.move_error = Unavailable("no configured server accepted")
        self.run_for(CHECK + DEAD_AFTER + RECHECK / 2)
        self.assertEqual(self.world.calls.count("move"), 1)
        self.assertEqual(self.rotator.state, "SUSPECT")

    def test_failed_moves_back_off_doubling(self) -> None:
        self.world.move_error = Conflict("name taken")
        self.world.alive.discard(S1)
        self.run_for(CHECK + DEAD_AFTER + 8 * 3600)
        moves = self.world.move_times
        gaps = [b - a for a, b in zip(moves, moves[1:], strict=False)]
        self.assertGreaterEqual(len(moves), 4)
        self.assertLess(len(moves), 10)
        for earlier, later in zip(gaps, gaps[1:], strict=False):
            self.assertGreaterEqual(later, earlier)
        self.assertGreater(self.rotator.status()["move_failures"], 3)

    def test_with_automatic_rotation_off_it_only_reports(self) -> None:
        self.world.automatic = False
        self.world.alive.discard(S1)
        self.run_for(CHECK + DEAD_AFTER + 3600)
        self.assertEqual(self.rotator.state, "PRIMARY_DEAD")
        self.assertEqual(self.world.calls.count("move"), 0)
        self.assertIn("automatic rotation is off", self.rotator.reason)
        self.world.automatic = True
        self.run_for(RECHECK)
        self.assertEqual(self.world.calls.count("move"), 1)

    def test_sources_with_an_old_revision_get_the_current_one(self) -> None:
        self.world.stale.add(S2)
        self.rotator.event("check")
        self.assertEqual(self.world.calls.count("republish"), 1)
        self.rotator.event("check")
        self.assertEqual(self.world.calls.count("republish"), 1)

    def test_a_check_while_moving_or_probing_is_harmless_and_stop_drops_late_answers(self) -> None:
        pending = defer.Deferred()
        self.world.probe = lambda: pending
        self.rotator._probe = self.world.probe
        self.rotator.event("check")
        self.rotator.event("check")
        self.assertEqual(self.rotator.state, "PROBING")
        self.rotator.event("stop")
        pending.callback([SourceState(S1, DEAD)])
        self.assertEqual(self.rotator.state, "STOPPED")
        self.assertEqual(self.rotator.unexpected, [])
