"""The command set carried by packets.

A packet's ``command`` travels on the wire as its plain ASCII name (the enum
value).  The set is closed: a receiver drops, and counts, a packet whose
command is not listed here.
"""

from __future__ import annotations

import enum


class Command(str, enum.Enum):
    """Every packet command a node understands; the value is the wire name."""

    IDENTITY = "Identity"
    ACK = "Ack"
    FAIL = "Fail"
    DATA = "Data"
    RETRIEVE = "Retrieve"
    LIST_FILES = "ListFiles"
    FILES = "Files"
    DELETE_FILE = "DeleteFile"
    DELETE_BACKUP = "DeleteBackup"
    MESSAGE = "Message"
    REQUEST_SERVICE = "RequestService"
    CANCEL_SERVICE = "CancelService"
    KEY = "Key"
    AUDIT_KEY = "AuditKey"
    EVENT = "Event"
    CONTACTS = "Contacts"
    CORRESPONDENT = "Correspondent"

    def __str__(self) -> str:
        return self.value


#: Wire names of every known command (immutable).
COMMAND_NAMES: frozenset[str] = frozenset(c.value for c in Command)


def is_known(name: str | Command) -> bool:
    """Whether ``name`` (a wire name or a :class:`Command`) is a known command.

    The comparison is exact: ``"ack"`` is not ``"Ack"``.
    """
    if isinstance(name, Command):
        return True
    return isinstance(name, str) and name in COMMAND_NAMES


def command_name(command: str | Command) -> str:
    """The wire name of ``command`` (a :class:`Command` or a str, returned as is)."""
    if isinstance(command, Command):
        return command.value
    return command
