"""fire_hire: keep the wanted number of live suppliers; replace a dead one only when we can see.

Positions matter: the supplier at position i holds block i of every segment.
The positions, and the suppliers that left them, are kept by a
:class:`~bitnode.customer.roster.SupplierRoster` (persisted before anyone is
told of a change).

The machine, read top to bottom::

    AT_STARTUP --init--> DECISION                connect the suppliers we had, start the watch
    READY | WAITING --restart | timer-1min | supplier-state-changed--> DECISION
    READY | WAITING --replace--> DECISION        on request: that position's supplier retires
    DECISION --shrink--> DECISION                fewer positions wanted: the last ones retire
    DECISION --need-hire--> HIRE                 an empty position: ask supplier_finder
    DECISION --must-wait--> WAITING              cannot judge, or must not act (the reason is kept)
    DECISION --reprobe--> PROBING                after a pause or a blind spell: ask everyone again
    DECISION --need-fire--> DECISION             one dead or refusing supplier retires
    DECISION --all-good--> READY
    PROBING --probed | timer-probe--> DECISION   every supplier answered (or the probe timed out)
    HIRE --hired--> DECISION                     put it in the first empty position
    HIRE --not-hired--> WAITING                  try again on the next timer

Judging, in order (:meth:`FireHire.decide`):

1. a pause seen by the :class:`~bitnode.customer.pause_watch.PauseWatch`
   (checked on every tick and before every decision) means re-probe first;
2. positions beyond the wanted number retire (not their fault);
3. an empty position is filled, unless this node knows it is offline;
4. nobody is judged while this node cannot see: network_connector is not
   CONNECTED, no supplier answers at all (then *we* are probably cut off,
   and network_connector is asked to check), or more positions are silent
   than the n-k blocks the erasure code can lose (an outage to wait out);
   when sight returns, every supplier is re-probed and silence from before
   does not count;
5. "dead" means refused us, or silent for longer than ``dead_after()``
   seconds plus a random share of it drawn once per silence (up to
   ``dead_spread()`` times ``dead_after()``): the many customers of one
   supplier that died do not all replace it, and start rebuilding its
   blocks elsewhere, in the same minute (``make sim`` measures the spread);
   the worst one retires, but only one position at a time: while an
   earlier replacement is still being rebuilt (for at most ``dead_after()``)
   the others wait.

A supplier that leaves a position is not told to delete anything: it becomes
a *retiring* holder, still read from, until storage calls :meth:`release`
(every block it held is rebuilt on its successor); then CancelService is
sent, and retried on every tick until acknowledged (for at most
:data:`RELEASE_FOR` seconds). Only suppliers that left for their own failure
are kept from being hired again for :data:`FIRED_MEMORY` seconds.

Every change of the positions calls ``on_changed(positions, reason)`` (the
node publishes ``suppliers-changed``; backup_monitor rebuilds). The reason
fire_hire waits is logged once per change, and shown by :meth:`info` (in
``automats_list``) and suppliers_list.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Mapping

from twisted.internet import defer

from automats import Automat
from bitnode.customer.pause_watch import PauseWatch
from bitnode.customer.roster import SupplierRoster
from bitnode.errors import BadRequest, NotFound, Unavailable

__all__ = ["FireHire", "SupplierRoster", "FIRED_MEMORY", "RELEASE_FOR", "DEFAULT_DEAD_SPREAD"]

FIRED_MEMORY = 3600.0  # seconds a supplier fired for its own failure is not hired again
RELEASE_FOR = 30 * 86400.0  # seconds a CancelService is retried before it is given up
#: the default of services/customer/dead-after-spread (make sim: rebuild starts spread over ~a quarter hour)
DEFAULT_DEAD_SPREAD = 1.0
CONNECTED = "CONNECTED"
DISCONNECTED = "DISCONNECTED"


def _no_cancel(supplier_id: str) -> defer.Deferred:
    return defer.fail(Unavailable("no way to send CancelService here"))


class FireHire(Automat):
    """Hires and replaces suppliers for one customer; see the module docstring."""

    name = "fire_hire"
    initial = "AT_STARTUP"
    timers = {"timer-1min": (60.0, {"READY", "WAITING"}), "timer-probe": (60.0, {"PROBING"})}
    transitions = [
        # state         event                     guard  next        actions
        ("AT_STARTUP", "init",                   None,  "DECISION", ["connect_known", "start_watch", "decide"]),
        ("READY",      "restart",                None,  "DECISION", ["decide"]),
        ("READY",      "timer-1min",             None,  "DECISION", ["decide"]),
        ("READY",      "supplier-state-changed", None,  "DECISION", ["decide"]),
        ("READY",      "replace",                None,  "DECISION", ["retire_on_request", "decide"]),
        ("WAITING",    "restart",                None,  "DECISION", ["decide"]),
        ("WAITING",    "timer-1min",             None,  "DECISION", ["decide"]),
        ("WAITING",    "supplier-state-changed", None,  "DECISION", ["decide"]),
        ("WAITING",    "replace",                None,  "DECISION", ["retire_on_request", "decide"]),
        ("DECISION",   "shrink",                 None,  "DECISION", ["retire_extra", "decide"]),
        ("DECISION",   "need-hire",              None,  "HIRE",     ["find_supplier"]),
        ("DECISION",   "must-wait",              None,  "WAITING",  ["note_waiting"]),
        ("DECISION",   "reprobe",                None,  "PROBING",  ["reprobe_all"]),
        ("DECISION",   "need-fire",              None,  "DECISION", ["retire_dead", "decide"]),
        ("DECISION",   "all-good",               None,  "READY",    ["announce_ready"]),
        ("PROBING",    "supplier-state-changed", None,  "*",        ["check_probe"]),
        ("PROBING",    "probed",                 None,  "DECISION", ["decide"]),
        ("PROBING",    "timer-probe",            None,  "DECISION", ["end_probe", "decide"]),
        ("HIRE",       "hired",                  None,  "DECISION", ["take_position", "decide"]),
        ("HIRE",       "not-hired",              None,  "WAITING",  ["note_shortage"]),
        # While deciding or hiring, news is picked up by the next decision.
        ("*",          "supplier-state-changed", None,  "*",        []),
        # A probe answer that comes after the probe ended.
        ("*",          "probed",                 None,  "*",        []),
        ("*",          "restart",                None,  "*",        ["restart_later"]),
        ("*",          "replace",                None,  "*",        ["replace_later"]),
        ("*",          "shutdown",               None,  "CLOSED",   ["close_all", "destroy"]),
    ]

    def __init__(self, clock, roster: SupplierRoster, finder: Any, make_connector: Callable[[str], Any],
                 wanted: Callable[[], int], dead_after: Callable[[], float],
                 on_changed: Callable[[list[str], str], None] = lambda positions, reason: None,
                 intervals: Mapping[str, float] | None = None, *,
                 network_state: Callable[[], str] = lambda: CONNECTED,
                 check_network: Callable[[], None] = lambda: None,
                 data_blocks: Callable[[int], int] = lambda n: (n + 1) // 2,
                 cancel_service: Callable[[str], defer.Deferred] = _no_cancel,
                 pause_tolerance: Callable[[], float] = lambda: 30.0,
                 monotonic: Callable[[], float] = time.monotonic,
                 dead_spread: Callable[[], float] = lambda: 0.0, rng: random.Random | None = None, **kwargs: Any):
        super().__init__(clock, timer_intervals=intervals, **kwargs)
        self.roster = roster
        self.finder = finder
        self.make_connector = make_connector
        self.wanted = wanted
        self.dead_after = dead_after
        self.on_changed = on_changed
        self.network_state = network_state
        self.check_network = check_network
        self.data_blocks = data_blocks
        self.cancel_service = cancel_service
        self.dead_spread = dead_spread
        self._rng = rng or random.Random()
        self._extra_wait: dict[str, tuple[float, float]] = {}  # supplier -> (offline_since, extra seconds)
        self.watch = PauseWatch(clock, lambda: self.timer_interval("timer-1min"), pause_tolerance, monotonic)
        self.connectors: dict[str, Any] = {}
        self.shortage = ""
        self.waiting = ""
        self.waiting_since: float | None = None
        self.reprobes = 0
        self.rebuild: dict[str, dict] = {}
        self.fired_at: dict[str, float] = {}
        self._reprobe_reason = ""
        self._blind = ""
        self._probing: set[str] = set()
        self._cancelling: set[str] = set()
        self._pending: list[tuple[str, tuple]] = []
        self._reserved: dict[int, str] = {}
        self._flush_call = None
        self._tick_call = None

    # --- public entry points -----------------------------------------------------------

    def replace(self, position: int, new_supplier_id: str | None = None) -> None:
        """Retire the supplier at ``position`` and hire ``new_supplier_id`` (or a random one) there."""
        if not isinstance(position, int) or not 0 <= position < len(self.roster.positions):
            raise BadRequest(f"position must be 0..{len(self.roster.positions) - 1}")
        if not self.roster.positions[position]:
            raise NotFound(f"no supplier at position {position}")
        self.event("replace", position, new_supplier_id)

    def suppliers(self) -> list[dict]:
        """Each position with its supplier and contract state."""
        out = []
        for position, supplier_id in enumerate(self.roster.positions):
            connector = self.connectors.get(supplier_id)
            info = connector.info() if connector is not None else {"supplier_id": supplier_id, "state": "EMPTY",
                                                                    "online": False}
            info["position"] = position
            out.append(info)
        return out

    def retiring(self) -> list[dict]:
        """Former holders still read from: ``{"supplier_id", "position", "reason", "fault", "since", "rebuild"}``."""
        return [{"supplier_id": r.supplier_id, "position": r.position, "reason": r.reason, "fault": r.fault,
                 "since": r.since, "rebuild": dict(self.rebuild.get(r.supplier_id) or {})}
                for r in self.roster.retiring]

    def releasing(self) -> list[dict]:
        """Former holders whose CancelService is still to be delivered."""
        return [{"supplier_id": r.supplier_id, "since": r.since, "attempts": r.attempts, "error": r.error}
                for r in self.roster.releasing]

    def rebuild_progress(self, report: Mapping[str, Mapping]) -> None:
        """Storage's count of blocks rebuilt per retiring holder: ``{supplier_id: {"done", "total"}}``."""
        retiring = self.roster.retiring_ids()
        self.rebuild = {s: {"done": int(v.get("done", 0)), "total": int(v.get("total", 0))}
                        for s, v in report.items() if s in retiring}

    def release(self, supplier_id: str) -> bool:
        """Storage says nothing depends on this retiring holder any more: end its contract. False if not retiring."""
        if self.destroyed or not self.roster.start_release(supplier_id, self.clock.seconds()):
            return False
        self.rebuild.pop(supplier_id, None)
        self.roster.save_holders()
        self.log.info("{id}: releasing {s}: storage needs none of its blocks any more", id=self.id, s=supplier_id)
        self._send_release(supplier_id)
        return True

    def info(self) -> dict:
        """Why fire_hire waits (if it does), pauses seen, former holders: for automats_list and the API."""
        return {"waiting": self.waiting, "waiting_since": self.waiting_since, "shortage": self.shortage,
                "reprobes": self.reprobes, **self.watch.status(),
                "retiring": self.retiring(), "releasing": self.releasing()}

    def describe(self) -> dict[str, Any]:
        """The Automat summary plus :meth:`info`."""
        out = super().describe()
        out["info"] = self.info()
        return out

    # --- the decision ------------------------------------------------------------------

    def decide(self, *_: Any) -> None:
        """Look at every position and fire the one event that says what to do next."""
        pause = self.watch.observe()
        if pause:
            self._note_pause(pause)
        self.event(*self._judge())

    def _judge(self) -> tuple:
        positions = self.roster.positions
        wanted = self.wanted()
        if self._reprobe_reason:
            return ("reprobe",)
        if len(positions) > wanted:
            return ("shrink",)
        network = self.network_state()
        empty = [i for i, s in enumerate(positions) if not s and i not in self._reserved]
        if len(positions) < wanted or empty:
            if network == DISCONNECTED:
                return ("must-wait", f"this node is offline (network_connector {network}): nobody is hired")
            return ("need-hire",)
        blind = self._blindness(network)
        if blind:
            if blind != self._blind and blind.startswith("no supplier answers"):
                self.check_network()  # maybe it is us: let network_connector look now
            self._blind = blind
            return ("must-wait", blind)
        if self._blind:
            self._reprobe_reason = f"able to judge again after: {self._blind}"
            self._blind = ""
            return ("reprobe",)
        candidates = self._candidates()
        if not candidates:
            return ("all-good",)
        gate = self._replacement_in_progress(candidates[0][0])
        if gate:
            return ("must-wait", gate)
        return ("need-fire", *candidates[0])

    def _blindness(self, network: str) -> str:
        """Why this node cannot judge its suppliers now ("" when it can)."""
        if network != CONNECTED:
            return f"this node is not connected (network_connector {network or 'off'}): nobody is judged"
        positions = self.roster.positions
        hired = [s for s in positions if s]
        silent = [s for s in hired if self._silent(s)]
        if hired and len(silent) == len(hired):
            return f"no supplier answers ({len(silent)} silent): this node may be cut off"
        n = len(positions)
        k = self.data_blocks(n) if n else 0
        if len(silent) > n - k:
            return (f"{len(silent)} of {n} positions silent, more than the {n - k} a {k}-of-{n} code can "
                    f"lose: an outage to wait out")
        return ""

    def _silent(self, supplier_id: str) -> bool:
        connector = self.connectors.get(supplier_id)
        return connector is not None and connector.offline_since is not None

    def _candidates(self) -> list[tuple[int, str]]:
        """Positions whose supplier refused us or is dead, worst first: ``[(position, reason)]``."""
        dead_after = self.dead_after()
        scored = []
        for position, supplier_id in enumerate(self.roster.positions):
            connector = self.connectors.get(supplier_id) if supplier_id else None
            if connector is None:
                continue
            if connector.state == "REFUSE":
                scored.append((float("inf"), position, f"refused: {connector.refusal}"))
            elif (connector.offline_for() > dead_after
                  and connector.offline_for() > dead_after + self._extra_silence(supplier_id, connector, dead_after)):
                scored.append((connector.offline_for(), position, f"offline for {connector.offline_for():.0f}s"))
        scored.sort(key=lambda row: (-row[0], row[1]))
        return [(position, reason) for _, position, reason in scored]

    def _extra_silence(self, supplier_id: str, connector: Any, dead_after: float) -> float:
        """The random share of ``dead_after`` this silence of ``supplier_id`` must also last (drawn once)."""
        spread = self.dead_spread()
        if spread <= 0:
            return 0.0
        drawn = self._extra_wait.get(supplier_id)
        if drawn is None or drawn[0] != connector.offline_since:
            drawn = (connector.offline_since, self._rng.uniform(0.0, spread * dead_after))
            self._extra_wait[supplier_id] = drawn
        return drawn[1]

    def _replacement_in_progress(self, position: int) -> str:
        """One position at a time: why replacing ``position`` waits for an earlier replacement ("" if not)."""
        for reserved, supplier_id in sorted(self._reserved.items()):
            if reserved != position:
                return f"replacing one position at a time: position {reserved} waits for {supplier_id} to answer"
        now, positions = self.clock.seconds(), self.roster.positions
        for r in self.roster.retiring:
            if (r.position != position and r.position < len(positions) and positions[r.position]
                    and now - r.since < self.dead_after()):
                return (f"replacing one position at a time: position {r.position} is being rebuilt on "
                        f"{positions[r.position]} (its former holder {r.supplier_id} is retiring)")
        return ""

    # --- actions -------------------------------------------------------------------------

    def connect_known(self, *_: Any) -> None:
        """At start, reconnect to the suppliers of the saved roster."""
        for supplier_id in self.roster.hired():
            self._connect(supplier_id)

    def start_watch(self, *_: Any) -> None:
        """Start the heartbeat: pauses are noticed, undelivered releases retried, on every tick."""
        self.watch.reset()
        self.watch.observe()
        self._schedule_tick()
        for supplier_id in sorted(self.roster.releasing_ids()):
            self._send_release(supplier_id)

    def retire_extra(self, *_: Any) -> None:
        """Fewer positions wanted: the last ones retire (not their fault; read until re-laid out)."""
        positions = list(self.roster.positions)
        wanted, now = self.wanted(), self.clock.seconds()
        for position in range(wanted, len(positions)):
            supplier_id = positions[position]
            if supplier_id:
                self._stop_connector(supplier_id)
                self.roster.retire(supplier_id, position, "fewer suppliers wanted", False, now)
        retired = [s for s in positions[wanted:] if s]
        del positions[wanted:]
        self._save(positions, f"fewer suppliers wanted: {', '.join(retired)} retiring" if retired
                   else "fewer suppliers wanted")

    def retire_dead(self, position: int, reason: str) -> None:
        """The supplier the decision found dead (or refusing) leaves its position; it stays readable."""
        supplier_id = self.roster.positions[position]
        self.fired_at[supplier_id] = self.clock.seconds()
        self._retire(position, reason, fault=True, change=f"fired {supplier_id} at {position}: {reason}")

    def retire_on_request(self, position: int, new_supplier_id: str | None) -> None:
        """Replace one position on request (supplier_change / supplier_replace); not the supplier's fault."""
        old = self.roster.positions[position]
        self._retire(position, "replaced on request", fault=False,
                     change=f"replaced {old} at {position} on request")
        if new_supplier_id:
            # Keep the position for the supplier the user asked for until it answers.
            self._reserved[position] = new_supplier_id
            connector = self.make_connector(new_supplier_id)
            self.connectors[new_supplier_id] = connector
            connector.add_state_listener(self._requested_hire_changed)
            connector.event("connect")

    def find_supplier(self, *_: Any) -> None:
        """Ask supplier_finder for one more supplier (not one we have, nor a former holder still holding)."""
        now = self.clock.seconds()
        skip = set(self.roster.hired()) | set(self._reserved.values())
        skip |= self.roster.retiring_ids() | self.roster.releasing_ids()
        skip |= {s for s, when in self.fired_at.items() if now - when < FIRED_MEMORY}
        d = self.finder.find(skip)
        d.addCallbacks(lambda connector: self.event("hired", connector),
                       lambda f: self.event("not-hired", f.getErrorMessage()))

    def take_position(self, connector) -> None:
        """Put a newly hired supplier into the first empty position (or a new one)."""
        positions = self.roster.positions
        free = [i for i, s in enumerate(positions) if not s and i not in self._reserved]
        self._place(connector, free[0] if free else len(positions))

    def reprobe_all(self, *_: Any) -> None:
        """Ask every supplier again; their silence so far is no evidence."""
        reason, self._reprobe_reason = self._reprobe_reason, ""
        self.reprobes += 1
        self.log.info("{id}: asking every supplier again before judging anyone: {reason}", id=self.id,
                      reason=reason)
        self._probing = set()
        for supplier_id in self.roster.hired():
            connector = self.connectors.get(supplier_id)
            if connector is None or connector.destroyed:
                continue
            connector.reprobe()
            if connector.state == "REQUEST":
                self._probing.add(supplier_id)
        if not self._probing:
            self.event("probed")

    def check_probe(self, *_: Any) -> None:
        """A supplier answered: the probe is over once nobody is still being asked."""
        asking = {s for s in self._probing if s in self.connectors and self.connectors[s].state == "REQUEST"}
        self._probing = asking
        if not asking:
            self.event("probed")

    def end_probe(self, *_: Any) -> None:
        """The probe took too long: judge with what answered (the silent ones count from the probe on)."""
        self._probing = set()

    def note_waiting(self, reason: str) -> None:
        """Keep (and log once) why nothing is done now."""
        if reason != self.waiting:
            self.log.info("{id}: waiting: {reason}", id=self.id, reason=reason)
            self.waiting_since = self.clock.seconds()
        self.waiting = reason

    def announce_ready(self, *_: Any) -> None:
        """Every position has a live supplier."""
        if self.waiting:
            self.log.info("{id}: no longer waiting ({reason})", id=self.id, reason=self.waiting)
        self.waiting, self.waiting_since, self.shortage = "", None, ""

    def note_shortage(self, reason: str) -> None:
        """Could not hire now; the next timer tries again."""
        self.shortage = reason
        self.note_waiting(f"could not hire a supplier: {reason}")

    def restart_later(self, *_: Any) -> None:
        """A restart while busy: decide again once back in READY or WAITING."""
        if ("restart", ()) not in self._pending:  # one pending restart decides as well as ten
            self._pending.append(("restart", ()))
        self._schedule_flush(0)

    def replace_later(self, position: int, new_supplier_id: str | None) -> None:
        """A replace request while busy: run it once back in READY or WAITING."""
        self._pending.append(("replace", (position, new_supplier_id)))
        self._schedule_flush(0)

    def close_all(self, *_: Any) -> None:
        """Node stopping: stop every connector (contracts stay), the heartbeat and the finder."""
        for call in (self._flush_call, self._tick_call):
            if call is not None and call.active():
                call.cancel()
        self._flush_call = self._tick_call = None
        self._pending = []
        for connector in list(self.connectors.values()):
            try:
                # Its CLOSED would reach this machine after it is destroyed (a warning, nothing else).
                connector.remove_state_listener(self._connector_changed)
            except ValueError:
                pass  # a requested hire listens with _requested_hire_changed
            connector.event("shutdown")
        self.connectors.clear()
        self.finder.event("shutdown")

    # --- helpers -------------------------------------------------------------------------

    def _note_pause(self, reason: str) -> None:
        self.log.info("{id}: this process was away: {reason}", id=self.id, reason=reason)
        self._reprobe_reason = reason

    def _schedule_tick(self) -> None:
        self._tick_call = self.clock.callLater(self.timer_interval("timer-1min"), self._tick)

    def _tick(self) -> None:
        self._tick_call = None
        if self.destroyed:
            return
        self._schedule_tick()
        pause = self.watch.observe()
        if pause:
            self._note_pause(pause)
            self.event("restart")
        now = self.clock.seconds()
        for r in list(self.roster.releasing):
            if now - r.since > RELEASE_FOR:
                self.log.warn("{id}: giving up CancelService to {s} after {n} attempts: {err}", id=self.id,
                              s=r.supplier_id, n=r.attempts, err=r.error)
                self.roster.forget(r.supplier_id)
                self.roster.save_holders()
            else:
                self._send_release(r.supplier_id)

    def _send_release(self, supplier_id: str) -> None:
        if supplier_id in self._cancelling:
            return
        if supplier_id in self.roster.positions:
            self.roster.forget(supplier_id)  # hired again meanwhile: never cancel a supplier in use
            self.roster.save_holders()
            return
        self._cancelling.add(supplier_id)
        d = defer.maybeDeferred(self.cancel_service, supplier_id)

        def done(_: Any) -> None:
            self._cancelling.discard(supplier_id)
            if supplier_id in self.roster.releasing_ids():
                self.roster.forget(supplier_id)
                self.roster.save_holders()
                self.log.info("{id}: {s} released (CancelService acknowledged)", id=self.id, s=supplier_id)

        def failed(failure: Any) -> None:
            self._cancelling.discard(supplier_id)
            if supplier_id in self.roster.releasing_ids():
                self.roster.note_release_attempt(supplier_id, failure.getErrorMessage())
                self.roster.save_holders()

        d.addCallbacks(done, failed)

    def _retire(self, position: int, reason: str, fault: bool, change: str) -> None:
        positions = list(self.roster.positions)
        supplier_id = positions[position]
        positions[position] = ""
        self._stop_connector(supplier_id)
        self.roster.retire(supplier_id, position, reason, fault, self.clock.seconds())
        self._save(positions, change)

    def _stop_connector(self, supplier_id: str) -> None:
        # No CancelService: a retiring holder keeps our blocks until storage releases it.
        self._extra_wait.pop(supplier_id, None)
        connector = self.connectors.pop(supplier_id, None)
        if connector is not None:
            try:
                connector.remove_state_listener(self._connector_changed)
            except ValueError:
                pass
            connector.event("shutdown")

    def _schedule_flush(self, delay: float) -> None:
        # One pending call at a time, so shutdown can cancel it and leave no timer behind.
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self.clock.callLater(delay, self._flush_pending)

    def _flush_pending(self) -> None:
        self._flush_call = None
        if self.destroyed or not self._pending:
            return
        if self.state not in ("READY", "WAITING"):
            self._schedule_flush(1.0)
            return
        event, args = self._pending.pop(0)
        self.event(event, *args)
        if self._pending:
            self._schedule_flush(0)

    def _connect(self, supplier_id: str):
        connector = self.make_connector(supplier_id)
        self.connectors[supplier_id] = connector
        connector.add_state_listener(self._connector_changed)
        connector.event("connect")
        return connector

    def _place(self, connector, index: int) -> None:
        positions = list(self.roster.positions)
        positions += [""] * (index + 1 - len(positions))
        positions[index] = connector.supplier_id
        self.roster.forget(connector.supplier_id)  # a former holder hired again is a holder, not retiring
        self.connectors[connector.supplier_id] = connector
        connector.add_state_listener(self._connector_changed)
        self.shortage = ""
        self._save(positions, f"hired {connector.supplier_id} at {index}")

    def _save(self, positions: list[str], reason: str) -> None:
        self.roster.save(positions)
        self.log.info("{id}: suppliers changed: {reason}", id=self.id, reason=reason)
        self.on_changed(list(positions), reason)

    def _connector_changed(self, machine, old: str, new: str, event: str) -> None:
        if not self.destroyed:
            self.event("supplier-state-changed", machine.supplier_id, new)

    def _requested_hire_changed(self, machine, old: str, new: str, event: str) -> None:
        if new not in (CONNECTED, "REFUSE", DISCONNECTED, "CLOSED"):
            return
        machine.remove_state_listener(self._requested_hire_changed)
        position = next((p for p, s in self._reserved.items() if s == machine.supplier_id), None)
        self._reserved.pop(position, None)
        if new == CONNECTED and position is not None and not self.destroyed:
            self._place(machine, position)
        else:
            self.log.info("{id}: requested supplier {s} did not accept ({state}); hiring another",
                          id=self.id, s=machine.supplier_id, state=new)
            self.connectors.pop(machine.supplier_id, None)
            if new != "CLOSED":
                machine.event("shutdown")
        if not self.destroyed:
            self.event("restart")
