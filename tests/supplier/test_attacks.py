"""Peer-side attacks on a supplier (issue 14, items 4 and 8), each reproduced against the real classes.

Every test plays the attacker as a customer would (commands through
:class:`SupplierDesk`, or signed packets over real gateways for the rate
limits), asserts the limit holds, and that a legitimate customer still gets
through. Before the fixes: deep unique paths and empty blocks were stored
without being counted, a customer asking for 1 byte could fill the disk with
directories, one RequestService could reserve the whole donation, every
ListFiles read and hashed every stored file, there was no per-peer rate
limit, and customers.json was written on the reactor.
"""

from __future__ import annotations

import hashlib
import os

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.customer.remote_store import RemoteStorageServer
from bitnode.errors import InsufficientStorage, Unavailable
from bitnode.storage import wire
from bitnode.supplier import disk_store
from bitnode.supplier.desk import SupplierDesk
from bitnode.supplier.disk_store import DiskStore, StoreLimits
from bitnode.transport.commands import Command
from tests.supplier.test_supplier_service import SupplierNetTestCase, gid, ok, over_gateway

ALICE = "alice@127.0.0.1_8084"
MALLORY = "mallory@127.0.0.1_8084"
MIB = 1024 * 1024
VERSION = "F20260101T120000000-ab12cd34"


def request(n: int) -> bytes:
    return wire.encode_json({"version": 1, "needed_bytes": n})


def count_dirs(path: str) -> int:
    return sum(len(dirs) for _folder, dirs, _files in os.walk(path))


class DeskAttackTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.free = 10 * 1024 ** 4
        self.store = DiskStore(os.path.join(self.dir, "customers"), free_bytes=lambda path: self.free)
        self.desk = SupplierDesk(self.store, os.path.join(self.dir, "customers.json"), lambda: 64 * MIB, Clock(),
                                 new_customer_quota=lambda: 8 * MIB)

    def call(self, who: str, command: str, payload: bytes = b"") -> tuple[str, bytes]:
        return self.successResultOf(self.desk.handle(who, command, payload))

    def store_block(self, who: str, path: str, data: bytes = b"") -> tuple[str, bytes]:
        return self.call(who, Command.DATA, wire.encode_data(path, data))

    def assert_legitimate_customer_served(self) -> None:
        """Alice stores what the customer side stores (blocks, a catalog manifest, a share's objects) and reads it."""
        self.assertEqual(self.call(ALICE, Command.REQUEST_SERVICE, request(4 * MIB))[0], Command.ACK)
        alias = "share_0123456789abcdef0123456789abcdef"
        paths = [f"{VERSION}/0/0", f"{VERSION}/17/3", "catalog-12/0/1", "catalog-12/manifest",
                 f"{alias}.{VERSION}/0/2", f"{alias}.index/current", f"acl.{alias}/readers"]
        for path in paths:
            self.assertEqual(self.store_block(ALICE, path, b"block of " + path.encode())[0], Command.ACK, path)
        listing = wire.decode_files(self.call(ALICE, Command.LIST_FILES, b"")[1])
        self.assertEqual(sorted(listing), sorted(paths))
        self.assertEqual(self.call(ALICE, Command.RETRIEVE, wire.encode_path(paths[1]))[0], Command.DATA)

    def test_empty_blocks_at_deep_unique_paths_are_refused(self) -> None:
        self.assertEqual(self.call(MALLORY, Command.REQUEST_SERVICE, request(MIB))[0], Command.ACK)
        for i in range(200):
            command, reason = self.store_block(MALLORY, f"a{i}/b/c/d/e/f/0")
            self.assertEqual(command, Command.FAIL)
            self.assertIn(b"not a path of the storage scheme", reason)
        for odd in ("v/0", "v/0/0/0", "v/01/0", "v/0/256", "x/manifest", "share_a.index/other", "acl.x/readers"):
            self.assertEqual(self.store_block(MALLORY, odd)[0], Command.FAIL, odd)
        self.assertEqual(count_dirs(os.path.join(self.store.root, MALLORY)), 0)
        self.assertGreaterEqual(self.store.refused["bad_path"], 207)
        self.assert_legitimate_customer_served()

    def test_empty_blocks_are_charged_until_the_quota_is_spent(self) -> None:
        self.call(MALLORY, Command.REQUEST_SERVICE, request(MIB))
        accepted = 0
        for i in range(1000):
            command, reason = self.store_block(MALLORY, f"v{i}/0/0")
            if command == Command.FAIL:
                self.assertIn(b"quota", reason)
                break
            accepted += 1
        # each costs a 4 KiB file and two 4 KiB directories: 1 MiB buys 85 of them, not 1000
        self.assertEqual(accepted, MIB // (3 * 4096))
        self.assertLessEqual(count_dirs(os.path.join(self.store.root, MALLORY)), 2 * accepted)
        self.assertLessEqual(self.successResultOf(self.store.used_bytes(MALLORY)), MIB)
        self.assert_legitimate_customer_served()

    def test_a_customer_asking_for_one_byte_cannot_store_anything(self) -> None:
        self.assertEqual(self.call(MALLORY, Command.REQUEST_SERVICE, request(1))[0], Command.ACK)
        for i in range(50):
            command, reason = self.store_block(MALLORY, f"v{i}/0/0")
            self.assertEqual(command, Command.FAIL)
            self.assertIn(b"quota", reason)
        self.assertEqual(self.store.customers(), [])
        self.assert_legitimate_customer_served()

    def test_a_new_customer_cannot_reserve_the_whole_donation(self) -> None:
        command, payload = self.call(MALLORY, Command.REQUEST_SERVICE, request(64 * MIB))
        self.assertEqual(wire.decode_json(payload), {"accepted": True, "quota_bytes": 8 * MIB, "asked_bytes": 64 * MIB,
                                                       "customers": 1})
        # asking again without storing anything does not raise the grant
        command, payload = self.call(MALLORY, Command.REQUEST_SERVICE, request(64 * MIB))
        self.assertEqual(wire.decode_json(payload)["quota_bytes"], 8 * MIB)
        self.assert_legitimate_customer_served()

    def test_space_is_earned_by_use(self) -> None:
        self.call(ALICE, Command.REQUEST_SERVICE, request(64 * MIB))
        self.assertEqual(self.store.quota(ALICE), 8 * MIB)
        for i in range(7):
            self.assertEqual(self.store_block(ALICE, f"{VERSION}/{i}/0", b"x" * MIB)[0], Command.ACK)
        used = self.successResultOf(self.store.used_bytes(ALICE))
        command, payload = self.call(ALICE, Command.REQUEST_SERVICE, request(64 * MIB))
        self.assertEqual(wire.decode_json(payload)["quota_bytes"], 2 * used)

    def test_files_per_customer_are_limited(self) -> None:
        store = DiskStore(self.mktemp(), limits=lambda: StoreLimits(max_files=5))
        store.set_quota(MALLORY, MIB)
        for i in range(5):
            self.successResultOf(store.store_block(MALLORY, f"v/0/{i}", b"x"))
        failure = self.failureResultOf(store.store_block(MALLORY, "v/0/5", b"x"), InsufficientStorage)
        self.assertIn("quota of 5 files", str(failure.value))
        self.successResultOf(store.store_block(MALLORY, "v/0/4", b"replacing is fine"))
        self.successResultOf(store.delete(MALLORY, "v/0/0"))
        self.successResultOf(store.store_block(MALLORY, "v/0/5", b"x"))
        self.assertEqual(store.refused["too_many_files"], 1)

    def test_the_disk_reserve_is_never_given_away(self) -> None:
        self.call(MALLORY, Command.REQUEST_SERVICE, request(8 * MIB))
        self.call(ALICE, Command.REQUEST_SERVICE, request(MIB))
        self.free = 1024 ** 3 + MIB  # the default reserve (1 GiB) and one MiB more
        self.assertEqual(self.store_block(MALLORY, f"{VERSION}/0/0", b"x" * (MIB // 2))[0], Command.ACK)
        self.free -= MIB // 2
        command, reason = self.store_block(MALLORY, f"{VERSION}/1/0", b"x" * (MIB // 2))
        self.assertEqual(command, Command.FAIL)
        self.assertIn(b"no space", reason)
        self.assertEqual(self.store.refused["disk_reserve"], 1)
        self.free += 100 * MIB  # someone freed space: a legitimate store goes through again
        self.assertEqual(self.store_block(ALICE, f"{VERSION}/0/0", b"y" * 1000)[0], Command.ACK)

    def test_list_files_reads_no_stored_block(self) -> None:
        self.call(ALICE, Command.REQUEST_SERVICE, request(4 * MIB))
        for i in range(50):
            self.store_block(ALICE, f"{VERSION}/{i}/0", os.urandom(20_000))
        opened = []
        real_open = open
        disk_store.open = lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k)
        self.addCleanup(delattr, disk_store, "open")
        for _ in range(10):
            command, payload = self.call(ALICE, Command.LIST_FILES, b"")
            self.assertEqual(len(wire.decode_files(payload)), 50)
        self.assertEqual(opened, [])
        listing = wire.decode_files(payload)
        block = self.successResultOf(self.store.fetch_block(ALICE, f"{VERSION}/3/0"))
        self.assertEqual(listing[f"{VERSION}/3/0"], (20_000, hashlib.sha256(block).hexdigest()))

    def test_the_contracts_file_is_written_off_the_reactor_before_the_ack(self) -> None:
        queued: list = []

        def later(fn, *args):
            d = defer.Deferred()
            queued.append((d, fn, args))
            return d

        desk = SupplierDesk(DiskStore(self.mktemp()), os.path.join(self.dir, "other.json"), lambda: 64 * MIB, Clock(),
                            run_in_thread=later)
        answer = desk.handle(ALICE, Command.REQUEST_SERVICE, request(MIB))
        self.assertNoResult(answer)  # not acknowledged before the contract is on disk
        self.assertFalse(os.path.exists(os.path.join(self.dir, "other.json")))
        self.assertEqual([fn.__name__ for _, fn, _ in queued], ["atomic_write"])
        d, fn, args = queued.pop()
        d.callback(fn(*args))
        self.assertEqual(self.successResultOf(answer)[0], Command.ACK)
        self.assertTrue(os.path.exists(os.path.join(self.dir, "other.json")))


class RateLimitAttackTests(SupplierNetTestCase):
    """Over real gateways: one peer's flood is refused "rate limited"; another customer is served meanwhile."""

    @inlineCallbacks
    def setUp(self):
        self.alice, self.mallory = yield self.start_supplier({
            "services/supplier/donated-space": 64 * MIB,
            "services/supplier/list-burst": 3, "services/supplier/list-rate": 0.001,
            "services/supplier/request-burst": 40, "services/supplier/request-rate": 0.001,
        }, ("alice", "mallory"))

    def server(self, node):
        return RemoteStorageServer(over_gateway(node), self.sam)

    @inlineCallbacks
    def test_a_listing_flood_is_rate_limited_and_others_are_served(self):
        alice, mallory = self.server(self.alice), self.server(self.mallory)
        yield alice.request_service(gid(self.alice), MIB)
        yield mallory.request_service(gid(self.mallory), MIB)
        yield mallory.store_block(gid(self.mallory), f"{VERSION}/0/0", b"m")
        for _ in range(3):
            yield mallory.list_blocks(gid(self.mallory), "")
        for _ in range(5):
            failure = yield self.assertFailure(mallory.list_blocks(gid(self.mallory), ""), Unavailable)
            self.assertIn("rate limited", str(failure))
        # mallory's other commands and alice's listings go on
        yield mallory.fetch_block(gid(self.mallory), f"{VERSION}/0/0")
        yield alice.store_block(gid(self.alice), f"{VERSION}/0/0", b"a")
        self.assertEqual(list((yield alice.list_blocks(gid(self.alice), ""))), [f"{VERSION}/0/0"])
        info = yield ok(self, self.supplier, "service_info", service_name="service_supplier")
        self.assertEqual(info["status"]["rate_limited"], {"ListFiles": 5})

    @inlineCallbacks
    def test_a_command_flood_is_rate_limited_and_others_are_served(self):
        alice, mallory = self.server(self.alice), self.server(self.mallory)
        yield alice.request_service(gid(self.alice), MIB)
        yield mallory.request_service(gid(self.mallory), MIB)
        outcomes = yield defer.DeferredList(
            [mallory.fetch_block(gid(self.mallory), f"{VERSION}/0/{i % 256}") for i in range(60)], consumeErrors=True)
        reasons = [str(value.value) for ok_, value in outcomes if not ok_]
        self.assertEqual(len(reasons), 60)
        limited = [r for r in reasons if "rate limited" in r]
        self.assertEqual(len(limited), 60 - 39)  # the RequestService took one token of the 40
        yield alice.store_block(gid(self.alice), f"{VERSION}/0/0", b"a")
        self.assertEqual((yield alice.fetch_block(gid(self.alice), f"{VERSION}/0/0")), b"a")
        self.assertEqual(self.service.refused["rate_limited"], 21)
