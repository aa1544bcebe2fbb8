"""Tests for bitnode.dht.holding: which STOREs a node accepts, and how its own records are pushed."""

from __future__ import annotations

from collections import Counter

from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.crypt.fastsign import generate_ed25519
from bitnode.dht import records
from bitnode.dht.holding import RecordHolder
from bitnode.dht.limits import DHTLimits
from bitnode.dht.storage import RecordStore

NOW = 1_700_000_000
ME, OTHER = generate_ed25519(), generate_ed25519()


def nick(signer, created: int, seq: int = 0, name: str = "alice") -> records.Record:
    return records.sign_record(signer, f"nickname:{name}", {"idurl": "http://id/x.xml", "nickname": name},
                               records.NICKNAME, created, created + 86400, seq)


class RecordHolderTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.counters: Counter[str] = Counter()
        limits = DHTLimits(writer_max_records=1)
        self.store = RecordStore(":memory:", self.clock, limits)
        self.addCleanup(self.store.close)
        self.holder = RecordHolder(self.store, self.clock, limits, self.counters)
        self.holder.set_signer(ME)

    def test_each_refusal_has_its_code_and_counter(self) -> None:
        first = nick(OTHER, NOW)
        self.assertEqual(self.holder.accept_store(0, first.to_dict()), (True, "ok", ""))
        self.assertEqual(self.holder.accept_store(0, first.to_dict())[:2], (True, "same"))
        cases = [
            (nick(ME, NOW - 601).to_dict(), "stale"),
            (nick(ME, NOW).to_dict(), "conflict"),
            (dict(first.to_dict(), seq=9), "invalid"),
            (nick(OTHER, NOW, name="bob").to_dict(), "quota"),
        ]
        for raw, code in cases:
            self.assertEqual(self.holder.accept_store(0, raw)[:2], (False, code))
        self.assertEqual({k: v for k, v in self.counters.items()},
                         {"store_accepted": 1, "store_refused_stale": 1, "store_conflicts": 1, "store_rejected": 1,
                          "store_refused_quota": 1})

    def test_an_owner_renewal_is_accepted_whatever_is_stored(self) -> None:
        self.holder.accept_store(0, nick(OTHER, NOW).to_dict())
        self.clock.advance(3600)
        renewal = nick(OTHER, NOW + 3600, seq=1)
        self.assertEqual(self.holder.accept_store(0, renewal.to_dict())[:2], (True, "ok"))
        self.assertEqual(self.holder.local(0, "nickname:alice"), renewal)

    def test_our_aged_first_come_record_is_resigned_others_are_skipped(self) -> None:
        mine = nick(ME, NOW, name="me")
        self.store.put(0, mine.key, mine.to_dict(), mine.expires, own=True)
        self.holder.accept_store(0, nick(OTHER, NOW).to_dict())
        self.assertEqual(self.holder.to_push(self.store.get(0, mine.key)), mine)  # still fresh: as it is
        self.clock.advance(3600)
        pushed = self.holder.to_push(self.store.get(0, mine.key))
        self.assertEqual((pushed.seq, pushed.created, pushed.expires), (1, NOW + 3600, mine.expires))
        self.assertEqual(self.holder.local(0, mine.key), pushed)
        self.assertIsNone(self.holder.to_push(self.store.get(0, "nickname:alice")))
        self.assertEqual(self.counters["replicate_skipped_stale"], 1)
