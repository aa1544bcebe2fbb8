"""The group protocol: group names, the frames members and brokers exchange, and refusals.

Names
-----

A group is a private RSA key ``group_<32 hex>$creator@host[_port]`` (its
*group key id*). Which nodes host its log (its *brokers*) is in its signed
config (:mod:`bitnode.access.group_config`), not in its name.

Frames
------

Group traffic travels in ``Message`` packets, because DESIGN.md's command
list has no command for it. A sealed private message starts with its format
byte ``0x01``; a group frame starts with :data:`MAGIC` (first byte ``0x00``),
so the two never mix. A frame, version 1 (integers big-endian)::

    magic        6 bytes  b"\\x00GRP1\\n"
    header size  u32
    header       UTF-8 JSON object: {"op": ..., "group_key_id": ..., "sizes": [n, ...], ...}
    blobs        the raw bytes of each blob, back to back, ``sizes`` long each

The blobs are log entries (sealed group messages, :mod:`bitnode.chat.message_crypto`,
or control entries, :mod:`bitnode.access.group_roster`) sent raw (no base64).
Operations and their answers (an ``Ack`` carrying an ``ok`` frame unless said):

=============  ===========================  =============================================================
op             from -> to, fields           answer
=============  ===========================  =============================================================
subscribe      member -> broker: ``after``,  ``head`` (the commit index), ``term``, ``leader``, and every
               ``suspects``                 control entry (``sequences`` + blobs): pushes follow
unsubscribe    member -> broker             ``head``
fetch          member -> any broker:        committed entries after ``after``: ``sequences`` + blobs,
               ``after``, ``limit``          ``head``, ``more``, ``term``, ``leader``
publish        member -> primary: one blob  ``sequence`` given to it, ``head``
push           primary -> member:           the member's ``ok``
               ``sequence``, one blob
moved          primary -> member: ``term``  the member's ``ok`` (it subscribes there)
invite         admin -> new member:         the invitee's ``ok`` once it stored the group
               ``config``, ``bundle``
host           creator (or a broker) ->     ``head``, ``term`` (the config is checked against the
               broker: ``config``           creator's identity and this broker's limits)
drop           creator -> broker            ``dropped``
sync           primary -> backup: ``term``, ``result`` (ok / behind / stale), ``term``, ``head``,
               ``prev_seq``, ``prev_term``, ``commit``
               ``base``, ``commit``,
               ``entries`` + blobs
prepare        candidate -> broker:         ``result`` (promise / stale), ``term``, ``head``,
               ``term``                     ``last_term``, ``commit``
pull           candidate -> broker:         entries after it (uncommitted too) + ``head``, ``base``,
               ``after``                    ``more``
status         broker -> broker             ``role``, ``term``, ``leader``, ``head``, ``commit``
=============  ===========================  =============================================================

A broker that does not lead the group answers a member's subscribe or
publish with an ``Ack`` carrying a ``redirect`` frame (``term``, ``leader``:
the broker to ask, or empty when none is known): the member's link
(:mod:`bitnode.access.group_links`) follows it. The replication rules behind
sync, prepare and pull are in :mod:`bitnode.access.group_replica`.

A refusal is a ``Fail`` whose payload is ``"<http code> <reason>"``
(:func:`refusal`), turned back into the same typed error by
:func:`refused_error`, so "not a member" (403) and "no such group" (404) reach
the member's API as what they are.
"""

from __future__ import annotations

import json
import re
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

from bitnode import boundedjson, globalid
from bitnode.errors import (
    BadRequest,
    BitnodeError,
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unavailable,
)

MAGIC = b"\x00GRP1\n"
GROUP_PREFIX = "group_"
OPS = ("subscribe", "unsubscribe", "fetch", "publish", "push", "moved", "invite", "host", "drop", "sync", "prepare",
       "pull", "status", "ok", "redirect")
#: Answers: they carry no group key id of their own.
ANSWERS = ("ok", "redirect")
#: Most entries one fetch answers, and most blob bytes (the rest comes with ``more``).
MAX_FETCH = 200
MAX_FETCH_BYTES = 4 * 1024 * 1024
MAX_HEADER = 64 * 1024
_SIZE = struct.Struct(">I")
_ALIAS_RE = re.compile(r"group_[0-9a-f]{8,56}\Z")
_ERRORS: dict[int, type[BitnodeError]] = {400: BadRequest, 403: Forbidden, 404: NotFound, 409: Conflict,
                                          429: TooManyRequests, 503: Unavailable}


class FrameError(BadRequest):
    """A group frame that is malformed."""


class Redirected(Unavailable):
    """The broker asked does not lead the group: ``leader`` may (None: nobody known), in ``term``."""

    def __init__(self, text: str, leader: str | None = None, term: int = 0) -> None:
        super().__init__(text)
        self.leader = leader
        self.term = term


def new_group_alias() -> str:
    """A fresh random alias ``group_<32 hex>``."""
    return GROUP_PREFIX + secrets.token_hex(16)


def is_group_key_id(key_id: Any) -> bool:
    """Whether ``key_id`` is a well-formed group key id."""
    try:
        parse_group_key_id(key_id)
    except BadRequest:
        return False
    return True


def parse_group_key_id(key_id: Any) -> globalid.KeyId:
    """A group key id ``group_<hex>$owner``, parsed (BadRequest otherwise)."""
    if not isinstance(key_id, str):
        raise BadRequest("group_key_id must be a key id like group_<hex>$alice@host")
    parsed = globalid.parse_key_id(key_id.strip())
    if not _ALIAS_RE.match(parsed.alias):
        raise BadRequest(f"{key_id!r} is not a group key id (group_<hex>$owner)")
    return parsed


def creator_of(group_key_id: str) -> str:
    """The global id of the group's creator: the key's owner."""
    return str(parse_group_key_id(group_key_id).owner)


@dataclass(frozen=True)
class Frame:
    """One decoded group frame."""

    op: str
    group_key_id: str
    fields: dict = field(default_factory=dict)
    blobs: tuple[bytes, ...] = ()

    def integer(self, name: str, default: int | None = None, minimum: int = 0) -> int:
        """Field ``name`` as an integer of at least ``minimum`` (FrameError otherwise)."""
        value = self.fields.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise FrameError(f"group frame field {name!r} must be an integer of at least {minimum}")
        return value


def is_group_frame(payload: bytes) -> bool:
    """Whether a ``Message`` payload is group traffic."""
    return payload[:len(MAGIC)] == MAGIC


def encode_frame(op: str, group_key_id: str, blobs: tuple[bytes, ...] | list[bytes] = (), **fields: Any) -> bytes:
    """The bytes of one frame (see the module doc)."""
    if op not in OPS:
        raise BadRequest(f"unknown group operation {op!r}")
    header = dict(fields, op=op, group_key_id=group_key_id, sizes=[len(b) for b in blobs], v=1)
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return b"".join((MAGIC, _SIZE.pack(len(head)), head, *blobs))


def decode_frame(payload: bytes) -> Frame:
    """Parse a frame; FrameError if it is malformed (sizes, JSON, op, group key id)."""
    if not is_group_frame(payload):
        raise FrameError("not a group frame")
    start = len(MAGIC) + _SIZE.size
    if len(payload) < start:
        raise FrameError("group frame is truncated")
    (size,) = _SIZE.unpack(payload[len(MAGIC):start])
    if size > MAX_HEADER or start + size > len(payload):
        raise FrameError("group frame header is truncated or too large")
    try:
        header = boundedjson.loads(payload[start:start + size], "group frame header")
    except (UnicodeDecodeError, ValueError):
        raise FrameError("group frame header is not JSON") from None
    if not isinstance(header, dict) or header.get("v") != 1:
        raise FrameError("group frame header must be a JSON object of version 1")
    op, sizes = header.pop("op", None), header.pop("sizes", None)
    group_key_id = header.pop("group_key_id", None)
    header.pop("v")
    if op not in OPS:
        raise FrameError(f"unknown group operation {op!r}")
    if op not in ANSWERS:
        parse_group_key_id(group_key_id)
    if not isinstance(sizes, list) or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in sizes):
        raise FrameError("group frame sizes must be a list of byte counts")
    position, blobs = start + size, []
    for length in sizes:
        blobs.append(bytes(payload[position:position + length]))
        position += length
    if position != len(payload):
        raise FrameError("group frame blobs do not match their sizes")
    return Frame(op, group_key_id or "", header, tuple(blobs))


def refusal(err: BitnodeError) -> bytes:
    """A ``Fail`` payload carrying ``err``'s HTTP code and text."""
    return f"{err.http_code} {err}".encode("utf-8")[:300]


def refused_error(reason: str, peer: str) -> BitnodeError | None:
    """The typed error of a ``Fail`` reason from ``peer`` (see :func:`refusal`); None when the reason
    carries no code: the peer did not take the frame as group traffic (its groups service is off)."""
    code, _, text = reason.partition(" ")
    kind = _ERRORS.get(int(code)) if code.isdigit() else None
    if kind is None:
        return None
    return kind(f"{peer} refused: {text}")
