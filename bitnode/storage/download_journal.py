"""Downloads under way, kept on disk: a node killed mid-download resumes or cleans up at its next start.

The journal is one small JSON file (``metadata/downloads.json``, replaced
atomically on every change)::

    {"format": 1, "downloads": {"<part name>": {"remote_path", "version_id", "local_path", "root",
                                                "part_name", "segments_done", "bytes_done", "started"}}}

An entry is written *before* its temporary file is created, updated at each
checkpoint (the part file fsynced first, so ``bytes_done`` bytes of it are on
disk), and removed once the download ended and its part was renamed or
removed. Entries found at start are what the last run left: the transfer
manager resumes those of its own files from their checkpoint and removes
the part files of the others (:meth:`TransferManager.resume_downloads`). A
journal that cannot be read is set aside and counts as empty (its part files
then stay where they are: nothing says they are ours).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bitnode.main.fileutil import atomic_write

JOURNAL_FORMAT = 1
#: Entries kept at most (downloads queued and running); a bigger file is not believed.
MAX_ENTRIES = 10000
_FIELDS = {"remote_path": str, "version_id": str, "local_path": str, "part_name": str, "segments_done": int,
           "bytes_done": int}


def _read(path: str) -> dict:
    """The entries in the journal file ({} when there is none); a file that does not read is set aside."""
    try:
        with open(path, "rb") as handle:
            doc = json.loads(handle.read(16 * 1024 * 1024).decode("utf-8"))
        entries = doc["downloads"]
        if doc.get("format") != JOURNAL_FORMAT or not isinstance(entries, dict) or len(entries) > MAX_ENTRIES:
            raise ValueError("not a download journal")
        for name, entry in entries.items():
            if not isinstance(entry, dict) or entry.get("part_name") != name or any(
                    not isinstance(entry.get(key), kind) or isinstance(entry.get(key), bool)
                    for key, kind in _FIELDS.items()) or not isinstance(entry.get("root"), str | None):
                raise ValueError(f"entry {name!r} is malformed")
        return entries
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        os.replace(path, path + ".unreadable")
        return {}


class DownloadJournal:
    """The journal file at ``path``; every change is written (atomically, in a worker thread) before it fires."""

    log = Logger()

    def __init__(self, path: str, run_in_thread: Callable[..., defer.Deferred]):
        self.path = path
        self.run_in_thread = run_in_thread
        self._entries: dict[str, dict] = {}
        self._lock = defer.DeferredLock()

    def load(self) -> defer.Deferred:
        """Read the file; fires with a copy of its entries (what the last run left)."""
        d = self.run_in_thread(_read, self.path)

        def loaded(entries: dict) -> dict:
            self._entries = entries
            return {name: dict(entry) for name, entry in entries.items()}

        return d.addCallback(loaded)

    def entries(self) -> dict[str, dict]:
        """A copy of the entries now."""
        return {name: dict(entry) for name, entry in self._entries.items()}

    def put(self, entry: dict[str, Any]) -> defer.Deferred:
        """Add or replace the entry of ``entry["part_name"]``; fires once it is on disk."""
        self._entries[entry["part_name"]] = dict(entry)
        return self._write()

    def drop(self, part_name: str) -> defer.Deferred:
        """Forget a download that ended; fires once that is on disk."""
        if self._entries.pop(part_name, None) is None:
            return defer.succeed(None)
        return self._write()

    def _write(self) -> defer.Deferred:
        def write() -> defer.Deferred:
            data = json.dumps({"format": JOURNAL_FORMAT, "downloads": self._entries}, sort_keys=True).encode()
            return self.run_in_thread(atomic_write, self.path, data, 0o600)

        return self._lock.run(write)
