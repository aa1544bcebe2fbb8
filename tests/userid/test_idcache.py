"""Tests for bitnode.userid.idcache: a bounded LRU, pinned to first keys, with its files written off the reactor."""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.trial import unittest

from bitnode.errors import NotFound
from bitnode.userid.idcache import IdentityCache, KeyMismatch
from tests.userid.fakes import SERVER, SERVER2, make_identity, rsa_key


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


class MovedUserTests(unittest.TestCase):
    """A user who moved their primary identity server keeps every name they had (old -> new)."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.old = make_identity("alice", rsa_key(0), servers=(SERVER, SERVER2), revision=3)
        self.moved = make_identity("alice", rsa_key(0), servers=(SERVER2, SERVER), revision=4)
        self.events: list[tuple[str, str]] = []

    def cache(self, **kwargs) -> IdentityCache:
        cache = IdentityCache(self.dir, **kwargs)
        cache.on_moved = lambda old, new: self.events.append((old, new))
        return cache

    def test_the_newer_document_under_a_new_primary_replaces_the_old_one_and_keeps_its_name(self) -> None:
        cache = self.cache()
        cache.put(self.old)
        self.assertTrue(cache.put(self.moved))
        self.assertEqual(len(cache), 1)
        for name in (self.old.global_id, self.moved.global_id, self.old.idurl):
            self.assertEqual(cache.get(name), self.moved)
        self.assertEqual(cache.names(self.old.global_id), [self.moved.global_id, self.old.global_id])
        self.assertTrue(cache.same_user(self.old.global_id, self.moved.global_id))
        self.assertEqual(self.events, [(self.old.global_id, self.moved.global_id)])
        self.assertEqual(sorted(os.listdir(self.dir)), ["aliases.json", self.moved.global_id + ".xml"])
        # kept across a restart
        reopened = IdentityCache(self.dir)
        self.assertEqual(reopened.get(self.old.global_id), self.moved)
        self.assertEqual(reopened.stats()["aliases"], 1)

    def test_an_older_revision_under_the_old_primary_changes_nothing(self) -> None:
        cache = self.cache()
        cache.put(self.old)
        cache.put(self.moved)
        self.assertFalse(cache.put(self.old))
        self.assertEqual(cache.get(self.old.global_id), self.moved)

    def test_moving_back_to_the_first_server_follows_too(self) -> None:
        cache = self.cache()
        cache.put(self.old)
        cache.put(self.moved)
        back = make_identity("alice", rsa_key(0), servers=(SERVER, SERVER2), revision=5)
        self.assertTrue(cache.put(back))
        self.assertEqual(cache.current_id(self.moved.global_id), back.global_id)
        self.assertEqual(cache.get(self.moved.global_id), back)
        self.assertEqual(cache.names(back.global_id), [back.global_id, self.moved.global_id])

    def test_another_key_cannot_take_a_known_name_as_primary_or_as_a_source(self) -> None:
        cache = self.cache()
        cache.put(self.old)
        cache.put(self.moved)
        squatter = make_identity("alice", rsa_key(1), servers=(SERVER,), revision=9)
        self.assertRaises(KeyMismatch, cache.put, squatter)  # the old name is pinned through its alias
        claimer = make_identity("alice", rsa_key(1), servers=("id3.example.net:8084", SERVER2), revision=9)
        self.assertTrue(cache.put(claimer, also_known_as=self.moved.global_id))
        self.assertEqual(cache.get(self.moved.global_id), self.moved)  # alice keeps her names
        self.assertEqual(cache.stats()["foreign_claims"], 1)

    def test_an_unknown_listed_source_becomes_a_name_only_when_confirmed(self) -> None:
        cache = self.cache()
        cache.put(self.moved)  # a node that never saw alice@id.example.net
        self.assertFalse(cache.has(self.old.global_id))
        cache.put(self.moved, also_known_as=self.old.idurl)  # fetched for that name and served
        self.assertEqual(cache.get(self.old.global_id), self.moved)
        stranger = make_identity("alice", rsa_key(1), servers=("id3.example.net:8084",), revision=1)
        cache.put(stranger, also_known_as="alice@id4.example.net_8084")  # not listed: never a name
        self.assertFalse(cache.has("alice@id4.example.net_8084"))
        self.assertEqual(self.events, [])

    def test_removing_or_evicting_a_user_forgets_their_old_names(self) -> None:
        cache = self.cache(max_entries=2)
        cache.put(self.old)
        cache.put(self.moved)
        cache.remove(self.old.global_id)
        self.assertFalse(cache.has(self.old.global_id))
        self.assertFalse(cache.has(self.moved.global_id))
        cache.put(self.old)
        cache.put(self.moved)
        cache.put(make_identity("bob", rsa_key(1)))
        cache.put(make_identity("carol", rsa_key(2)))
        self.assertFalse(cache.has(self.old.global_id))
        self.assertEqual(cache.aliases(), {})

    def test_a_broken_aliases_file_is_reported_and_ignored(self) -> None:
        cache = self.cache()
        cache.put(self.old)
        cache.put(self.moved)
        with open(os.path.join(self.dir, "aliases.json"), "w") as handle:
            handle.write("{")
        reopened = IdentityCache(self.dir)
        self.assertFalse(reopened.has(self.old.global_id))
        self.assertTrue(reopened.has(self.moved.global_id))
        self.assertIn("aliases.json", reopened.load_errors[0])
