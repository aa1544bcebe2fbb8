"""The records one DHT node holds: which STOREs it accepts, its local copies, and its own records' upkeep.

:class:`RecordHolder` applies, on the node's :class:`bitnode.dht.storage.RecordStore`,
the rules of :mod:`bitnode.dht.records` (signature, overwrite, first-come
freshness) and the store's quotas to every STORE, and says what each refusal
was (the code in the STORED answer, and a counter). It also holds the key that
signs our own records and prepares a stored record for a push: our own
first-come records are signed again with a fresh ``created`` (nodes that do not
hold them yet only take fresh ones); others' first-come records that are too
old for such nodes are not pushed at all.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.interfaces import IReactorTime

from bitnode.dht import records
from bitnode.dht.limits import DHTLimits
from bitnode.dht.records import InvalidRecord, Record, RecordConflict
from bitnode.dht.storage import RecordStore, StoredRecord, WriterQuotaExceeded
from bitnode.errors import InsufficientStorage

#: STORED codes for refusals, by exception (most specific first), with the counter each one counts in
_REFUSALS: tuple[tuple[type[Exception], str, str], ...] = (
    (RecordConflict, "conflict", "store_conflicts"),
    (records.StaleRecord, "stale", "store_refused_stale"),
    (InvalidRecord, "invalid", "store_rejected"),
    (WriterQuotaExceeded, "quota", "store_refused_quota"),
    (InsufficientStorage, "full", "store_refused_full"),
)


class RecordHolder:
    """Accepts or refuses STOREs into ``store``; signs and re-signs our own records.

    :param counters: where accepted/refused STOREs are counted (the node's counters).
    """

    def __init__(self, store: RecordStore, clock: IReactorTime, limits: DHTLimits, counters: Counter[str]) -> None:
        self.store = store
        self._clock = clock
        self.limits = limits
        self.counters = counters
        self.signer: records.SignerKey | None = None
        self.pubkey = ""

    def set_signer(self, signer_key: records.SignerKey | None) -> None:
        """Install (or, with None, remove) the Ed25519 key that signs our records."""
        self.pubkey = "" if signer_key is None else records.public_key_b64(signer_key)
        self.signer = signer_key

    def accept_store(self, layer: int, raw: dict[str, Any]) -> tuple[bool, str, str]:
        """Apply a STORE of ``raw`` in ``layer``; returns ``(ok, code, reason)`` for the STORED answer."""
        now = self._clock.seconds()
        try:
            record = records.parse_and_verify(raw, now)
            if record.is_expired(now):
                raise InvalidRecord("record expired")
            old = self.local(layer, record.key)
            if old != record and (old is None or old.writer_pubkey != record.writer_pubkey):
                records.check_fresh(record, now, self.limits.first_come_max_age)  # a claim new to this node
            if not records.check_replace(old, record, now):
                self.store.mark_replicated(layer, record.key)
                return True, "same", ""
            mine = bool(self.pubkey) and record.writer_pubkey == self.pubkey
            self.store.put(layer, record.key, record.to_dict(), record.expires, own=mine)
        except (InvalidRecord, RecordConflict, InsufficientStorage) as exc:
            code, counter = next((code, counter) for kind, code, counter in _REFUSALS if isinstance(exc, kind))
            self.counters[counter] += 1
            return False, code, str(exc)
        self.counters["store_accepted"] += 1
        return True, "ok", ""

    def local(self, layer: int, key: str) -> Record | None:
        """Our valid local copy of ``key`` (a copy that no longer verifies is deleted)."""
        row = self.store.get(layer, key)
        if row is None:
            return None
        try:
            return records.parse_and_verify(row.record, self._clock.seconds())
        except InvalidRecord:
            self.store.delete(layer, key)
            return None

    def fresh_enough(self, record: Record) -> bool:
        """Would a node that does not hold ``record`` accept it now? (Only first-come records age out.)"""
        try:
            records.check_fresh(record, self._clock.seconds(), self.limits.first_come_max_age)
        except records.StaleRecord:
            return False
        return True

    def to_push(self, row: StoredRecord) -> Record | None:
        """The record to push for ``row`` (re-signed if it is our aged first-come one), or None to skip it."""
        now = self._clock.seconds()
        try:
            record = records.parse_and_verify(row.record, now)
        except InvalidRecord:
            self.store.delete(row.layer, row.key)
            return None
        if self.fresh_enough(record):
            return record
        if record.writer_pubkey != self.pubkey or self.signer is None or record.expires <= int(now) + 1:
            self.counters["replicate_skipped_stale"] += 1
            return None
        record = records.sign_record(self.signer, record.key, record.value, record.record_type, int(now),
                                     record.expires, record.seq + 1)
        self.store.put(row.layer, record.key, record.to_dict(), record.expires, own=True)
        return record
