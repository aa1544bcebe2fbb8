"""id_rotator: notices a dead primary identity server and moves my identity to another one.

My identity lists several sources (identity servers); the first, the
primary, gives my global id and is where peers look first. Now and then
(``timer-check``) the machine asks every source what it holds (the ``probe``
neighbour, :func:`bitnode.userid.id_rotation.probe_sources`):

- the primary answers: all is well (HEALTHY); a source holding an old
  revision, or none, is given the current one (``republish``);
- the primary does not answer: SUSPECT, asked again sooner (``timer-recheck``);
  a blip (the primary answers again) changes nothing;
- the primary has not answered for ``dead_after`` seconds and I can see the
  network (another of my sources answers, or the node is connected): MOVING —
  the ``move`` neighbour makes a live source (or a configured server) the new
  primary, signs a new revision and publishes it to every live source. Once,
  then the new primary is checked like the old one; a failed move is retried
  no sooner than ``retry_after`` seconds, doubling each time (no storm);
- nothing answers and the node is not connected either: ALL_DEAD — maybe it
  is us who are cut off: wait and ask again, never move blindly;
- automatic rotation is off (``services/identity-propagate/automatic-rotate``):
  PRIMARY_DEAD, reported in the status; ``identity_rotate`` moves it by hand.

Diagram (the table below is the spec)::

    AT_STARTUP -init-> PROBING -probed-> HEALTHY | SUSPECT | MOVING | ALL_DEAD | PRIMARY_DEAD
    HEALTHY -timer-check-> PROBING       SUSPECT, ALL_DEAD, PRIMARY_DEAD -timer-recheck-> PROBING
    MOVING -moved-> PROBING              MOVING -move-failed-> SUSPECT
    any -check-> PROBING (unless a probe or a move runs)     any -stop-> STOPPED

Neighbours are passed in, so a test drives the machine with fakes and a
``Clock`` (hours of simulated time, no sockets).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from automats import Automat
from bitnode.errors import BitnodeError
from bitnode.userid.id_rotation import CURRENT, LIVE, SourceState

#: Longest pause between two failed moves.
MAX_RETRY_AFTER = 6 * 3600.0


class IdRotator(Automat):
    """Watches my identity's sources; moves my identity off a dead primary (see the module docstring).

    :param clock: time source (timers, how long the primary has been dead).
    :param probe: ``() -> Deferred[list[SourceState]]`` for my sources now.
    :param primary: ``() -> str | None``: my primary IDURL now (None: no identity).
    :param move: ``() -> Deferred[RotateResult]``: move my identity off the primary.
    :param republish: ``() -> Deferred``: publish my current revision to every source again.
    :param automatic: ``() -> bool``: may the machine move my identity by itself.
    :param online: ``() -> bool``: does the network answer me (the network connector says so).
    :param dead_after: seconds without an answer from the primary before it counts as dead.
    :param check_interval: seconds between checks while healthy.
    :param recheck_interval: seconds between checks while something is wrong.
    """

    name = "id_rotator"
    initial = "AT_STARTUP"
    timers = {
        "timer-check": (600.0, {"HEALTHY"}),
        "timer-recheck": (60.0, {"SUSPECT", "ALL_DEAD", "PRIMARY_DEAD"}),
    }
    transitions = [
        # state           event           guard                  next            actions
        ("AT_STARTUP",   "init",          None,                  "PROBING",      ["probe"]),
        ("PROBING",      "probed",        "primary_answers",     "HEALTHY",      ["primary_seen", "republish_stale"]),
        ("PROBING",      "probed",        "not primary_dead_long", "SUSPECT",    ["primary_missed"]),
        ("PROBING",      "probed",        "not automatic",       "PRIMARY_DEAD", ["primary_missed", "note_manual"]),
        ("PROBING",      "probed",        "not may_move",        "SUSPECT",      ["primary_missed", "note_waiting"]),
        ("PROBING",      "probed",        "can_see_network",     "MOVING",       ["primary_missed", "move"]),
        ("PROBING",      "probed",        None,                  "ALL_DEAD",     ["primary_missed", "note_all_dead"]),
        ("PROBING",      "probe-failed",  None,                  "SUSPECT",      ["note_probe_failed"]),
        ("PROBING",      "check",         None,                  "*",            []),  # a probe runs already
        ("HEALTHY",      "timer-check",   None,                  "PROBING",      ["probe"]),
        ("HEALTHY",      "check",         None,                  "PROBING",      ["probe"]),
        ("SUSPECT",      "timer-recheck", None,                  "PROBING",      ["probe"]),
        ("SUSPECT",      "check",         None,                  "PROBING",      ["probe"]),
        ("ALL_DEAD",     "timer-recheck", None,                  "PROBING",      ["probe"]),
        ("ALL_DEAD",     "check",         None,                  "PROBING",      ["probe"]),
        ("PRIMARY_DEAD", "timer-recheck", None,                  "PROBING",      ["probe"]),
        ("PRIMARY_DEAD", "check",         None,                  "PROBING",      ["probe"]),
        ("MOVING",       "moved",         None,                  "PROBING",      ["note_moved", "probe"]),
        ("MOVING",       "move-failed",   None,                  "SUSPECT",      ["note_move_failed"]),
        ("MOVING",       "check",         None,                  "*",            []),  # the move checks for itself
        ("*",            "stop",          None,                  "STOPPED",      ["forget"]),
        ("STOPPED",      "check",         None,                  "*",            []),  # stopped: nothing to do
    ]

    def __init__(self, clock: IReactorTime, probe: Callable[[], Deferred], primary: Callable[[], str | None],
                 move: Callable[[], Deferred], republish: Callable[[], Deferred], automatic: Callable[[], bool],
                 online: Callable[[], bool], dead_after: float = 1800.0, check_interval: float = 600.0,
                 recheck_interval: float = 60.0, registry: Any = None, log: Any = None) -> None:
        self._probe = probe
        self._primary = primary
        self._move = move
        self._republish = republish
        self._automatic = automatic
        self._online = online
        self.dead_after = float(dead_after)
        self.retry_after = float(recheck_interval)
        self._round = 0  # number of the latest probe or move; older answers are dropped
        self.last_probe: list[SourceState] = []
        self.primary_dead_since: float | None = None
        self.watched_primary: str | None = None
        self.next_move_at = 0.0
        self.move_failures = 0
        self.moves = 0
        self.probes = 0
        self.republished = 0
        self.reason = "not started"
        super().__init__(clock, registry=registry, log=log,
                         timer_intervals={"timer-check": check_interval, "timer-recheck": recheck_interval})

    # -- public -------------------------------------------------------------------

    def status(self) -> dict:
        """A JSON-safe summary for service_info / network_status."""
        return {
            "state": self.state, "reason": self.reason, "primary": self.watched_primary,
            "primary_dead_since": self.primary_dead_since, "dead_after": self.dead_after,
            "moves": self.moves, "move_failures": self.move_failures, "next_move_at": self.next_move_at,
            "probes": self.probes, "republished": self.republished,
            "sources": [state.as_dict() for state in self.last_probe],
        }

    # -- guards ---------------------------------------------------------------------

    def primary_answers(self, probe: list[SourceState]) -> bool:
        """My primary holds my identity (any revision: an old one is fixed by republishing)."""
        primary = self._primary()
        return any(state.source == primary and state.state in LIVE for state in probe)

    def primary_dead_long(self, probe: list[SourceState]) -> bool:
        """The primary has not answered for ``dead_after`` seconds (counting this miss)."""
        since = self.primary_dead_since if self._same_primary() else None
        now = self.clock.seconds()
        return since is not None and now - since >= self.dead_after

    def automatic(self, probe: list[SourceState]) -> bool:
        """Automatic rotation is on."""
        return bool(self._automatic())

    def may_move(self, probe: list[SourceState]) -> bool:
        """Not too soon after a failed move."""
        return self.clock.seconds() >= self.next_move_at

    def can_see_network(self, probe: list[SourceState]) -> bool:
        """Another of my sources answers, or the node is connected: the dead primary is not just us offline."""
        return any(state.state in LIVE for state in probe) or bool(self._online())

    # -- actions ----------------------------------------------------------------------

    def probe(self, *args: Any) -> None:
        """Ask every source what it holds."""
        self.probes += 1
        self._expect(self._probe, "probed", "probe-failed")

    def primary_seen(self, probe: list[SourceState]) -> None:
        """The primary answers: whatever was wrong is over."""
        self.last_probe = list(probe)
        self.watched_primary = self._primary()
        self.primary_dead_since = None
        self.move_failures = 0
        self.next_move_at = 0.0
        self.retry_after = self.timer_interval("timer-recheck")
        self.reason = "the primary identity server answers"

    def republish_stale(self, probe: list[SourceState]) -> None:
        """Give sources that answer without my current revision the current one (in the background)."""
        if not any(state.state in LIVE and state.state != CURRENT for state in probe):
            return
        self.republished += 1
        d = maybeDeferred(self._republish)
        d.addErrback(lambda failure: self.log.info("{machine}: republishing failed: {err}", machine=self.id,
                                                   err=failure.getErrorMessage()))

    def primary_missed(self, probe: list[SourceState]) -> None:
        """The primary did not answer: start (or keep) counting how long."""
        self.last_probe = list(probe)
        if not self._same_primary() or self.primary_dead_since is None:
            self.watched_primary = self._primary()
            self.primary_dead_since = self.clock.seconds()
        dead_for = self.clock.seconds() - self.primary_dead_since
        self.reason = f"the primary identity server has not answered for {dead_for:.0f}s"

    def note_manual(self, probe: list[SourceState]) -> None:
        """Dead primary, but automatic rotation is off."""
        self.reason += "; automatic rotation is off (identity_rotate moves it)"

    def note_waiting(self, probe: list[SourceState]) -> None:
        """A move failed recently: wait before the next one."""
        self.reason += f"; next move attempt in {self.next_move_at - self.clock.seconds():.0f}s"

    def note_all_dead(self, probe: list[SourceState]) -> None:
        """Nothing answers: maybe we are offline; do not move blindly."""
        self.reason += "; no other identity server answers and the network is not connected: waiting"

    def note_probe_failed(self, reason: str = "", *args: Any) -> None:
        """The probe could not run (no identity yet...)."""
        self.reason = f"cannot check my identity servers: {reason}"

    def move(self, *args: Any) -> None:
        """Move my identity to another primary."""
        self.reason += "; moving my identity to another identity server"
        self._expect(self._move, "moved", "move-failed")

    def note_moved(self, result: Any = None, *args: Any) -> None:
        """Moved: the new primary is watched from now on."""
        self.moves += 1
        self.move_failures = 0
        self.next_move_at = 0.0
        self.primary_dead_since = None
        self.watched_primary = self._primary()
        self.reason = f"moved my identity to {self.watched_primary}"

    def note_move_failed(self, reason: str = "", *args: Any) -> None:
        """The move failed: try again later, each time later (never a storm)."""
        self.move_failures += 1
        pause = min(MAX_RETRY_AFTER, self.retry_after * 2 ** (self.move_failures - 1))
        self.next_move_at = self.clock.seconds() + pause
        self.reason = f"moving my identity failed ({reason}); next attempt in {pause:.0f}s"

    def forget(self, *args: Any) -> None:
        """Stopped: answers still on their way are dropped."""
        self._round += 1
        self.reason = "stopped"

    # -- internals ------------------------------------------------------------------

    def _same_primary(self) -> bool:
        return self.watched_primary is not None and self.watched_primary == self._primary()

    def _expect(self, ask: Callable[[], Deferred], ok_event: str, bad_event: str) -> None:
        """Run a neighbour; its answer becomes an event unless the machine moved on meanwhile."""
        self._round += 1
        number = self._round
        d = maybeDeferred(ask)

        def answered(result: Any) -> None:
            if number == self._round and not self.destroyed:
                self.event(ok_event, result)

        def failed(failure: Failure) -> None:
            if not failure.check(BitnodeError):
                self.log.failure("{machine}: {event} failed unexpectedly", failure, machine=self.id,
                                 event=bad_event)
            if number == self._round and not self.destroyed:
                self.event(bad_event, failure.getErrorMessage())

        d.addCallbacks(answered, failed)
