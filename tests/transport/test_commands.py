"""Tests for bitnode.transport.commands."""

from __future__ import annotations

from twisted.trial import unittest

from bitnode.transport.commands import COMMAND_NAMES, Command, command_name, is_known

SPEC_COMMANDS = (
    "Identity Ack Fail Data Retrieve ListFiles Files DeleteFile DeleteBackup Message "
    "RequestService CancelService Key AuditKey Event Contacts Correspondent"
).split()


class CommandTests(unittest.TestCase):
    def test_command_set_matches_design(self) -> None:
        self.assertEqual(COMMAND_NAMES, frozenset(SPEC_COMMANDS))
        self.assertEqual(len(Command), 17)

    def test_known_names(self) -> None:
        for name in SPEC_COMMANDS:
            self.assertTrue(is_known(name), name)
        self.assertTrue(is_known(Command.DATA))

    def test_unknown_names(self) -> None:
        for name in ("", "ack", "DATA", "Data ", "Shutdown", None, 3):
            self.assertFalse(is_known(name), repr(name))

    def test_command_name_and_str_give_wire_name(self) -> None:
        self.assertEqual(command_name(Command.LIST_FILES), "ListFiles")
        self.assertEqual(command_name("Ack"), "Ack")
        self.assertEqual(str(Command.REQUEST_SERVICE), "RequestService")
        self.assertEqual(Command("AuditKey"), Command.AUDIT_KEY)
