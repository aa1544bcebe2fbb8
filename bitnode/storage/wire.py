"""Payloads of the storage commands between a customer and a supplier.

The packet (:mod:`bitnode.transport.packet`) carries who and what; these are
the payload bytes for each storage command, format version 1:

- ``Data`` (store one block, and the answer to ``Retrieve``), layout 2 for a
  block in the stored block format (it begins with ``blockformat.MAGIC``)::

      block bytes (raw) | path (UTF-8) | u16 path length | u8 layout=2

  and layout 1 for any other block (still read, whatever the block)::

      u8 layout=1 | u16 path length | path (UTF-8) | block bytes (raw, to the end)

  The first byte tells them apart: 0x01 is layout 1, the magic's ``B`` is
  layout 2. With the block first, one SHA-256 state over the block (its
  catalog hash) continues over the trailer into the packet's payload digest,
  so the uploader builds the whole payload in the one copy it makes of a
  block and hashes it once (:func:`data_trailer`, :class:`DataPayload`); a
  receiver that kept the hash state of the payload without its tail as it
  streamed in gets the block's hash without a second pass
  (:func:`streamed_block_sha256`).

- ``Retrieve``, ``DeleteFile``, ``DeleteBackup``, ``ListFiles``: the UTF-8 block
  path or prefix alone. A ``ListFiles`` asking for the next page adds a newline
  and the last path of the page before: ``prefix "\n" after``.
- ``Files`` (answer to ``ListFiles``): JSON ``{"version": 1, "blocks": {path: [size, sha256]}}``,
  sorted by path, at most :data:`LIST_PAGE` of them; when more follow, ``"next"``
  names the last path of this page (ask again with it as ``after``). A customer
  that never asks for a next page still reads the first one.
- ``RequestService``: JSON ``{"version": 1, "needed_bytes": N}``; answered by
  ``Ack`` with JSON ``{"accepted": true, "quota_bytes": N}`` or ``Fail``.
- ``Ack`` / ``Fail`` for everything else: JSON ``{...}`` / UTF-8 reason text.
- ``CancelService`` from a supplier to its customer is a *rejection notice*:
  JSON ``{"version": 1, "rejected": true, "reason": ...}`` (a customer's own
  cancel is empty); see :func:`rejection_notice`.

Suppliers are found in the DHT layer :data:`SUPPLIERS_LAYER`.

Block bytes are never base64'd or copied more than once on the way in.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass

from bitnode import boundedjson
from bitnode.errors import BadRequest
from bitnode.storage.blockformat import MAGIC as BLOCK_MAGIC
from bitnode.storage.ports import MAX_PATH_LENGTH
from bitnode.transport.commands import Command

WIRE_VERSION = 1
#: The DHT layer suppliers join so customers can find them (layer 0 is everyone).
SUPPLIERS_LAYER = 1
#: Commands a supplier serves (CancelService also carries suppliers' rejection notices).
MARKET_COMMANDS = (Command.REQUEST_SERVICE, Command.CANCEL_SERVICE, Command.DATA, Command.RETRIEVE,
                   Command.LIST_FILES, Command.DELETE_FILE, Command.DELETE_BACKUP, Command.CONTACTS)
#: The Fail answer to a storage command while the node serves no supplier.
SUPPLIER_OFF = "supplier service is not running"
#: The Fail answer to a rejection notice while the node runs no customer side.
NOT_A_CUSTOMER = "not a customer here"
_DATA_HEAD = struct.Struct(">BH")
#: Layout 2 of a Data payload ends with the path's length and the layout byte.
DATA_LAYOUT_2 = 2
_DATA_TAIL = struct.Struct(">HB")
#: Longest layout-2 trailer: what a receiver hashes separately to learn the block's own hash.
MAX_DATA_TRAILER = MAX_PATH_LENGTH + _DATA_TAIL.size
#: Blocks in one ``Files`` page (about 1.3 MB of JSON: far below the JSON payload limit).
LIST_PAGE = 10_000
MAX_JSON_PAYLOAD = 4 * 1024 * 1024


@dataclass(frozen=True)
class DataPayload:
    """A ``Data`` payload built ahead of sending, with the SHA-256 the packet header carries.

    The uploader's worker builds it in the one copy it makes of each block
    (:func:`bitnode.storage.blockformat.pack_with_suffix`), so the sender
    neither copies the block again nor hashes it a second time.
    ``block_length`` bytes of ``payload`` from its start are the block.
    """

    path: str
    payload: bytes
    block_length: int
    sha256: bytes

    @property
    def block(self) -> memoryview:
        """The block inside the payload (a view: no copy)."""
        return memoryview(self.payload)[: self.block_length]


def _encoded_path(path: str) -> bytes:
    raw = path.encode("utf-8")
    if not raw or len(raw) > MAX_PATH_LENGTH:
        raise BadRequest(f"invalid block path: {path!r}")
    return raw


def data_trailer(path: str) -> bytes:
    """What follows a block (one that begins with the block magic) in a layout-2 ``Data`` payload."""
    raw = _encoded_path(path)
    return raw + _DATA_TAIL.pack(len(raw), DATA_LAYOUT_2)


def encode_data(path: str, block: bytes) -> bytes:
    """A ``Data`` payload: the block at ``path`` (layout 2 for a stored-format block, else layout 1)."""
    view = memoryview(block)
    if view[: len(BLOCK_MAGIC)] == BLOCK_MAGIC:
        return b"".join((view, data_trailer(path)))
    raw = _encoded_path(path)
    return _DATA_HEAD.pack(WIRE_VERSION, len(raw)) + raw + bytes(block)


def decode_data(payload: bytes, copy: bool = True) -> tuple[str, bytes]:
    """(path, block bytes) of a ``Data`` payload of either layout; BadRequest when malformed.

    ``copy=False``: the block is a read-only memoryview into ``payload`` (no
    copy), for a caller that only writes it out (the supplier storing it).
    """
    path, start, end = _data_bounds(payload)
    block = memoryview(payload)[start:end] if not copy else payload[start:end]
    return path, block


def _data_bounds(payload: bytes) -> tuple[str, int, int]:
    """(path, where the block starts, where it ends) in a ``Data`` payload; BadRequest when malformed."""
    if len(payload) < _DATA_HEAD.size:
        raise BadRequest("Data payload too short")
    view = memoryview(payload)
    if view[: len(BLOCK_MAGIC)] == BLOCK_MAGIC:
        if len(view) < len(BLOCK_MAGIC) + _DATA_TAIL.size:
            raise BadRequest("Data payload too short")
        length, layout = _DATA_TAIL.unpack_from(view, len(view) - _DATA_TAIL.size)
        if layout != DATA_LAYOUT_2:
            raise BadRequest(f"Data payload layout {layout} is not supported")
        end = len(view) - _DATA_TAIL.size - length
        if length == 0 or length > MAX_PATH_LENGTH or end < len(BLOCK_MAGIC):
            raise BadRequest("Data payload has a bad path length")
        return decode_path(view[end : len(view) - _DATA_TAIL.size]), 0, end
    version, length = _DATA_HEAD.unpack_from(view)
    if version != WIRE_VERSION:
        raise BadRequest(f"Data payload version {version} is not supported")
    end = _DATA_HEAD.size + length
    if length == 0 or length > MAX_PATH_LENGTH or len(view) < end:
        raise BadRequest("Data payload has a bad path length")
    return decode_path(view[_DATA_HEAD.size:end]), end, len(view)


def streamed_block_sha256(payload: bytes, prefix_sha256: Callable[[int], str | None] | None) -> str | None:
    """The hex SHA-256 of the block in a layout-2 ``Data`` payload, from the hash state kept as it streamed in.

    ``prefix_sha256(n)`` gives the SHA-256 of ``payload[:n]`` or None
    (:meth:`bitnode.transport.packet.Packet.streamed_prefix_sha256`). None when
    the block is not at the payload's start (layout 1) or no state was kept:
    the caller then hashes the block itself, in a worker. BadRequest when the
    payload is malformed.
    """
    _path, start, end = _data_bounds(payload)
    if prefix_sha256 is None or start != 0:
        return None
    return prefix_sha256(end)


def encode_path(path: str) -> bytes:
    """The payload of Retrieve / DeleteFile / DeleteBackup / ListFiles."""
    return path.encode("utf-8")


def decode_path(payload: bytes) -> str:
    """A path payload as text; BadRequest for non-UTF-8 or over-long input."""
    if len(payload) > MAX_PATH_LENGTH:
        raise BadRequest("path too long")
    try:
        return bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("path is not UTF-8") from None


def encode_json(value: dict) -> bytes:
    """A JSON payload (Files, RequestService, Ack details)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8")


def decode_json(payload: bytes) -> dict:
    """A JSON object payload; BadRequest when it is not one (or is too large or too deeply nested)."""
    value = boundedjson.loads(payload, "JSON payload", max_bytes=MAX_JSON_PAYLOAD)
    if not isinstance(value, dict):
        raise BadRequest("payload must be a JSON object")
    return value


def encode_list_request(prefix: str, after: str = "") -> bytes:
    """A ``ListFiles`` payload: the first page under ``prefix``, or the page after the path ``after``."""
    return encode_path(prefix if not after else f"{prefix}\n{after}")


def decode_list_request(payload: bytes) -> tuple[str, str]:
    """(prefix, after) of a ``ListFiles`` payload; BadRequest for non-UTF-8 or over-long input."""
    if len(payload) > 2 * MAX_PATH_LENGTH + 1:
        raise BadRequest("ListFiles payload too long")
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("path is not UTF-8") from None
    prefix, _, after = text.partition("\n")
    if len(prefix.encode("utf-8")) > MAX_PATH_LENGTH or len(after.encode("utf-8")) > MAX_PATH_LENGTH:
        raise BadRequest("path too long")
    return prefix, after


def encode_files(blocks: dict[str, tuple[int, str]], next_after: str = "") -> bytes:
    """A ``Files`` payload listing blocks with size and SHA-256 (``next_after``: more follow after that path)."""
    value: dict = {"version": WIRE_VERSION, "blocks": {p: [s, h] for p, (s, h) in blocks.items()}}
    if next_after:
        value["next"] = next_after
    return encode_json(value)


def decode_files(payload: bytes) -> dict[str, tuple[int, str]]:
    """The block listing of a ``Files`` payload; BadRequest when malformed."""
    return decode_files_page(payload)[0]


def decode_files_page(payload: bytes) -> tuple[dict[str, tuple[int, str]], str]:
    """(blocks, the path to ask the next page after or "") of a ``Files`` payload; BadRequest when malformed."""
    value = decode_json(payload)
    blocks = value.get("blocks")
    after = value.get("next", "")
    if value.get("version") != WIRE_VERSION or not isinstance(blocks, dict) or not isinstance(after, str):
        raise BadRequest("Files payload is malformed")
    out = {}
    for path, entry in blocks.items():
        if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], int)
                or not isinstance(entry[1], str)):
            raise BadRequest(f"Files entry for {path!r} is malformed")
        out[path] = (entry[0], entry[1])
    return out, after


def contacts_payload(value: dict) -> bytes:
    """The ``Contacts`` payload that hands a customer's signed suppliers record to one of its suppliers."""
    return encode_json({"version": WIRE_VERSION, "suppliers_record": value})


def parse_contacts_payload(payload: bytes) -> dict:
    """The suppliers record inside a ``Contacts`` payload (its signature is checked by the keeper); BadRequest."""
    body = decode_json(payload)
    value = body.get("suppliers_record") if isinstance(body, dict) else None
    if not isinstance(value, dict):
        raise BadRequest("a Contacts packet must carry suppliers_record")
    return value


def rejection_notice(reason: str) -> bytes:
    """The CancelService payload a supplier sends a customer it rejects."""
    return encode_json({"version": WIRE_VERSION, "rejected": True, "reason": reason})


def is_rejection_notice(payload: bytes) -> bool:
    """Whether a CancelService payload is a supplier's rejection (a customer's own cancel is empty)."""
    if not payload:
        return False
    try:
        return decode_json(payload).get("rejected") is True
    except BadRequest:
        return False
