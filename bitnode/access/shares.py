"""The shares a node knows (created by it, or granted to it) and the history of what happened to them.

One JSON file, ``metadata/shares.json`` (mode 0600, format 1), written
atomically after every change and before the change is reported::

    {"format": 1,
     "shares": {"<key id>": {"key_id", "owner_id", "label", "mine": bool, "created": seconds,
                             "active": bool, "grantees": [global ids], "writers": [global ids],
                             "granted_by": "", "index_serial": int, "index_sha256": "",
                             "absorbed": {"<writer>": [version ids]}, "proposed_by": ""}},
     "history": [{"time", "event", "key_id", "user", "detail"}, ...]}

``grantees``, ``writers`` (the grantees who may also write), ``index_*`` and
``absorbed`` (the writers' versions taken into my catalog, :mod:`bitnode.access.share_absorb`)
concern shares I own; ``granted_by`` a share I received; ``proposed_by`` a
share in my namespace another user made and proposed to me (not granted yet). ``active`` is whether
the share was opened (a received share is opened again when the node
starts). ``history`` keeps the newest :data:`HISTORY_SIZE` entries: created,
granted, revoked, received, opened, closed, deleted, failures worth knowing.

The key material itself is in the key store, never here. Small file, rare
changes: written synchronously like the key store's metadata.

The records (not the history) also travel in my catalog backup, sealed to my
master key (service_shares registers them as the backup part ``shares``): an
owner recovered on a new machine still knows who its shares are granted to,
so it goes on publishing their readers lists and indexes; the keys
themselves come back with the key backup of service_backups.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.logger import Logger

from bitnode.errors import BadRequest, NotFound
from bitnode.main.fileutil import PRIVATE_FILE_MODE, atomic_write, read_limited

REGISTRY_FORMAT = 1
HISTORY_SIZE = 500
MAX_FILE_BYTES = 16 * 1024 * 1024
_FIELDS = {"key_id": "", "owner_id": "", "label": "", "mine": False, "created": 0.0, "active": False,
           "grantees": [], "writers": [], "granted_by": "", "index_serial": 0, "index_sha256": "",
           "absorbed": {}, "proposed_by": ""}


class ShareRegistry:
    """The persisted list of shares and their history; see the module docstring."""

    log = Logger()

    def __init__(self, path: str, clock: Any, history_size: int = HISTORY_SIZE, on_change: Any = None):
        self.path = path
        self.clock = clock
        self.history_size = history_size
        #: Called with no argument after a record was saved or dropped (not after a history note).
        self.on_change = on_change
        self._shares: dict[str, dict] = {}
        self._history: list[dict] = []
        self._load()

    # --- reading -------------------------------------------------------------------

    def get(self, key_id: str) -> dict | None:
        """A copy of one share's record, or None."""
        record = self._shares.get(key_id)
        return _copy(record) if record is not None else None

    def require(self, key_id: str) -> dict:
        """A copy of one share's record; NotFound when unknown."""
        record = self.get(key_id)
        if record is None:
            raise NotFound(f"share {key_id} is not known here")
        return record

    def shares(self) -> list[dict]:
        """Copies of every record, sorted by key id."""
        return [_copy(self._shares[k]) for k in sorted(self._shares)]

    def history(self) -> list[dict]:
        """Every kept history entry, oldest first."""
        return [dict(entry) for entry in self._history]

    # --- changing -----------------------------------------------------------------

    def put(self, key_id: str, **fields: Any) -> dict:
        """Create or update one share's record with ``fields``, save, and return the record."""
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise BadRequest(f"unknown share fields {sorted(unknown)}")
        record = self._shares.get(key_id) or _copy(dict(_FIELDS, key_id=key_id, created=self.clock.seconds()))
        record.update(_copy(fields))
        self._shares[key_id] = record
        self._save()
        self._changed()
        return _copy(record)

    def forget(self, key_id: str) -> None:
        """Drop one share's record (its history stays)."""
        if self._shares.pop(key_id, None) is not None:
            self._save()
            self._changed()

    def restore(self, records: list) -> list[str]:
        """Add the records of a backup that are not known here (known ones win); the key ids added."""
        added = []
        for record in records if isinstance(records, list) else []:
            if not isinstance(record, dict) or not isinstance(record.get("key_id"), str):
                continue
            key_id = record["key_id"]
            if key_id in self._shares:
                continue
            self._shares[key_id] = _copy(dict(_FIELDS, **{f: v for f, v in record.items() if f in _FIELDS}))
            added.append(key_id)
        if added:
            self._save()
            self._changed()
        return added

    def note(self, event: str, key_id: str, user: str = "", detail: str = "") -> dict:
        """Append a history entry (and save); returns it."""
        entry = {"time": self.clock.seconds(), "event": event, "key_id": key_id, "user": user, "detail": detail}
        self._history.append(entry)
        del self._history[:-self.history_size]
        self._save()
        return dict(entry)

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # --- the file ---------------------------------------------------------------------

    def _save(self) -> None:
        data = {"format": REGISTRY_FORMAT, "shares": self._shares, "history": self._history}
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"), mode=PRIVATE_FILE_MODE)

    def _load(self) -> None:
        try:
            data = json.loads(read_limited(self.path, MAX_FILE_BYTES))
            if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
                raise ValueError("unknown format")
            shares = {str(k): dict(_FIELDS, **{f: v for f, v in r.items() if f in _FIELDS})
                      for k, r in data["shares"].items()}
            history = [dict(e) for e in data.get("history", []) if isinstance(e, dict)]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError, BadRequest) as err:
            # Keep the unreadable file for a human; the keys themselves are safe in the key store.
            os.replace(self.path, self.path + ".broken")
            self.log.error("shares file unreadable ({err}); moved aside", err=err)
            return
        self._shares, self._history = shares, history[-self.history_size:]


def _copy(record: dict) -> dict:
    return {k: list(v) if isinstance(v, list)
            else {str(a): list(b) for a, b in v.items() if isinstance(b, list)} if isinstance(v, dict) else v
            for k, v in record.items()}
