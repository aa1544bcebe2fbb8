"""Tests for bitnode.customer.remote_store: the IStorageServer contract over the supplier desk,
and a whole k-of-n upload/download through desks on disk."""

from __future__ import annotations

import hashlib
import os

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.customer.remote_store import RemoteStorageServer, error_from_fail
from bitnode.errors import BadRequest, InsufficientStorage, Unavailable
from bitnode.storage import wire
from bitnode.storage.blockformat import BlockCorrupt
from bitnode.storage.downloader import Downloader
from bitnode.storage.ports import BlockNotFound, CheckedBlock
from bitnode.storage.uploader import Uploader
from bitnode.supplier.desk import SupplierDesk
from bitnode.supplier.disk_store import DiskStore
from bitnode.transport.commands import Command
from tests.storage.test_ports import StorageServerContract


def make_supplier(testcase: unittest.TestCase, donated: int = 10**9) -> SupplierDesk:
    root = testcase.mktemp()
    os.makedirs(root)
    return SupplierDesk(DiskStore(os.path.join(root, "customers")), os.path.join(root, "contracts.json"),
                        lambda: donated, Clock())


def direct(desks: dict[str, SupplierDesk]):
    """A request function that hands commands straight to the named supplier's desk."""

    def request(supplier_id: str, owner_id: str, command: str, payload: bytes, payload_sha256: bytes | None = None):
        desk = desks.get(supplier_id)
        if desk is None:
            return defer.fail(Unavailable(f"{supplier_id} is offline"))
        return desk.handle(owner_id, command, payload)

    return request


class RemoteStoreContractTests(StorageServerContract, unittest.TestCase):
    def make_server(self):
        desk = make_supplier(self)
        server = RemoteStorageServer(direct({"s1": desk}), "s1")
        for customer in ("alice@example.net", "bob@example.net", self.customer):
            self.successResultOf(server.request_service(customer, 10**6))
        return server


class FailMappingTests(unittest.TestCase):
    def test_fail_reasons_become_typed_errors(self) -> None:
        self.assertIsInstance(error_from_fail("not found"), BlockNotFound)
        self.assertIsInstance(error_from_fail("quota of 4 bytes would be exceeded"), InsufficientStorage)
        self.assertIsInstance(error_from_fail("invalid block path: '..'"), BadRequest)
        self.assertIsInstance(error_from_fail("internal error"), Unavailable)

    def test_refused_contract_and_unexpected_answers(self) -> None:
        server = RemoteStorageServer(direct({"s1": make_supplier(self, donated=10)}), "s1")
        self.failureResultOf(server.request_service("alice@x", 100), InsufficientStorage)
        self.failureResultOf(server.store_block("alice@x", "V/0/0", b"x"), BadRequest)  # not a customer
        odd = RemoteStorageServer(lambda *a: defer.succeed((Command.FILES, b"{}")), "s2")
        self.failureResultOf(odd.fetch_block("alice@x", "V/0/0"), Unavailable)
        liar = RemoteStorageServer(lambda *a: defer.succeed((Command.DATA, b"\x01\x00\x01Xabc")), "s3")
        self.failureResultOf(liar.fetch_block("alice@x", "V/0/0"), Unavailable)


class EndToEndTests(unittest.TestCase):
    def test_upload_three_of_five_and_restore_with_two_suppliers_gone(self) -> None:
        customer = "alice@127.0.0.1_8084"
        desks = {f"s{i}": make_supplier(self) for i in range(5)}
        servers = [RemoteStorageServer(direct(desks), name) for name in desks]
        for server in servers:
            self.successResultOf(server.request_service(customer, 10**7))
        source = os.path.join(self.mktemp())
        data = hashlib.sha256(b"seed").digest() * 10000
        with open(source, "wb") as handle:
            handle.write(data)
        clock = Clock()
        key = os.urandom(32)
        uploader = Uploader(defer.maybeDeferred, clock, servers, 3, 5, segment_size=64 * 1024)
        result = self.successResultOf(uploader.upload(source, "V1", key, customer))
        self.assertEqual(result.degraded, ())
        del desks["s0"], desks["s3"]  # two suppliers vanish
        target = self.mktemp()
        downloader = Downloader(defer.maybeDeferred, clock, servers, 3, 5)
        self.successResultOf(downloader.download(result.segments, "V1", key, customer, target))
        with open(target, "rb") as handle:
            self.assertEqual(handle.read(), data)


class PreparedPayloadTests(unittest.TestCase):
    """A block the uploader built inside its Data payload goes out as that very object, with its digest."""

    def setUp(self) -> None:
        self.sent: list[tuple] = []
        desk = make_supplier(self)
        serve = direct({"s1": desk})

        def request(supplier_id, owner_id, command, payload, **kw):
            self.sent.append((command, payload, kw))
            return serve(supplier_id, owner_id, command, payload)

        self.server = RemoteStorageServer(request, "s1")
        self.successResultOf(self.server.request_service("alice@x", 10**7))
        self.sent.clear()
        block = b"BNBK\x03" + os.urandom(100)
        built = block + wire.data_trailer("V/0/1")
        self.sealed = wire.DataPayload("V/0/1", built, len(block), hashlib.sha256(built).digest())

    def test_the_prepared_payload_is_sent_with_its_digest(self) -> None:
        self.successResultOf(self.server.store_block("alice@x", "V/0/1", self.sealed.block, data_payload=self.sealed))
        [(command, payload, kw)] = self.sent
        self.assertEqual(command, Command.DATA)
        self.assertIs(payload, self.sealed.payload)
        self.assertEqual(kw, {"payload_sha256": self.sealed.sha256})
        self.assertEqual(self.successResultOf(self.server.fetch_block("alice@x", "V/0/1")), bytes(self.sealed.block))

    def test_a_payload_for_another_path_is_not_used(self) -> None:
        self.successResultOf(self.server.store_block("alice@x", "V/0/2", self.sealed.block, data_payload=self.sealed))
        [(_command, payload, kw)] = self.sent
        self.assertEqual((payload, kw), (wire.encode_data("V/0/2", self.sealed.block), {}))


class CheckedFetchTests(unittest.TestCase):
    """A fetched block is checked against the catalog's hash from the hash kept as the answer streamed in."""

    def setUp(self) -> None:
        self.block = b"BNBK\x03" + os.urandom(200)
        self.payload = wire.encode_data("V/0/1", self.block)

    def server(self, payload: bytes, streamed: bool = True) -> RemoteStorageServer:
        def prefix_sha256(length: int) -> str:
            return hashlib.sha256(payload[:length]).hexdigest()

        answer = (Command.DATA, payload, prefix_sha256) if streamed else (Command.DATA, payload)
        return RemoteStorageServer(lambda *a, **kw: defer.succeed(answer), "s1")

    def test_a_matching_block_comes_checked_and_uncopied(self) -> None:
        expected = hashlib.sha256(self.block).hexdigest()
        checked = self.successResultOf(self.server(self.payload).fetch_block("alice@x", "V/0/1", expected))
        self.assertIsInstance(checked, CheckedBlock)
        self.assertEqual((bytes(checked.block), checked.sha256), (self.block, expected))
        self.assertIs(checked.block.obj, self.payload)

    def test_a_block_that_differs_from_the_catalog_is_corrupt(self) -> None:
        self.failureResultOf(self.server(self.payload).fetch_block("alice@x", "V/0/1", "00" * 32), BlockCorrupt)

    def test_without_a_kept_hash_or_an_expected_one_the_bytes_come_for_the_caller_to_check(self) -> None:
        expected = hashlib.sha256(self.block).hexdigest()
        for server, want in ((self.server(self.payload, streamed=False), expected),
                             (self.server(self.payload), None),
                             (self.server(wire.encode_data("V/0/1", b"layout 1 block")), expected)):
            got = self.successResultOf(server.fetch_block("alice@x", "V/0/1", want))
            self.assertIsInstance(got, bytes)


class PagedListingTests(unittest.TestCase):
    """A listing longer than one Files page arrives whole, one page after another."""

    def setUp(self) -> None:
        self.desk = make_supplier(self)
        self.desk.list_page = 7
        self.asked: list[bytes] = []
        serve = direct({"s1": self.desk})

        def request(supplier_id, owner_id, command, payload):
            if command == Command.LIST_FILES:
                self.asked.append(payload)
            return serve(supplier_id, owner_id, command, payload)

        self.server = RemoteStorageServer(request, "s1")
        self.successResultOf(self.server.request_service("alice@x", 10**7))
        for i in range(20):
            self.successResultOf(self.server.store_block("alice@x", f"V/{i}/0", b"%d" % i))
        self.successResultOf(self.server.store_block("alice@x", "W/0/0", b"other"))

    def test_every_page_is_asked_for_and_merged(self) -> None:
        listing = self.successResultOf(self.server.list_blocks("alice@x", "V/"))
        self.assertEqual(sorted(listing), sorted(f"V/{i}/0" for i in range(20)))
        self.assertEqual(listing["V/3/0"], (1, hashlib.sha256(b"3").hexdigest()))
        # sorted by path: V/0/0, V/1/0, V/10/0 ... V/14/0 | V/15/0 ... V/3/0 | V/4/0 ... V/9/0
        self.assertEqual(self.asked, [b"V/", b"V/\nV/14/0", b"V/\nV/3/0"])
        self.assertEqual(len(self.successResultOf(self.server.list_blocks("alice@x", ""))), 21)

    def test_a_page_that_does_not_advance_is_an_error(self) -> None:
        stuck = RemoteStorageServer(lambda *a: defer.succeed(
            (Command.FILES, wire.encode_files({"V/0/0": (1, "ab")}, next_after="V/0/0"))), "s2")
        failure = self.failureResultOf(stuck.list_blocks("alice@x", ""), Unavailable)
        self.assertIn("does not advance", str(failure.value))
