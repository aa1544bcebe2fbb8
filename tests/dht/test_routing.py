"""Tests for bitnode.dht.routing: k-buckets, splitting, eviction, refresh."""

from __future__ import annotations

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.dht.ids import ID_SPACE, Contact
from bitnode.dht.routing import RoutingTable
from bitnode.errors import BadRequest, Timeout


def contact(node_id: int) -> Contact:
    return Contact(node_id, "10.0.0.1", 1000 + node_id % 60000)


class FakePinger:
    """Records pings; the test decides their outcome."""

    def __init__(self) -> None:
        self.calls: list[tuple[Contact, Deferred]] = []

    def __call__(self, c: Contact) -> Deferred:
        d: Deferred = Deferred()
        self.calls.append((c, d))
        return d


class RoutingTableTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pinger = FakePinger()
        self.own = 0  # our id sits at the bottom of the space
        self.table = RoutingTable(self.own, self.clock, k=4, ping=self.pinger)

    def test_single_bucket_until_full(self) -> None:
        for i in range(1, 5):
            self.assertEqual(self.table.add(contact(i)), "added")
        self.assertEqual(len(self.table.buckets), 1)
        self.assertEqual(self.table.add(contact(self.own)), "self")

    def test_full_bucket_covering_own_id_splits(self) -> None:
        far = [ID_SPACE - 1 - i for i in range(4)]  # all in the top half
        for i in far:
            self.table.add(contact(i))
        self.assertEqual(self.table.add(contact(5)), "added")
        buckets = self.table.buckets
        self.assertEqual(len(buckets), 2)
        self.assertEqual((buckets[0].lo, buckets[0].hi, buckets[1].hi), (0, ID_SPACE // 2, ID_SPACE))
        self.assertEqual({c.node_id for c in buckets[1].contacts}, set(far))
        self.assertEqual([c.node_id for c in buckets[0].contacts], [5])
        self.assertEqual(len(self.table), 5)

    def fill_far_bucket(self) -> list[int]:
        far = [ID_SPACE - 1 - i for i in range(4)]
        for i in far:
            self.table.add(contact(i))
        self.table.add(contact(1))  # forces the split: the far half can no longer split
        return far

    def test_full_far_bucket_pings_least_recently_seen_and_keeps_it_if_alive(self) -> None:
        far = self.fill_far_bucket()
        newcomer = contact(ID_SPACE - 100)
        self.assertEqual(self.table.add(newcomer), "pending")
        self.assertEqual([c.node_id for c, _ in self.pinger.calls], [far[0]])
        # A second newcomer while the ping is out does not ping again.
        self.table.add(contact(ID_SPACE - 101))
        self.assertEqual(len(self.pinger.calls), 1)
        self.pinger.calls[0][1].callback("pong")
        bucket = self.table.bucket_for(far[0])
        self.assertEqual([c.node_id for c in bucket.contacts], far[1:] + far[:1])
        self.assertNotIn(newcomer.node_id, self.table)

    def test_full_far_bucket_evicts_oldest_if_it_does_not_answer(self) -> None:
        far = self.fill_far_bucket()
        newcomer = contact(ID_SPACE - 100)
        self.table.add(newcomer)
        self.pinger.calls[0][1].errback(Timeout("no answer"))
        self.assertNotIn(far[0], self.table)
        self.assertIn(newcomer.node_id, self.table)
        self.assertEqual(self.table.bucket_for(newcomer.node_id).contacts[-1], newcomer)

    def test_heard_from_contact_moves_to_most_recent_end(self) -> None:
        for i in range(1, 4):
            self.table.add(contact(i))
        self.assertEqual(self.table.add(contact(1)), "updated")
        self.assertEqual([c.node_id for c in self.table.buckets[0].contacts], [2, 3, 1])

    def test_failures_drop_contact_after_max_failures(self) -> None:
        self.table.add(contact(7))
        self.assertFalse(self.table.note_failure(7))
        self.assertTrue(self.table.note_failure(7))
        self.assertNotIn(7, self.table)

    def test_hearing_from_contact_resets_failures(self) -> None:
        self.table.add(contact(7))
        self.table.note_failure(7)
        self.table.add(contact(7))
        self.assertFalse(self.table.note_failure(7))

    def test_closest_orders_by_xor_distance(self) -> None:
        rng = random.Random(5)
        table = RoutingTable(rng.getrandbits(256), self.clock, k=20)
        ids = [rng.getrandbits(256) for _ in range(200)]
        for i in ids:
            table.add(contact(i))
        target = rng.getrandbits(256)
        got = [c.node_id for c in table.closest(target, 10)]
        known = [c.node_id for c in table.contacts()]
        self.assertEqual(got, sorted(known, key=lambda i: i ^ target)[:10])
        self.assertNotIn(got[0], [c.node_id for c in table.closest(target, 10, exclude=frozenset({got[0]}))])

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(st.integers(0, 2**256 - 1), st.lists(st.integers(0, 2**256 - 1), max_size=300),
           st.integers(0, 2**256 - 1), st.integers(1, 40), st.integers(0, 5), st.integers(1, 8))
    def test_closest_walks_buckets_and_agrees_with_sorting_the_whole_table(
        self, own: int, ids: list[int], target: int, count: int, excluded: int, k: int
    ) -> None:
        # Ids near our own and near the target make deep buckets on both sides.
        ids = ids + [own ^ (1 << b) for b in range(0, 256, 7)] + [target ^ (1 << b) for b in range(0, 256, 11)]
        table = RoutingTable(own, self.clock, k=k)
        for i in ids:
            table.add(contact(i))
        known = [c.node_id for c in table.contacts()]
        exclude = frozenset(sorted(known, key=lambda i: i ^ target)[:excluded])
        truth = sorted((i for i in known if i not in exclude), key=lambda i: i ^ target)[:count]
        self.assertEqual([c.node_id for c in table.closest(target, count, exclude)], truth)

    def test_bucket_refresh_becomes_due_after_interval_unless_looked_up(self) -> None:
        self.fill_far_bucket()
        self.assertEqual(self.table.stale_buckets(3600), [])
        self.clock.advance(1800)
        self.table.touch(ID_SPACE - 1)  # a lookup into the far bucket
        self.clock.advance(1800)
        stale = self.table.stale_buckets(3600)
        self.assertEqual([(b.lo, b.hi) for b in stale], [(0, ID_SPACE // 2)])
        target = RoutingTable.random_id_in(stale[0], random.Random(1))
        self.assertTrue(stale[0].covers(target))

    def test_to_dict_is_json_safe(self) -> None:
        self.fill_far_bucket()
        snap = json.loads(json.dumps(self.table.to_dict()))
        self.assertEqual(snap["size"], 5)
        self.assertEqual(len(snap["buckets"]), 2)


class FreshContactTests(unittest.TestCase):
    """A full bucket pings its oldest contact for a newcomer only when that contact was quiet for fresh_for."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.pinger = FakePinger()
        self.table = RoutingTable(0, self.clock, k=4, ping=self.pinger, fresh_for=900.0)
        self.far = [ID_SPACE - 1 - i for i in range(4)]
        for i in self.far:
            self.table.add(contact(i))
        self.table.add(contact(1))  # the far half can no longer split

    def test_a_day_of_newcomers_costs_one_ping_per_quiet_period_not_one_each(self) -> None:
        # one newcomer a second for a day, while the far bucket's contacts stay quiet
        for second in range(86400):
            self.table.add(contact(ID_SPACE - 100 - second % 50))
            for _, d in self.pinger.calls[len(self.pinger.calls) - 1:]:
                if not d.called:
                    d.callback("pong")  # every oldest contact answers
            self.clock.advance(1)
        # each of the 4 contacts is pinged at most once per 900 s once it went quiet: ~4 * 86400 / 900
        self.assertLessEqual(len(self.pinger.calls), 4 * 86400 // 900 + 4)
        self.assertGreater(self.table.pings_skipped_fresh, 80000)
        self.assertEqual({c.node_id for c in self.table.bucket_for(self.far[0]).contacts}, set(self.far))

    def test_a_contact_heard_within_fresh_for_is_not_pinged_and_a_quiet_one_is(self) -> None:
        self.clock.advance(899)
        self.assertEqual(self.table.add(contact(ID_SPACE - 100)), "pending")
        self.assertEqual(self.pinger.calls, [])
        self.clock.advance(2)
        self.table.add(contact(ID_SPACE - 101))
        self.assertEqual([c.node_id for c, _ in self.pinger.calls], [self.far[0]])
        self.pinger.calls[0][1].errback(Timeout("no answer"))  # dead: the newest replacement takes its place
        self.assertNotIn(self.far[0], self.table)
        self.assertIn(ID_SPACE - 101, self.table)

    def test_fresh_for_cannot_be_negative(self) -> None:
        with self.assertRaises(BadRequest):
            RoutingTable(0, self.clock, fresh_for=-1)
