"""Tests for bitnode.supplier.desk: contracts, quotas, and the answer to each storage command."""

from __future__ import annotations

import hashlib
import json
import os

from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.storage import wire
from bitnode.supplier.desk import SupplierDesk
from bitnode.supplier.disk_store import DiskStore, StoreLimits
from bitnode.transport.commands import Command

ALICE = "alice@127.0.0.1_8084"
BOB = "bob@127.0.0.1_8084"


def request(n: int) -> bytes:
    return wire.encode_json({"version": 1, "needed_bytes": n})


class DeskTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.donated = 1000
        self.running = True
        self.cap = 0
        self.desk = self.make_desk()

    def make_desk(self) -> SupplierDesk:
        # No minimum charges here: these tests count bytes; the charges have their own tests.
        store = DiskStore(os.path.join(self.dir, "customers"), limits=lambda: StoreLimits(0, 0))
        return SupplierDesk(store, os.path.join(self.dir, "contracts.json"), lambda: self.donated, Clock(),
                            accepting=lambda: self.running, new_customer_quota=lambda: self.cap)

    def call(self, who: str, command: str, payload: bytes = b"", desk: SupplierDesk | None = None):
        return self.successResultOf((desk or self.desk).handle(who, command, payload))

    def test_request_service_within_donated_space(self) -> None:
        command, payload = self.call(ALICE, Command.REQUEST_SERVICE, request(600))
        self.assertEqual((command, wire.decode_json(payload)),
                         (Command.ACK, {"accepted": True, "quota_bytes": 600, "asked_bytes": 600,
                                       "customers": 1}))
        command, payload = self.call(BOB, Command.REQUEST_SERVICE, request(500))
        self.assertEqual(command, Command.FAIL)
        self.assertIn(b"no space", payload)
        self.assertEqual(self.call(ALICE, Command.REQUEST_SERVICE, request(900))[0], Command.ACK)  # own quota grows
        self.assertEqual(self.desk.allocated_bytes(), 900)

    def test_refusals_have_reasons(self) -> None:
        self.assertEqual(self.call(ALICE, Command.REQUEST_SERVICE, request(0)), (Command.FAIL, b"needed_bytes must be a positive integer"))
        self.assertEqual(self.call(ALICE, Command.REQUEST_SERVICE, b"garbage")[0], Command.FAIL)
        self.running = False
        self.assertEqual(self.call(ALICE, Command.REQUEST_SERVICE, request(10)),
                         (Command.FAIL, b"supplier service is not running"))
        self.assertEqual(self.call(ALICE, Command.DATA, wire.encode_data("v/0/0", b"x"))[0], Command.FAIL)
        self.assertEqual(self.call(ALICE, Command.MESSAGE, b"hi")[0], Command.FAIL)

    def test_store_retrieve_list_delete(self) -> None:
        self.call(ALICE, Command.REQUEST_SERVICE, request(100))
        self.assertEqual(self.call(ALICE, Command.DATA, wire.encode_data("V1/0/2", b"block"))[0], Command.ACK)
        command, payload = self.call(ALICE, Command.RETRIEVE, wire.encode_path("V1/0/2"))
        self.assertEqual((command, wire.decode_data(payload)), (Command.DATA, ("V1/0/2", b"block")))
        command, payload = self.call(ALICE, Command.LIST_FILES, wire.encode_path(""))
        self.assertEqual(list(wire.decode_files(payload)), ["V1/0/2"])
        self.assertEqual(self.call(ALICE, Command.RETRIEVE, wire.encode_path("V1/0/9")), (Command.FAIL, b"not found"))
        command, payload = self.call(ALICE, Command.DELETE_BACKUP, wire.encode_path("V1"))
        self.assertEqual(wire.decode_json(payload), {"deleted": 1})

    def test_a_layout_2_block_is_indexed_with_the_streamed_hash(self) -> None:
        self.call(ALICE, Command.REQUEST_SERVICE, request(500))
        block = b"BNBK\x03" + bytes(range(100))
        payload = wire.encode_data("V1/0/2", block)
        asked = []

        def prefix_sha256(length: int) -> str:
            asked.append(length)
            return hashlib.sha256(payload[:length]).hexdigest()

        answer = self.successResultOf(self.desk.handle(ALICE, Command.DATA, payload, prefix_sha256=prefix_sha256))
        self.assertEqual(answer[0], Command.ACK)
        self.assertEqual(asked, [len(block)])
        command, listing = self.call(ALICE, Command.LIST_FILES, wire.encode_path(""))
        self.assertEqual(wire.decode_files(listing), {"V1/0/2": (len(block), hashlib.sha256(block).hexdigest())})
        command, answer = self.call(ALICE, Command.RETRIEVE, wire.encode_path("V1/0/2"))
        self.assertEqual(answer, payload)  # answered in layout 2 too

    def test_quota_and_bad_paths_fail_without_writing(self) -> None:
        self.call(ALICE, Command.REQUEST_SERVICE, request(4))
        command, payload = self.call(ALICE, Command.DATA, wire.encode_data("V1/0/0", b"12345"))
        self.assertEqual(command, Command.FAIL)
        self.assertIn(b"quota", payload)
        self.assertEqual(self.call(ALICE, Command.DATA, wire.encode_data("../../x", b"1"))[0], Command.FAIL)
        self.assertEqual(self.call(ALICE, Command.DATA, b"\x01\xff")[0], Command.FAIL)
        self.assertEqual(wire.decode_files(self.call(ALICE, Command.LIST_FILES, b"")[1]), {})

    def test_customers_cannot_reach_each_other(self) -> None:
        self.call(ALICE, Command.REQUEST_SERVICE, request(100))
        self.call(BOB, Command.REQUEST_SERVICE, request(100))
        self.call(ALICE, Command.DATA, wire.encode_data("V1/0/0", b"alice's"))
        self.assertEqual(self.call(BOB, Command.RETRIEVE, wire.encode_path("V1/0/0")), (Command.FAIL, b"not found"))
        self.assertEqual(wire.decode_json(self.call(BOB, Command.DELETE_FILE, wire.encode_path("V1/0/0"))[1]),
                         {"deleted": 0})
        self.assertEqual(self.call(ALICE, Command.RETRIEVE, wire.encode_path("V1/0/0"))[0], Command.DATA)

    def test_contracts_persist_and_cancel_deletes_data(self) -> None:
        self.call(ALICE, Command.REQUEST_SERVICE, request(100))
        self.call(ALICE, Command.DATA, wire.encode_data("V1/0/0", b"x" * 10))
        again = self.make_desk()
        self.assertEqual(again.customers[ALICE].quota_bytes, 100)
        self.assertEqual(again.store.quota(ALICE), 100)
        command, payload = self.call(ALICE, Command.CANCEL_SERVICE, b"", desk=again)
        self.assertEqual(wire.decode_json(payload), {"cancelled": True, "freed_bytes": 10})
        self.assertEqual(again.store.customers(), [])
        with open(os.path.join(self.dir, "contracts.json")) as handle:
            self.assertEqual(json.load(handle)["customers"], {})

    def test_rejected_customer_stays_out(self) -> None:
        self.call(ALICE, Command.REQUEST_SERVICE, request(100))
        self.successResultOf(self.desk.cancel(ALICE, reject=True))
        command, payload = self.call(ALICE, Command.REQUEST_SERVICE, request(100), desk=self.make_desk())
        self.assertEqual(command, Command.FAIL)
        self.assertIn(b"rejected", payload)

    def test_broken_contracts_file_is_moved_aside(self) -> None:
        with open(os.path.join(self.dir, "contracts.json"), "w") as handle:
            handle.write("{broken")
        desk = self.make_desk()
        self.assertEqual(desk.customers, {})
        self.assertTrue(os.path.exists(os.path.join(self.dir, "contracts.json.broken")))
        self.flushLoggedErrors()
