"""Tests for bitnode.supplier.shared_reads: which reads of a customer's space another user is served."""

from __future__ import annotations

import os
from collections import Counter
from types import SimpleNamespace

from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.storage import share_scope, wire
from bitnode.supplier import shared_reads
from bitnode.supplier.desk import SupplierDesk
from bitnode.supplier.disk_store import DiskStore
from bitnode.transport.commands import Command

ALICE, BOB, CAROL = "alice@127.0.0.1_8084", "bob@127.0.0.1_8084", "carol@127.0.0.1_8084"
ALIAS = "share_0123456789abcdef0123456789abcdef"
BLOCK = f"{ALIAS}.F20250101T000000000-ab12cd34/0/1"


def packet(command: str, payload: bytes, owner: str = ALICE, creator: str = BOB) -> SimpleNamespace:
    return SimpleNamespace(command=command, owner_id=owner, creator_id=creator, payload=payload)


class SharedReadTests(unittest.TestCase):
    def setUp(self):
        root = self.mktemp()
        os.makedirs(root)
        self.desk = SupplierDesk(DiskStore(os.path.join(root, "customers")), os.path.join(root, "contracts.json"),
                                 lambda: 10**6, Clock())
        self.desk.accept(ALICE, 10**5)
        self.refused, self.served = Counter(), Counter()
        for path, data in ((BLOCK, b"shared block"), ("F1-aa/0/0", b"alice's own"),
                           (share_scope.readers_path(ALIAS), share_scope.encode_readers(ALICE, ALIAS, [BOB], 1.0))):
            self.successResultOf(self.desk.store.store_block(ALICE, path, data))

    def serve(self, p):
        return self.successResultOf(shared_reads.serve(self.desk, p, self.refused, self.served))

    def test_a_listed_reader_gets_blocks_and_listings_of_the_share(self):
        command, payload = self.serve(packet(Command.RETRIEVE.value, wire.encode_path(BLOCK)))
        self.assertEqual((command, wire.decode_data(payload)), (Command.DATA.value, (BLOCK, b"shared block")))
        command, payload = self.serve(packet(Command.LIST_FILES.value, wire.encode_path(BLOCK.split("/")[0] + "/")))
        self.assertEqual((command, list(wire.decode_files(payload))), (Command.FILES.value, [BLOCK]))
        self.assertEqual(self.served, Counter({"shared_Retrieve": 1, "shared_ListFiles": 1}))

    def test_a_readers_reads_do_not_keep_the_owners_contract_alive(self):
        contract = self.desk.customers[ALICE]
        contract.silent_for = 40 * 86400.0
        self.serve(packet(Command.RETRIEVE.value, wire.encode_path(BLOCK)))
        self.assertEqual(contract.silent_for, 40 * 86400.0)
        self.successResultOf(self.desk.handle(ALICE, Command.RETRIEVE.value, wire.encode_path(BLOCK)))
        self.assertEqual(contract.silent_for, 0.0)  # her own read does

    def test_others_and_other_paths_are_refused(self):
        cases = [packet(Command.RETRIEVE.value, wire.encode_path(BLOCK), creator=CAROL),  # not listed
                 packet(Command.RETRIEVE.value, wire.encode_path("F1-aa/0/0")),  # alice's own files
                 packet(Command.RETRIEVE.value, wire.encode_path(share_scope.readers_path(ALIAS))),  # the list
                 packet(Command.LIST_FILES.value, wire.encode_path("")),  # everything
                 packet(Command.RETRIEVE.value, wire.encode_path(BLOCK), owner=CAROL),  # not a customer here
                 packet(Command.RETRIEVE.value, wire.encode_path("share_ffff.F1/0/0"))]  # a share without a list
        for case in cases:
            command, payload = self.serve(case)
            self.assertEqual(command, Command.FAIL.value, case)
            self.assertTrue(payload.startswith(b"forbidden: not shared with you"), payload)
        self.assertEqual(self.refused["share_denied"], len(cases))
        self.assertEqual(self.served, Counter())

    def test_revoking_takes_effect_at_the_next_read(self):
        self.successResultOf(self.desk.store.store_block(ALICE, share_scope.readers_path(ALIAS),
                                                         share_scope.encode_readers(ALICE, ALIAS, [], 2.0)))
        self.assertEqual(self.serve(packet(Command.RETRIEVE.value, wire.encode_path(BLOCK)))[0], Command.FAIL.value)

    def test_only_reads_can_be_shared(self):
        self.assertTrue(shared_reads.is_shared_read(packet(Command.RETRIEVE.value, b"")))
        for command in (Command.DATA, Command.DELETE_FILE, Command.DELETE_BACKUP, Command.REQUEST_SERVICE):
            self.assertFalse(shared_reads.is_shared_read(packet(command.value, b"")))
