"""Tests for bitnode.supplier.shared_access: which reads and writes of a customer's space another user is served."""

from __future__ import annotations

import os
from collections import Counter
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.storage import share_scope, wire
from bitnode.supplier import shared_access
from bitnode.supplier.desk import SupplierDesk
from bitnode.supplier.disk_store import DiskStore
from bitnode.transport.commands import Command

ALICE, BOB, CAROL = "alice@127.0.0.1_8084", "bob@127.0.0.1_8084", "carol@127.0.0.1_8084"
ALIAS = "share_0123456789abcdef0123456789abcdef"
BLOCK = f"{ALIAS}.F20250101T000000000-ab12cd34/0/1"


def packet(command: str, payload: bytes, owner: str = ALICE, creator: str = BOB) -> SimpleNamespace:
    return SimpleNamespace(command=command, owner_id=owner, creator_id=creator, payload=payload)


def alices_desk(case: unittest.TestCase, quota: int, blocks: tuple[tuple[str, bytes], ...]) -> SupplierDesk:
    """A supplier desk in a temp dir that serves Alice ``quota`` bytes and holds her ``blocks`` (path, data)."""
    root = case.mktemp()
    os.makedirs(root)
    desk = SupplierDesk(DiskStore(os.path.join(root, "customers")), os.path.join(root, "contracts.json"),
                        lambda: 10**6, Clock())
    case.successResultOf(desk.accept(ALICE, quota))
    for path, data in blocks:
        case.successResultOf(desk.store.store_block(ALICE, path, data))
    return desk


class SharedReadTests(unittest.TestCase):
    def setUp(self):
        self.desk = alices_desk(self, 10**5, (
            (BLOCK, b"shared block"), ("F1-aa/0/0", b"alice's own"),
            (share_scope.readers_path(ALIAS), share_scope.encode_readers(ALICE, ALIAS, [BOB], 1.0))))
        self.refused, self.served = Counter(), Counter()

    def serve(self, p):
        return self.successResultOf(shared_access.serve(self.desk, p, self.refused, self.served))

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

    def test_only_reads_and_writes_can_be_shared(self):
        for command in (Command.RETRIEVE, Command.LIST_FILES, Command.DATA, Command.DELETE_FILE, Command.DELETE_BACKUP):
            self.assertTrue(shared_access.is_shared(packet(command.value, b"")))
        for command in (Command.REQUEST_SERVICE, Command.CANCEL_SERVICE, Command.CONTACTS, Command.MESSAGE):
            self.assertFalse(shared_access.is_shared(packet(command.value, b"")))


class SharedWriteTests(unittest.TestCase):
    """Bob may write into Alice's share (his own part of it); Carol may only read it."""

    def setUp(self):
        self.desk = alices_desk(self, 64 * 1024, (
            (BLOCK, b"alice's shared block"),
            (share_scope.readers_path(ALIAS), share_scope.encode_readers(ALICE, ALIAS, [BOB, CAROL], 1.0)),
            (share_scope.writers_path(ALIAS), share_scope.encode_writers(ALICE, ALIAS, [BOB], 1.0))))
        self.refused, self.served = Counter(), Counter()
        self.own = f"{share_scope.writer_prefix(ALIAS, BOB)}F20250101T000000000-ab12cd34"

    def serve(self, command, payload, creator=BOB):
        return self.successResultOf(shared_access.serve(self.desk, packet(command.value, payload, creator=creator),
                                                        self.refused, self.served))

    def test_a_writer_stores_lists_and_deletes_its_own_blocks_and_entries_in_the_owners_space(self):
        block, entries = f"{self.own}/0/1", share_scope.entries_path(ALIAS, BOB)
        for path in (block, entries):
            command, _ = self.serve(Command.DATA, wire.encode_data(path, b"bob's bytes"))
            self.assertEqual(command, Command.ACK.value, path)
            self.assertEqual(self.successResultOf(self.desk.store.fetch_block(ALICE, path)), b"bob's bytes")
        command, payload = self.serve(Command.RETRIEVE, wire.encode_path(block), creator=CAROL)  # readers read it
        self.assertEqual(wire.decode_data(payload), (block, b"bob's bytes"))
        command, payload = self.serve(Command.DELETE_BACKUP, wire.encode_path(self.own))
        self.assertEqual((command, wire.decode_json(payload)), (Command.ACK.value, {"deleted": 1}))
        command, _ = self.serve(Command.DELETE_FILE, wire.encode_path(entries))
        self.assertEqual(command, Command.ACK.value)
        self.assertEqual(sorted(self.successResultOf(self.desk.store.list_blocks(ALICE, ""))),
                         sorted([BLOCK, share_scope.readers_path(ALIAS), share_scope.writers_path(ALIAS)]))
        self.assertEqual(self.served, Counter({"shared_Data": 2, "shared_Retrieve": 1, "shared_DeleteBackup": 1,
                                               "shared_DeleteFile": 1}))

    def test_what_a_writer_stores_counts_against_the_owners_quota_and_keeps_no_contract_alive(self):
        contract = self.desk.customers[ALICE]
        contract.silent_for = 40 * 86400.0
        command, payload = self.serve(Command.DATA, wire.encode_data(f"{self.own}/0/0", b"x" * (70 * 1024)))
        self.assertEqual(command, Command.FAIL.value)
        self.assertIn(b"quota", payload)
        self.assertEqual(self.serve(Command.DATA, wire.encode_data(f"{self.own}/0/0", b"x" * 1024))[0],
                         Command.ACK.value)
        self.assertEqual(contract.silent_for, 40 * 86400.0)
        usage = self.successResultOf(self.desk.store.usage(ALICE))
        self.assertGreaterEqual(usage["charged_bytes"], 1024)

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(command=st.sampled_from([Command.DATA, Command.DELETE_FILE, Command.DELETE_BACKUP, Command.RETRIEVE,
                                    Command.LIST_FILES]),
           payload=st.one_of(st.binary(max_size=300),
                             st.builds(lambda path, data: b"\x01" + len(path.encode()).to_bytes(2, "big")
                                       + path.encode() + data,
                                       st.sampled_from([f"{ALIAS}.", f"{ALIAS}.w", f"{ALIAS}.index/", "acl.", ""]).flatmap(
                                           lambda head: st.text(alphabet="abcdefw0123456789./-_", max_size=60).map(
                                               lambda rest: head + rest)),
                                       st.binary(max_size=20))))
    def test_random_packets_of_a_member_get_an_answer_and_never_reach_what_is_not_theirs(self, command, payload):
        before = self.successResultOf(self.desk.store.list_blocks(ALICE, ""))
        answer, _ = self.serve(command, payload, creator=CAROL)  # a reader: writes never pass
        if command.value in shared_access.WRITE_COMMANDS:
            self.assertEqual(answer, Command.FAIL.value)
            self.assertEqual(self.successResultOf(self.desk.store.list_blocks(ALICE, "")), before)
        answer, _ = self.serve(command, payload)
        after = self.successResultOf(self.desk.store.list_blocks(ALICE, ""))
        changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
        self.assertTrue(all(share_scope.writable_by(p, ALIAS, BOB) for p in changed), changed)

    def test_a_writer_cannot_touch_what_is_not_its_own_and_a_reader_cannot_write(self):
        carols = f"{share_scope.writer_prefix(ALIAS, CAROL)}F1-aa"
        cases = [(Command.DATA, wire.encode_data(f"{self.own}/0/0", b"x"), CAROL),  # a reader, not a writer
                 (Command.DATA, wire.encode_data(BLOCK, b"overwritten"), BOB),  # alice's own block
                 (Command.DATA, wire.encode_data(share_scope.index_path(ALIAS), b"forged index"), BOB),
                 (Command.DATA, wire.encode_data(share_scope.readers_path(ALIAS), b"{}"), BOB),
                 (Command.DATA, wire.encode_data(share_scope.writers_path(ALIAS), b"{}"), BOB),
                 (Command.DATA, wire.encode_data(share_scope.entries_path(ALIAS, CAROL), b"x"), BOB),
                 (Command.DATA, wire.encode_data(f"{carols}/0/0", b"x"), BOB),
                 (Command.DATA, wire.encode_data("F1-aa/0/0", b"x"), BOB),  # alice's private files
                 (Command.DATA, b"\x00garbage", BOB),
                 (Command.DELETE_FILE, wire.encode_path(f"{BLOCK.split('/')[0]}/"), BOB),
                 (Command.DELETE_FILE, wire.encode_path(""), BOB),
                 (Command.DELETE_BACKUP, wire.encode_path(BLOCK.split("/")[0]), BOB),
                 (Command.DELETE_FILE, wire.encode_path(share_scope.writers_path(ALIAS)), BOB)]
        for command, payload, creator in cases:
            answer, reason = self.serve(command, payload, creator)
            self.assertEqual(answer, Command.FAIL.value, (command, creator))
            self.assertTrue(reason.startswith(b"forbidden: not writable by you"), reason)
        # writes outside every shared folder count as acting for someone else, the rest as refused share writes
        self.assertEqual((self.refused["share_write_denied"], self.refused["foreign_owner"]), (7, len(cases) - 7))
        self.assertEqual(self.successResultOf(self.desk.store.fetch_block(ALICE, BLOCK)), b"alice's shared block")

    def test_a_writer_taken_off_the_list_is_refused_at_once(self):
        self.successResultOf(self.desk.store.store_block(ALICE, share_scope.writers_path(ALIAS),
                                                         share_scope.encode_writers(ALICE, ALIAS, [], 2.0)))
        answer, _ = self.serve(Command.DATA, wire.encode_data(f"{self.own}/0/0", b"x"))
        self.assertEqual(answer, Command.FAIL.value)
        answer, _ = self.serve(Command.RETRIEVE, wire.encode_path(BLOCK))  # still a reader: reads go on
        self.assertEqual(answer, Command.DATA.value)
