"""The customer's supplier roster: positions, retiring holders and releases still to deliver.

One JSON file (``metadata/suppliers.json``), written atomically before anyone
is told of a change. Position i's supplier holds block i of every segment; an
empty position is ``""``.

A supplier that leaves a position (replaced, or its position went away) is
not told to delete anything at once: it becomes a **retiring** holder. Its
blocks are still read (downloads, catalog restore, rebuilds) until storage
says nothing in the catalog depends on it any more; then it moves to
**releasing** (its CancelService is still to be delivered) and, once the
supplier acknowledged, it is gone from the file. A restart forgets neither.

Format 2 (format 1 had only ``revision`` and ``positions``)::

    {"format": 2, "revision": 7, "positions": ["a@h_1", "", "c@h_1"],
     "retiring": [{"supplier_id", "position", "reason", "fault", "since"}],
     "releasing": [{"supplier_id", "since", "attempts", "error"}]}

``fault`` says whether it left for its own failure (dead, refused): only
those are kept from being hired again for a while.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from bitnode.main.fileutil import atomic_write

ROSTER_FORMAT = 2
READABLE_FORMATS = (1, 2)


@dataclass(frozen=True)
class Retiring:
    """A supplier that left ``position`` and still holds blocks we may need."""

    supplier_id: str
    position: int
    reason: str
    fault: bool
    since: float


@dataclass(frozen=True)
class Releasing:
    """A supplier whose CancelService is still to be delivered."""

    supplier_id: str
    since: float
    attempts: int = 0
    error: str = ""


class SupplierRoster:
    """The customer's supplier positions and former holders, persisted in one JSON file."""

    def __init__(self, path: str):
        self.path = path
        self.positions: list[str] = []
        self.retiring: list[Retiring] = []
        self.releasing: list[Releasing] = []
        self.revision = 0
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return
        if data.get("format") not in READABLE_FORMATS:
            raise ValueError(f"unknown roster format {data.get('format')!r} in {path}")
        self.positions = [str(p) for p in data["positions"]]
        self.revision = int(data["revision"])
        self.retiring = [Retiring(str(r["supplier_id"]), int(r["position"]), str(r.get("reason", "")),
                                  bool(r.get("fault", False)), float(r.get("since", 0.0)))
                         for r in data.get("retiring", [])]
        self.releasing = [Releasing(str(r["supplier_id"]), float(r.get("since", 0.0)), int(r.get("attempts", 0)),
                                    str(r.get("error", ""))) for r in data.get("releasing", [])]

    def save(self, positions: list[str] | None = None) -> None:
        """Store new positions (and the current retiring/releasing lists) atomically; a new revision."""
        if positions is not None:
            self.positions = list(positions)
        self.revision += 1
        self._write()

    def save_holders(self) -> None:
        """Store a change of the retiring/releasing lists only (the positions, so the revision, stay)."""
        self._write()

    def _write(self) -> None:
        data: dict[str, Any] = {"format": ROSTER_FORMAT, "revision": self.revision, "positions": self.positions,
                                "retiring": [asdict(r) for r in self.retiring],
                                "releasing": [asdict(r) for r in self.releasing]}
        atomic_write(self.path, json.dumps(data, indent=1).encode("utf-8"), mode=0o600)

    def hired(self) -> list[str]:
        """The suppliers in use, in position order."""
        return [p for p in self.positions if p]

    # --- former holders (the caller saves) -------------------------------------------------

    def retire(self, supplier_id: str, position: int, reason: str, fault: bool, now: float) -> None:
        """``supplier_id`` left ``position``: keep it readable until storage releases it."""
        self.retiring = [r for r in self.retiring if r.supplier_id != supplier_id]
        self.retiring.append(Retiring(supplier_id, position, reason, fault, now))

    def retiring_ids(self) -> set[str]:
        """Every retiring holder."""
        return {r.supplier_id for r in self.retiring}

    def releasing_ids(self) -> set[str]:
        """Every supplier whose CancelService is still to be delivered."""
        return {r.supplier_id for r in self.releasing}

    def start_release(self, supplier_id: str, now: float) -> bool:
        """A retiring holder nothing depends on any more: its CancelService is due. False if not retiring."""
        if supplier_id not in self.retiring_ids():
            return False
        self.retiring = [r for r in self.retiring if r.supplier_id != supplier_id]
        if supplier_id not in self.releasing_ids():
            self.releasing.append(Releasing(supplier_id, now))
        return True

    def note_release_attempt(self, supplier_id: str, error: str) -> None:
        """A CancelService to ``supplier_id`` was not acknowledged: count it."""
        self.releasing = [replace(r, attempts=r.attempts + 1, error=error[:200]) if r.supplier_id == supplier_id
                          else r for r in self.releasing]

    def forget(self, supplier_id: str) -> None:
        """``supplier_id`` is no former holder any more (released, or hired again)."""
        self.retiring = [r for r in self.retiring if r.supplier_id != supplier_id]
        self.releasing = [r for r in self.releasing if r.supplier_id != supplier_id]
