"""The contract every IStorageServer implementation must meet, plus the path scheme.

Reuse: subclass :class:`StorageServerContract` together with
``twisted.trial.unittest.TestCase`` and implement :meth:`make_server` (it may
return a Deferred). Every test returns a Deferred, so slow real transports work.
"""

from __future__ import annotations

import hashlib

from twisted.internet import defer, task
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from bitnode.errors import BadRequest
from bitnode.storage import catalog_backup, ports, share_scope
from bitnode.storage.job_context import new_version_id
from bitnode.storage.memory_grid import FaultyServer, MemoryStorageServer
from bitnode.storage.ports import BlockNotFound, IStorageServer


def _run(coro_fn):
    """Turn an ``async def`` test body into a trial test returning a Deferred."""

    def test(self):
        return defer.ensureDeferred(coro_fn(self))

    test.__name__ = coro_fn.__name__
    test.__doc__ = coro_fn.__doc__
    return test


async def _fails_with(d: defer.Deferred, kind: type[BaseException]) -> BaseException:
    try:
        await d
    except kind as exc:
        return exc
    raise AssertionError(f"expected {kind.__name__}")


class StorageServerContract:
    """Mix into a trial TestCase; set up a fresh server per test via :meth:`make_server`."""

    customer = "alice@example.net"

    def make_server(self):
        raise NotImplementedError

    async def server(self):
        return await defer.maybeDeferred(self.make_server)

    @_run
    async def test_provides_interface(self):
        verifyObject(IStorageServer, await self.server())

    @_run
    async def test_store_then_fetch_returns_same_bytes(self):
        s = await self.server()
        self.assertIsNone(await s.store_block(self.customer, "v1/0/0", b"block zero"))
        self.assertEqual(await s.fetch_block(self.customer, "v1/0/0"), b"block zero")

    @_run
    async def test_empty_block_round_trips(self):
        s = await self.server()
        await s.store_block(self.customer, "v1/0/1", b"")
        self.assertEqual(await s.fetch_block(self.customer, "v1/0/1"), b"")

    @_run
    async def test_store_replaces(self):
        s = await self.server()
        await s.store_block(self.customer, "v1/0/0", b"old")
        await s.store_block(self.customer, "v1/0/0", b"new")
        self.assertEqual(await s.fetch_block(self.customer, "v1/0/0"), b"new")

    @_run
    async def test_fetch_missing_is_block_not_found(self):
        s = await self.server()
        await _fails_with(s.fetch_block(self.customer, "v1/0/0"), BlockNotFound)

    @_run
    async def test_customers_are_isolated(self):
        s = await self.server()
        await s.store_block(self.customer, "v1/0/0", b"mine")
        await _fails_with(s.fetch_block("bob@example.net", "v1/0/0"), BlockNotFound)
        self.assertEqual(await s.list_blocks("bob@example.net", ""), {})

    @_run
    async def test_list_by_prefix_gives_size_and_sha256(self):
        s = await self.server()
        await s.store_block(self.customer, "v1/0/0", b"aa")
        await s.store_block(self.customer, "v1/1/0", b"bbb")
        await s.store_block(self.customer, "v1/10/0", b"c")
        await s.store_block(self.customer, "v2/0/0", b"d")
        listing = await s.list_blocks(self.customer, "v1/1/")
        self.assertEqual(listing, {"v1/1/0": (3, hashlib.sha256(b"bbb").hexdigest())})
        self.assertEqual(sorted(await s.list_blocks(self.customer, "v1/")), ["v1/0/0", "v1/1/0", "v1/10/0"])
        self.assertEqual(len(await s.list_blocks(self.customer, "")), 4)

    @_run
    async def test_delete_path_and_prefix(self):
        s = await self.server()
        for path in ("v1/0/0", "v1/0/1", "v1/1/0", "v2/0/0"):
            await s.store_block(self.customer, path, b"x")
        self.assertEqual(await s.delete(self.customer, "v1/0/1"), 1)
        self.assertEqual(await s.delete(self.customer, "v1/"), 2)
        self.assertEqual(list(await s.list_blocks(self.customer, "")), ["v2/0/0"])

    @_run
    async def test_delete_of_nothing_is_not_an_error(self):
        s = await self.server()
        self.assertEqual(await s.delete(self.customer, "v9/0/0"), 0)
        self.assertEqual(await s.delete(self.customer, "v9/"), 0)

    @_run
    async def test_unsafe_paths_are_rejected(self):
        s = await self.server()
        for bad in ("../x", "/abs", "a//b", "a/../b", "", "a\\b", "a/b/"):
            await _fails_with(s.store_block(self.customer, bad, b"x"), BadRequest)
        await _fails_with(s.fetch_block(self.customer, "../etc/passwd"), BadRequest)
        await _fails_with(s.list_blocks(self.customer, "../"), BadRequest)
        await _fails_with(s.delete(self.customer, "/"), BadRequest)

    @_run
    async def test_bad_customer_is_rejected(self):
        s = await self.server()
        for bad in ("", "..", "a/b"):
            await _fails_with(s.store_block(bad, "v1/0/0", b"x"), BadRequest)


class MemoryServerContractTests(StorageServerContract, unittest.TestCase):
    def make_server(self):
        return MemoryStorageServer()


class HealthyFaultyServerContractTests(StorageServerContract, unittest.TestCase):
    """A FaultyServer with no fault set must be a transparent IStorageServer."""

    def make_server(self):
        return FaultyServer(MemoryStorageServer(), task.Clock())


class PathSchemeTests(unittest.TestCase):
    def test_block_path(self):
        self.assertEqual(ports.block_path("F2025-ab.1", 7, 3), "F2025-ab.1/7/3")
        self.assertEqual(ports.version_prefix("v1"), "v1/")
        self.assertEqual(ports.segment_prefix("v1", 12), "v1/12/")

    def test_block_path_rejects_bad_parts(self):
        self.assertRaises(BadRequest, ports.block_path, "../v", 0, 0)
        self.assertRaises(BadRequest, ports.block_path, "v", -1, 0)
        self.assertRaises(BadRequest, ports.block_path, "v", 0, 256)

    def test_validate_path_prefix_rules(self):
        self.assertEqual(ports.validate_path("", allow_prefix=True), "")
        self.assertEqual(ports.validate_path("v1/", allow_prefix=True), "v1/")
        self.assertRaises(BadRequest, ports.validate_path, "v1/")
        self.assertRaises(BadRequest, ports.validate_path, "x" * 600)

    def test_every_path_the_customer_side_writes_is_a_store_path(self):
        # The writers' own helpers, so the scheme a supplier enforces cannot drift from what customers store.
        alias = share_scope.new_share_alias()
        version = new_version_id(1_790_000_000.123)
        written = [ports.block_path(version, 0, 0), ports.block_path(version, 2**64 - 1, 255),
                   ports.block_path(share_scope.version_tag(f"{alias}$alice@127.0.0.1_8084") + version, 7, 3),
                   ports.block_path(catalog_backup.backup_version_id(12), 3, 1),
                   f"{catalog_backup.backup_version_id(12)}/{catalog_backup.MANIFEST}",
                   share_scope.index_path(alias), share_scope.readers_path(alias),
                   ports.block_path(share_scope.writer_version_tag(f"{alias}$alice@127.0.0.1_8084",
                                                                   "bob@127.0.0.1_8084") + version, 0, 2),
                   share_scope.entries_path(alias, "bob@127.0.0.1_8084"),
                   share_scope.envelope_path(alias, "bob@127.0.0.1_8084"), share_scope.writers_path(alias)]
        for path in written:
            self.assertEqual(ports.validate_store_path(path), path)

    def test_anything_else_is_not_a_store_path(self):
        for path in ("v", "v/0", "v/0/0/0", "a/b/c/d/e", "v/01/0", "v/0/256", "v/x/0", "catalog-1/other",
                     "catalog-01/manifest", "share_a.index/old", "acl.x/readers",
                     "share_a.index/w0123", "share_a.index/x0123456789abcdef", "acl.share_a/others", "acl.share_a.b/readers",
                     ".v/0/0", "v/0/0/", "", "../v/0/0"):
            self.assertRaises(BadRequest, ports.validate_store_path, path)


class ProgressTests(unittest.TestCase):
    def test_speed_and_eta(self):
        p = ports.make_progress(50, 150, 1, 3, started=10.0, now=12.0, bytes_this_run=50)
        self.assertEqual((p.speed, p.eta, p.elapsed), (25.0, 4.0, 2.0))
        self.assertAlmostEqual(p.fraction, 1 / 3)

    def test_no_speed_before_time_passes(self):
        p = ports.make_progress(50, 150, 1, 3, started=10.0, now=10.0, bytes_this_run=50)
        self.assertEqual((p.speed, p.eta), (None, None))
        self.assertEqual(ports.make_progress(0, 0, 0, 1, 0.0, 0.0, 0).fraction, 1.0)

    def test_segment_meta_missing(self):
        meta = ports.SegmentMeta(0, 10, ("a", "b", "c"), (0, 2))
        self.assertEqual(meta.missing, (1,))
