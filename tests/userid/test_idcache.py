"""Tests for bitnode.userid.idcache: a bounded LRU, pinned to first keys, with its files written off the reactor."""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from bitnode.errors import NotFound
from bitnode.userid.idcache import IdentityCache, KeyMismatch
from tests.userid.fakes import make_identity, rsa_key


class Writer:
    """A writer that runs each job only when the test says (as a thread pool would, later)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[object, tuple, Deferred]] = []

    def __call__(self, fn, *args) -> Deferred:
        d: Deferred = Deferred()
        self.jobs.append((fn, args, d))
        return d

    def run_all(self) -> None:
        while self.jobs:
            fn, args, d = self.jobs.pop(0)
            d.callback(fn(*args))


class BoundedCacheTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.people = [make_identity(f"user{n}", rsa_key(n % 3)) for n in range(6)]

    def files(self) -> list[str]:
        return sorted(os.listdir(self.dir))

    def test_the_least_recently_used_identity_goes_first_with_its_file(self) -> None:
        cache = IdentityCache(self.dir, max_entries=3)
        for person in self.people[:3]:
            cache.put(person)
        cache.get(self.people[0].global_id)  # used: it stays
        cache.put(self.people[3])
        self.assertTrue(cache.has(self.people[0].global_id))
        self.assertFalse(cache.has(self.people[1].global_id))
        self.assertEqual(len(cache), 3)
        self.assertEqual(len(self.files()), 3)
        self.assertNotIn(self.people[1].global_id + ".xml", self.files())
        self.assertEqual(cache.stats()["evicted"], 1)

    def test_at_start_only_the_newest_files_are_kept(self) -> None:
        cache = IdentityCache(self.dir, max_entries=10)
        for n, person in enumerate(self.people):
            cache.put(person)
            path = os.path.join(self.dir, person.global_id + ".xml")
            os.utime(path, (1000 + n, 1000 + n))
        reopened = IdentityCache(self.dir, max_entries=4)
        self.assertEqual(len(reopened), 4)
        self.assertEqual(reopened.stats()["pruned_at_start"], 2)
        self.assertEqual(len(self.files()), 4)
        self.assertFalse(reopened.has(self.people[0].global_id))
        self.assertTrue(reopened.has(self.people[5].global_id))

    def test_files_are_written_by_the_writer_in_order_not_at_once(self) -> None:
        writer = Writer()
        cache = IdentityCache(self.dir, max_entries=2, writer=writer)
        cache.put(self.people[0])
        self.assertEqual(self.files(), [])  # nothing on the reactor
        self.assertTrue(cache.has(self.people[0].global_id))  # but known at once
        newer = self.people[0].updated(now=1_700_000_100, contacts=("tcp://127.0.0.1:9001",)).sign(rsa_key(0))
        cache.put(newer)
        cache.put(self.people[1])
        cache.put(self.people[2])  # pushes people[0] out
        flushed = cache.flush()
        self.assertNoResult(flushed)
        writer.run_all()
        self.successResultOf(flushed)
        self.assertEqual(self.files(), sorted(p.global_id + ".xml" for p in self.people[1:3]))
        self.assertEqual(cache.stats()["writes_pending"], 0)
        reopened = IdentityCache(self.dir)
        self.assertEqual(len(reopened), 2)

    def test_the_pin_still_holds(self) -> None:
        cache = IdentityCache(self.dir)
        cache.put(self.people[0])
        other_key = make_identity("user0", rsa_key(1), revision=2)
        self.assertRaises(KeyMismatch, cache.put, other_key)
        cache.remove(self.people[0].global_id)
        self.assertRaises(NotFound, cache.get, self.people[0].global_id)
        self.assertEqual(self.files(), [])
