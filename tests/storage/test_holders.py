"""PositionReader and Placement.readers_for_n: a position is read from its current supplier, then its retiring holders."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.errors import BadRequest, Unavailable
from bitnode.storage.holders import PositionReader
from bitnode.storage.job_context import Placement
from bitnode.storage.memory_grid import FaultyServer, MemoryStorageServer
from bitnode.storage.ports import BlockNotFound, IStorageServer

ME = "me@id.example.net_8084"


class PositionReaderTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.current = FaultyServer(MemoryStorageServer(), self.clock, "current")
        self.old = FaultyServer(MemoryStorageServer(), self.clock, "old")
        self.successResultOf(self.old.wrapped.store_block(ME, "V/0/1", b"old copy"))
        self.reader = PositionReader([self.current, self.old])

    def test_provides_the_storage_interface(self):
        self.assertTrue(IStorageServer.providedBy(self.reader))

    def test_the_current_supplier_answers_first(self):
        self.successResultOf(self.current.wrapped.store_block(ME, "V/0/1", b"new copy"))
        self.assertEqual(self.successResultOf(self.reader.fetch_block(ME, "V/0/1")), b"new copy")
        self.assertEqual(self.old.calls["fetch_block"], 0)

    def test_a_block_not_rebuilt_yet_comes_from_the_retiring_holder(self):
        self.assertEqual(self.successResultOf(self.reader.fetch_block(ME, "V/0/1")), b"old copy")

    def test_a_silent_current_supplier_falls_back_too(self):
        self.current.go_offline()
        self.assertEqual(self.successResultOf(self.reader.fetch_block(ME, "V/0/1")), b"old copy")

    def test_nobody_has_it_answers_the_current_suppliers_error(self):
        self.old.go_offline()
        self.failureResultOf(self.reader.fetch_block(ME, "V/0/2"), BlockNotFound)
        self.current.go_offline()
        self.failureResultOf(self.reader.fetch_block(ME, "V/0/2"), Unavailable)

    def test_a_cancelled_fetch_stops_the_chain(self):
        self.current.hang()
        d = self.reader.fetch_block(ME, "V/0/1")
        d.cancel()
        self.failureResultOf(d)
        self.assertEqual((self.current.hung_calls, self.old.calls["fetch_block"]), (0, 0))

    def test_nothing_is_written_or_deleted_through_it(self):
        self.failureResultOf(self.reader.store_block(ME, "V/0/1", b"x"), BadRequest)
        self.failureResultOf(self.reader.delete(ME, "V/"), BadRequest)
        self.assertEqual(self.successResultOf(self.reader.list_blocks(ME, "")), {})
        self.assertRaises(BadRequest, PositionReader, [])


class PlacementTests(unittest.TestCase):
    def test_readers_add_retiring_holders_to_their_position_and_to_positions_that_went_away(self):
        a, b, old1, old3 = (MemoryStorageServer() for _ in range(4))
        placement = Placement(("a", "b"), (a, b), ((1, "old1", old1), (3, "old3", old3)))
        readers = placement.readers_for_n(4)
        self.assertIs(readers[0], a)
        self.assertEqual(readers[1].servers, [b, old1])
        self.assertIsNone(readers[2])
        self.assertIs(readers[3], old3)
        self.assertEqual(placement.for_n(4), (["a", "b", "", ""], [a, b, None, None]))  # writes: current only
        self.assertEqual(placement.holders(), {"a": a, "b": b, "old1": old1, "old3": old3})
