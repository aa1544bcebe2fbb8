"""Payloads of ``Correspondent`` packets: private messages queued on a supplier for its offline customer.

A sender whose recipient is offline hands the sealed message (end-to-end
encrypted to the recipient, signed by the sender; the supplier cannot read
it) to the recipient's suppliers; the recipient, when it is online, fetches
its queued messages and removes those it stored (:mod:`bitnode.supplier.mailbox`).

Every payload starts with ``u8 version=1 | u8 op`` (integers big-endian, text UTF-8):

- ``PUT`` (sender -> supplier)::

      u16 length + recipient global id | u8 length + message id | sealed message (to the end)

  answered ``Ack`` with JSON ``{"queued": true, "expires": t, "duplicate": bool}`` or ``Fail <reason>``.
- ``FETCH`` (recipient -> supplier): ``u64 after`` — the queue entries after
  this number, oldest first; answered ``Ack`` with a page::

      u8 version=1 | u8 more (1: more entries follow) | u32 count | count x entry
      entry: u64 seq | u16 length + sender | u8 length + message id | f64 arrived | u32 length + sealed message

- ``REMOVE`` (recipient -> supplier): ``u32 count | count x u64 seq``; answered
  ``Ack`` with JSON ``{"removed": n}``.
- ``NOTIFY`` (supplier -> recipient, nothing more): new messages wait for you
  here; not answered (the recipient fetches them if the sender is one of its
  suppliers).

A malformed payload raises :class:`~bitnode.errors.BadRequest`, whatever the bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bitnode.errors import BadRequest

VERSION = 1
PUT, FETCH, REMOVE, NOTIFY = 1, 2, 3, 4
OPS = (PUT, FETCH, REMOVE, NOTIFY)
#: Entries one REMOVE may name.
MAX_REMOVE = 1000
#: Longest global id / message id accepted.
MAX_ID = 512
MAX_MESSAGE_ID = 128
_HEAD = struct.Struct(">BB")
_U16, _U32, _U64, _F64 = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q"), struct.Struct(">d")
_PAGE_HEAD = struct.Struct(">BBI")


@dataclass(frozen=True)
class QueuedMessage:
    """One entry of a recipient's queue on a supplier."""

    seq: int
    sender: str
    message_id: str
    arrived: float
    sealed: bytes


class _Reader:
    def __init__(self, data: bytes, offset: int = 0):
        self.data, self.offset = data, offset

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if size < 0 or end > len(self.data):
            raise BadRequest("mailbox payload is truncated")
        chunk, self.offset = self.data[self.offset:end], end
        return bytes(chunk)

    def number(self, fmt: struct.Struct) -> int | float:
        return fmt.unpack(self.take(fmt.size))[0]

    def text(self, fmt: struct.Struct, limit: int, what: str) -> str:
        raw = self.take(int(self.number(fmt)))
        if not raw or len(raw) > limit:
            raise BadRequest(f"mailbox payload: bad {what} length")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"mailbox payload: {what} is not UTF-8") from None

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.offset)


def _text(value: str, fmt: struct.Struct, limit: int, what: str) -> bytes:
    raw = value.encode("utf-8")
    if not raw or len(raw) > limit:
        raise BadRequest(f"mailbox: bad {what}: {value!r}")
    return fmt.pack(len(raw)) + raw


def op_of(payload: bytes) -> int:
    """The operation of a ``Correspondent`` payload (BadRequest when it is none of ours)."""
    if len(payload) < _HEAD.size:
        raise BadRequest("mailbox payload too short")
    version, op = _HEAD.unpack_from(payload)
    if version != VERSION:
        raise BadRequest(f"mailbox payload version {version} is not supported")
    if op not in OPS:
        raise BadRequest(f"unknown mailbox operation {op}")
    return op


def encode_notify() -> bytes:
    """A NOTIFY payload."""
    return _HEAD.pack(VERSION, NOTIFY)


def is_notify(payload: bytes) -> bool:
    """Whether a ``Correspondent`` payload is a NOTIFY (for the recipient's route)."""
    return bytes(payload[:_HEAD.size]) == _HEAD.pack(VERSION, NOTIFY) and len(payload) == _HEAD.size


def encode_put(recipient: str, message_id: str, sealed: bytes) -> bytes:
    """A PUT payload: queue ``sealed`` (message ``message_id``) for ``recipient``."""
    if not sealed:
        raise BadRequest("mailbox: nothing to queue")
    return (_HEAD.pack(VERSION, PUT) + _text(recipient, _U16, MAX_ID, "recipient")
            + _text(message_id, struct.Struct(">B"), MAX_MESSAGE_ID, "message id") + bytes(sealed))


def decode_put(payload: bytes) -> tuple[str, str, bytes]:
    """(recipient, message id, sealed message) of a PUT payload."""
    if op_of(payload) != PUT:
        raise BadRequest("not a mailbox PUT")
    reader = _Reader(payload, _HEAD.size)
    recipient = reader.text(_U16, MAX_ID, "recipient")
    message_id = reader.text(struct.Struct(">B"), MAX_MESSAGE_ID, "message id")
    sealed = reader.rest()
    if not sealed:
        raise BadRequest("mailbox PUT holds no message")
    return recipient, message_id, sealed


def encode_fetch(after: int = 0) -> bytes:
    """A FETCH payload: the entries after number ``after``."""
    return _HEAD.pack(VERSION, FETCH) + _U64.pack(int(after))


def decode_fetch(payload: bytes) -> int:
    """The ``after`` of a FETCH payload."""
    if op_of(payload) != FETCH or len(payload) != _HEAD.size + _U64.size:
        raise BadRequest("not a mailbox FETCH")
    return int(_U64.unpack_from(payload, _HEAD.size)[0])


def encode_remove(seqs: list[int]) -> bytes:
    """A REMOVE payload for these entry numbers."""
    if len(seqs) > MAX_REMOVE:
        raise BadRequest(f"mailbox: at most {MAX_REMOVE} entries per REMOVE")
    return _HEAD.pack(VERSION, REMOVE) + _U32.pack(len(seqs)) + b"".join(_U64.pack(int(s)) for s in seqs)


def decode_remove(payload: bytes) -> list[int]:
    """The entry numbers of a REMOVE payload."""
    if op_of(payload) != REMOVE:
        raise BadRequest("not a mailbox REMOVE")
    reader = _Reader(payload, _HEAD.size)
    count = int(reader.number(_U32))
    if count > MAX_REMOVE or len(payload) != _HEAD.size + _U32.size + count * _U64.size:
        raise BadRequest("mailbox REMOVE has a bad count")
    return [int(reader.number(_U64)) for _ in range(count)]


def encode_page(entries: list[QueuedMessage], more: bool) -> bytes:
    """The answer to a FETCH."""
    parts = [_PAGE_HEAD.pack(VERSION, 1 if more else 0, len(entries))]
    for entry in entries:
        parts += [_U64.pack(entry.seq), _text(entry.sender, _U16, MAX_ID, "sender"),
                  _text(entry.message_id, struct.Struct(">B"), MAX_MESSAGE_ID, "message id"),
                  _F64.pack(float(entry.arrived)), _U32.pack(len(entry.sealed)), entry.sealed]
    return b"".join(parts)


def decode_page(payload: bytes) -> tuple[list[QueuedMessage], bool]:
    """(entries, more) of a FETCH answer."""
    reader = _Reader(payload)
    version, more, count = _PAGE_HEAD.unpack(reader.take(_PAGE_HEAD.size))
    if version != VERSION or more not in (0, 1):
        raise BadRequest("mailbox page: bad version or flag")
    entries = []
    for _ in range(count):
        seq = int(reader.number(_U64))
        sender = reader.text(_U16, MAX_ID, "sender")
        message_id = reader.text(struct.Struct(">B"), MAX_MESSAGE_ID, "message id")
        arrived = float(reader.number(_F64))
        sealed = reader.take(int(reader.number(_U32)))
        if not sealed:
            raise BadRequest("mailbox page: an empty message")
        entries.append(QueuedMessage(seq, sender, message_id, arrived, sealed))
    if reader.offset != len(payload):
        raise BadRequest("mailbox page: bytes after the last entry")
    return entries, bool(more)
