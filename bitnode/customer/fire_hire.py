"""fire_hire: keep the wanted number of live suppliers, fire dead ones, hire replacements.

Positions matter: the supplier at position i holds block i of every segment.
The positions are kept by a :class:`SupplierRoster` (persisted atomically
before anyone is told of a change); an empty position is ``""``.

The machine, read top to bottom::

    AT_STARTUP --init--> DECISION              connect the suppliers we had
    READY --restart | timer-1min | supplier-state-changed--> DECISION
    DECISION --need-fire--> DECISION           fire dead / refusing / extra suppliers
    DECISION --need-hire--> HIRE               ask supplier_finder for one more
    DECISION --all-good--> READY
    HIRE --hired--> DECISION                   put it in the first empty position
    HIRE --not-hired--> READY                  try again on the next timer

"Dead" means: refused us, or offline (not answering) for longer than
``dead_after()`` seconds. Every change of the roster calls
``on_changed(positions, reason)`` (the node publishes ``suppliers-changed`` and
backup_monitor rebuilds what the new suppliers lack).
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping

from automats import Automat
from bitnode.errors import BadRequest, NotFound
from bitnode.main.fileutil import atomic_write

ROSTER_FORMAT = 1
FIRED_MEMORY = 3600.0  # seconds a fired supplier is not hired again


class SupplierRoster:
    """The customer's supplier positions, persisted in one JSON file."""

    def __init__(self, path: str):
        self.path = path
        self.positions: list[str] = []
        self.revision = 0
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            if data.get("format") != ROSTER_FORMAT:
                raise ValueError("unknown roster format")
            self.positions = [str(p) for p in data["positions"]]
            self.revision = int(data["revision"])
        except FileNotFoundError:
            pass

    def save(self, positions: list[str]) -> None:
        """Store new positions (atomically, before anyone acts on them)."""
        self.revision += 1
        data = {"format": ROSTER_FORMAT, "revision": self.revision, "positions": list(positions)}
        atomic_write(self.path, json.dumps(data, indent=1).encode("utf-8"), mode=0o600)
        self.positions = list(positions)

    def hired(self) -> list[str]:
        """The suppliers in use, in position order."""
        return [p for p in self.positions if p]


class FireHire(Automat):
    """Hires and fires suppliers for one customer."""

    name = "fire_hire"
    initial = "AT_STARTUP"
    timers = {"timer-1min": (60.0, {"READY"})}
    transitions = [
        # state         event                     guard  next        actions
        ("AT_STARTUP", "init",                   None,  "DECISION", ["connect_known", "decide"]),
        ("READY",      "restart",                None,  "DECISION", ["decide"]),
        ("READY",      "timer-1min",             None,  "DECISION", ["decide"]),
        ("READY",      "supplier-state-changed", None,  "DECISION", ["decide"]),
        ("READY",      "replace",                None,  "DECISION", ["fire_position", "decide"]),
        ("DECISION",   "need-fire",              None,  "DECISION", ["fire", "decide"]),
        ("DECISION",   "need-hire",              None,  "HIRE",     ["find_supplier"]),
        ("DECISION",   "all-good",               None,  "READY",    ["announce_ready"]),
        ("HIRE",       "hired",                  None,  "DECISION", ["take_position", "decide"]),
        ("HIRE",       "not-hired",              None,  "READY",    ["note_shortage"]),
        # While deciding or hiring, news is picked up by the next decision.
        ("*",          "supplier-state-changed", None,  "*",        []),
        ("*",          "restart",                None,  "*",        ["restart_later"]),
        ("*",          "replace",                None,  "*",        ["replace_later"]),
        ("*",          "shutdown",               None,  "CLOSED",   ["close_all", "destroy"]),
    ]

    def __init__(self, clock, roster: SupplierRoster, finder: Any, make_connector: Callable[[str], Any],
                 wanted: Callable[[], int], dead_after: Callable[[], float],
                 on_changed: Callable[[list[str], str], None] = lambda positions, reason: None,
                 intervals: Mapping[str, float] | None = None, **kwargs: Any):
        super().__init__(clock, timer_intervals=intervals, **kwargs)
        self.roster = roster
        self.finder = finder
        self.make_connector = make_connector
        self.wanted = wanted
        self.dead_after = dead_after
        self.on_changed = on_changed
        self.connectors: dict[str, Any] = {}
        self.shortage = ""
        self._pending: list[tuple[str, tuple]] = []
        self._to_fire: list[tuple[int, str]] = []
        self._reserved: dict[int, str] = {}
        self.fired_at: dict[str, float] = {}
        self._flush_call = None

    # --- public entry points -----------------------------------------------------------

    def replace(self, position: int, new_supplier_id: str | None = None) -> None:
        """Fire the supplier at ``position`` and hire ``new_supplier_id`` (or a random one) there."""
        if not isinstance(position, int) or not 0 <= position < len(self.roster.positions):
            raise BadRequest(f"position must be 0..{len(self.roster.positions) - 1}")
        if not self.roster.positions[position]:
            raise NotFound(f"no supplier at position {position}")
        self.event("replace", position, new_supplier_id)

    def suppliers(self) -> list[dict]:
        """Each position with its supplier and contract state, for suppliers_list."""
        out = []
        for position, supplier_id in enumerate(self.roster.positions):
            connector = self.connectors.get(supplier_id)
            info = connector.info() if connector is not None else {"supplier_id": supplier_id, "state": "EMPTY",
                                                                    "online": False}
            info["position"] = position
            out.append(info)
        return out

    # --- the decision ------------------------------------------------------------------

    def decide(self, *_: Any) -> None:
        """Look at every position and fire the one event that says what to do next."""
        positions = self.roster.positions
        wanted = self.wanted()
        self._to_fire = []
        for position, supplier_id in enumerate(positions):
            if not supplier_id:
                continue
            if position >= wanted:
                self._to_fire.append((position, "not needed any more"))
                continue
            connector = self.connectors.get(supplier_id)
            if connector is None:
                continue
            if connector.state == "REFUSE":
                self._to_fire.append((position, f"refused: {connector.refusal}"))
            elif connector.offline_for() > self.dead_after():
                self._to_fire.append((position, f"offline for {connector.offline_for():.0f}s"))
        if self._to_fire or len(positions) > wanted:
            self.event("need-fire")
        elif len(positions) < wanted or any(not s and i not in self._reserved for i, s in enumerate(positions)):
            self.event("need-hire")
        else:
            self.event("all-good")

    def fire(self, *_: Any) -> None:
        """Fire what the decision found; shrink the roster to the wanted size."""
        positions = list(self.roster.positions)
        reasons = []
        for position, reason in self._to_fire:
            supplier_id = positions[position]
            positions[position] = ""
            self._close(supplier_id)
            reasons.append(f"fired {supplier_id} at {position}: {reason}")
        del positions[self.wanted():]
        self._to_fire = []
        self._save(positions, "; ".join(reasons) or "fewer suppliers wanted")

    def find_supplier(self, *_: Any) -> None:
        """Ask supplier_finder for one more supplier (not one we have)."""
        now = self.clock.seconds()
        skip = set(self.roster.hired()) | set(self._reserved.values())
        skip |= {s for s, when in self.fired_at.items() if now - when < FIRED_MEMORY}
        d = self.finder.find(skip)
        d.addCallbacks(lambda connector: self.event("hired", connector),
                       lambda f: self.event("not-hired", f.getErrorMessage()))

    def take_position(self, connector) -> None:
        """Put a newly hired supplier into the first empty position (or a new one)."""
        positions = self.roster.positions
        free = [i for i, s in enumerate(positions) if not s and i not in self._reserved]
        self._place(connector, free[0] if free else len(positions))

    def _place(self, connector, index: int) -> None:
        positions = list(self.roster.positions)
        positions += [""] * (index + 1 - len(positions))
        positions[index] = connector.supplier_id
        self.connectors[connector.supplier_id] = connector
        connector.add_state_listener(self._connector_changed)
        self.shortage = ""
        self._save(positions, f"hired {connector.supplier_id} at {index}")

    # --- other actions -------------------------------------------------------------------

    def connect_known(self, *_: Any) -> None:
        """At start, reconnect to the suppliers of the saved roster."""
        for supplier_id in self.roster.hired():
            self._connect(supplier_id)

    def fire_position(self, position: int, new_supplier_id: str | None) -> None:
        """Fire one position on request (supplier_change / supplier_replace)."""
        positions = list(self.roster.positions)
        old = positions[position]
        positions[position] = ""
        self._close(old)
        self._save(positions, f"replaced {old} at {position} on request")
        if new_supplier_id:
            # Keep the position for the supplier the user asked for until it answers.
            self._reserved[position] = new_supplier_id
            connector = self.make_connector(new_supplier_id)
            self.connectors[new_supplier_id] = connector
            connector.add_state_listener(self._requested_hire_changed)
            connector.event("connect")

    def announce_ready(self, *_: Any) -> None:
        """Every position has a live supplier."""
        self.shortage = ""

    def note_shortage(self, reason: str) -> None:
        """Could not hire now; the next timer tries again."""
        self.shortage = reason
        self.log.info("{id}: could not hire a supplier: {reason}", id=self.id, reason=reason)

    def restart_later(self, *_: Any) -> None:
        """A restart while busy: decide again once back in READY."""
        if ("restart", ()) not in self._pending:  # one pending restart decides as well as ten
            self._pending.append(("restart", ()))
        self._schedule_flush(0)

    def replace_later(self, position: int, new_supplier_id: str | None) -> None:
        """A replace request while busy: run it once back in READY."""
        self._pending.append(("replace", (position, new_supplier_id)))
        self._schedule_flush(0)

    def close_all(self, *_: Any) -> None:
        """Node stopping: stop every connector (contracts stay)."""
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
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

    def _schedule_flush(self, delay: float) -> None:
        # One pending call at a time, so shutdown can cancel it and leave no timer behind.
        if self._flush_call is None or not self._flush_call.active():
            self._flush_call = self.clock.callLater(delay, self._flush_pending)

    def _flush_pending(self) -> None:
        self._flush_call = None
        if self.destroyed or not self._pending:
            return
        if self.state != "READY":
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

    def _close(self, supplier_id: str) -> None:
        self.fired_at[supplier_id] = self.clock.seconds()
        connector = self.connectors.pop(supplier_id, None)
        if connector is not None:
            connector.event("close")

    def _save(self, positions: list[str], reason: str) -> None:
        self.roster.save(positions)
        self.log.info("{id}: suppliers changed: {reason}", id=self.id, reason=reason)
        self.on_changed(list(positions), reason)

    def _connector_changed(self, machine, old: str, new: str, event: str) -> None:
        if not self.destroyed:
            self.event("supplier-state-changed", machine.supplier_id, new)

    def _requested_hire_changed(self, machine, old: str, new: str, event: str) -> None:
        if new not in ("CONNECTED", "REFUSE", "DISCONNECTED", "CLOSED"):
            return
        machine.remove_state_listener(self._requested_hire_changed)
        position = next((p for p, s in self._reserved.items() if s == machine.supplier_id), None)
        self._reserved.pop(position, None)
        if new == "CONNECTED" and position is not None and not self.destroyed:
            self._place(machine, position)
        else:
            self.log.info("{id}: requested supplier {s} did not accept ({state}); hiring another",
                          id=self.id, s=machine.supplier_id, state=new)
            self.connectors.pop(machine.supplier_id, None)
            if new != "CLOSED":
                machine.event("shutdown")
        if not self.destroyed:
            self.event("restart")
