"""Tests for the fault-injecting wrapper of bitnode.storage.memory_grid."""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial import unittest

from bitnode.errors import InsufficientStorage, Unavailable
from bitnode.storage.memory_grid import Call, FaultyServer, MemoryStorageServer
from bitnode.storage.ports import BlockNotFound

CUSTOMER = "alice"


class FaultyServerTests(unittest.TestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.inner = MemoryStorageServer()
        self.server = FaultyServer(self.inner, self.clock, name="s0")
        self.successResultOf(self.inner.store_block(CUSTOMER, "v/0/0", b"hello"))

    def test_counts_calls(self):
        self.successResultOf(self.server.fetch_block(CUSTOMER, "v/0/0"))
        self.successResultOf(self.server.store_block(CUSTOMER, "v/0/1", b"x"))
        self.successResultOf(self.server.fetch_block(CUSTOMER, "v/0/1"))
        self.assertEqual(self.server.calls["fetch_block"], 2)
        self.assertEqual(self.server.calls["store_block"], 1)
        self.assertEqual(self.server.log[1], Call("store_block", CUSTOMER, "v/0/1"))

    def test_offline_fails_immediately_and_still_counts(self):
        self.server.go_offline()
        self.failureResultOf(self.server.fetch_block(CUSTOMER, "v/0/0"), Unavailable)
        self.assertEqual(self.server.calls["fetch_block"], 1)
        self.server.go_online()
        self.assertEqual(self.successResultOf(self.server.fetch_block(CUSTOMER, "v/0/0")), b"hello")

    def test_hang_until_release(self):
        self.server.hang()
        d = self.server.fetch_block(CUSTOMER, "v/0/0")
        self.clock.advance(1000)
        self.assertNoResult(d)
        self.assertEqual(self.server.hung_calls, 1)
        self.server.release()
        self.assertEqual(self.successResultOf(d), b"hello")

    def test_hung_call_can_be_timed_out_by_caller(self):
        self.server.hang()
        d = self.server.fetch_block(CUSTOMER, "v/0/0")
        d.addTimeout(5, self.clock)
        self.clock.advance(5)
        self.failureResultOf(d, defer.TimeoutError)
        self.assertEqual(self.server.hung_calls, 0)

    def test_slow_answers_after_delay(self):
        self.server.slow(3.0)
        d = self.server.fetch_block(CUSTOMER, "v/0/0")
        self.clock.advance(2.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(d), b"hello")

    def test_slow_failure_is_delivered_late(self):
        self.server.slow(1.0)
        d = self.server.fetch_block(CUSTOMER, "v/9/9")
        self.assertNoResult(d)
        self.clock.advance(1.0)
        self.failureResultOf(d, BlockNotFound)

    def test_cancel_slow_call(self):
        self.server.slow(10.0)
        d = self.server.fetch_block(CUSTOMER, "v/9/9")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_drop_counted_calls(self):
        self.server.drop("store_block", count=2)
        self.failureResultOf(self.server.store_block(CUSTOMER, "v/0/1", b"x"), Unavailable)
        self.failureResultOf(self.server.store_block(CUSTOMER, "v/0/1", b"x"), Unavailable)
        self.successResultOf(self.server.store_block(CUSTOMER, "v/0/1", b"x"))
        self.successResultOf(self.server.fetch_block(CUSTOMER, "v/0/0"))

    def test_drop_rejects_unknown_operation(self):
        self.assertRaises(ValueError, self.server.drop, "frobnicate")

    def test_corrupt_flips_one_byte_on_fetch_only(self):
        self.server.corrupt("v/0/0")
        got = self.successResultOf(self.server.fetch_block(CUSTOMER, "v/0/0"))
        self.assertEqual(len(got), 5)
        self.assertEqual(sum(a != b for a, b in zip(got, b"hello", strict=True)), 1)
        self.assertEqual(self.successResultOf(self.inner.fetch_block(CUSTOMER, "v/0/0")), b"hello")

    def test_heal_clears_everything(self):
        self.server.go_offline()
        self.server.corrupt()
        self.server.slow(5)
        self.server.heal()
        self.assertEqual(self.successResultOf(self.server.fetch_block(CUSTOMER, "v/0/0")), b"hello")


class QuotaTests(unittest.TestCase):
    def test_quota_is_enforced_per_customer(self):
        s = MemoryStorageServer(quota_bytes=10)
        self.successResultOf(s.store_block("a", "v/0/0", b"x" * 8))
        self.failureResultOf(s.store_block("a", "v/0/1", b"x" * 3), InsufficientStorage)
        self.successResultOf(s.store_block("a", "v/0/0", b"x" * 10))
        self.successResultOf(s.store_block("b", "v/0/0", b"x" * 10))
        self.assertEqual(s.used_bytes("a"), 10)
