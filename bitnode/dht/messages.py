"""The DHT datagram format: versioned JSON, strictly bounded, strictly parsed.

One datagram is one UTF-8 JSON object of at most :data:`MAX_DATAGRAM` bytes::

    {"v": 1, "t": "FIND_NODE", "rid": "<16 hex>", "layer": 0,
     "from": {"id": "<64 hex>", "user": "...", "layers": [0, 2]},
     "body": {"target": "<64 hex>"}}

``rid`` is a random request id chosen by the requester (from an injected
``random.Random``) and echoed in the response. The sender's address is never
read from the payload: it is the datagram's source address.

Optional top-level fields (address checks, see :mod:`bitnode.dht.tokens`):
``"tok"`` — in a response, a token for the requester's IP; in a request, the
token the requester last got from that node, proving it receives at its
source address. ``"trunc": true`` — this response was cut to a small size
because the request came from an unproven address (ask again with the token).
``"pad"`` — a string of spaces that makes a request without a token big enough
to earn a full answer. Bodies by type:

=============  ===================================================
PING / PONG    ``{}``
FIND_NODE      ``{"target": id}``
NODES          ``{"contacts": [contact, ...]}`` (at most 64)
FIND_VALUE     ``{"key": str}``
VALUE          ``{"record": {...signed record...}}``
STORE          ``{"record": {...signed record...}}``
STORED         ``{"ok": bool, "code": str, "reason": str}``
=============  ===================================================

:func:`decode` raises :class:`MalformedMessage` (a :class:`BadRequest`) for
anything else; the protocol drops and counts such datagrams.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from json.encoder import encode_basestring as _json_string
from typing import Any

from bitnode.dht.ids import (
    ID_HEX_LEN,
    Contact,
    check_layer_id,
    check_layers,
    check_user,
    id_from_hex,
    id_to_hex,
)
from bitnode.errors import BadRequest

PROTOCOL_VERSION = 1
MAX_DATAGRAM = 8192
MAX_CONTACTS = 64
MAX_KEY_LEN = 512
MAX_REASON_LEN = 200
TOKEN_LEN = 32
_ENVELOPE_BYTES = len(b'"pad":"",')

PING = "PING"
PONG = "PONG"
FIND_NODE = "FIND_NODE"
NODES = "NODES"
FIND_VALUE = "FIND_VALUE"
VALUE = "VALUE"
STORE = "STORE"
STORED = "STORED"

#: request type -> the response types that may answer it
RESPONSES: dict[str, frozenset[str]] = {
    PING: frozenset({PONG}),
    FIND_NODE: frozenset({NODES}),
    FIND_VALUE: frozenset({VALUE, NODES}),
    STORE: frozenset({STORED}),
}
REQUEST_KINDS = frozenset(RESPONSES)
RESPONSE_KINDS = frozenset({PONG, NODES, VALUE, STORED})

_TOP_KEYS = frozenset({"v", "t", "rid", "layer", "from", "body"})
_HEX = frozenset("0123456789abcdef")


class MalformedMessage(BadRequest):
    """A datagram that is not a valid DHT message."""


class OversizeMessage(MalformedMessage):
    """A datagram (received or about to be sent) larger than :data:`MAX_DATAGRAM`."""


@dataclass(frozen=True)
class Sender:
    """Who sent a message, as they describe themselves (address comes from the socket)."""

    node_id: int
    user: str = ""
    layers: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class Message:
    """One parsed datagram. ``body`` holds parsed values (ints for ids, :class:`Contact` objects)."""

    kind: str
    request_id: str
    sender: Sender
    layer: int = 0
    body: dict[str, Any] = field(default_factory=dict)
    #: request: the token presented; response: a token issued for the requester's IP ("" if none)
    token: str = ""
    #: response only: cut short because the requester's address is not proven yet
    truncated: bool = False

    @property
    def is_request(self) -> bool:
        """True for PING, FIND_NODE, FIND_VALUE and STORE."""
        return self.kind in REQUEST_KINDS


def new_request_id(rng: random.Random) -> str:
    """A fresh random 64-bit request id as 16 hex characters."""
    return format(rng.getrandbits(64), "016x")


def _check_rid(rid: Any) -> str:
    if not isinstance(rid, str) or len(rid) != 16 or not set(rid) <= _HEX:
        raise MalformedMessage("rid must be 16 lowercase hex characters")
    return rid


def _encode_body(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    if kind in (PING, PONG):
        return {}
    if kind == FIND_NODE:
        return {"target": id_to_hex(body["target"])}
    if kind == FIND_VALUE:
        return {"key": body["key"]}
    if kind in (VALUE, STORE):
        return {"record": body["record"]}
    if kind == STORED:
        return {"ok": bool(body["ok"]), "code": body.get("code", ""), "reason": body.get("reason", "")}
    raise MalformedMessage(f"unknown message type {kind!r}")


def _decode_body(kind: str, body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise MalformedMessage("body must be an object")
    if kind in (PING, PONG):
        return {}
    if kind == FIND_NODE:
        return {"target": id_from_hex(body.get("target"))}
    if kind == NODES:
        contacts = body.get("contacts")
        if not isinstance(contacts, list) or len(contacts) > MAX_CONTACTS:
            raise MalformedMessage(f"contacts must be a list of at most {MAX_CONTACTS}")
        return {"contacts": tuple(Contact.from_dict(c) for c in contacts)}
    if kind == FIND_VALUE:
        key = body.get("key")
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LEN:
            raise MalformedMessage("key must be a non-empty string")
        return {"key": key}
    if kind in (VALUE, STORE):
        record = body.get("record")
        if not isinstance(record, dict):
            raise MalformedMessage("record must be an object")
        return {"record": record}
    if kind == STORED:
        ok, code, reason = body.get("ok"), body.get("code", ""), body.get("reason", "")
        if not isinstance(ok, bool) or not isinstance(code, str) or not isinstance(reason, str):
            raise MalformedMessage("STORED needs ok (bool), code and reason (str)")
        return {"ok": ok, "code": code[:MAX_REASON_LEN], "reason": reason[:MAX_REASON_LEN]}
    raise MalformedMessage(f"unknown message type {kind!r}")


def encode(msg: Message, pad_to: int = 0, limit: int = MAX_DATAGRAM) -> bytes:
    """Serialise ``msg`` (padded with spaces to at least ``pad_to`` bytes if that is more).

    Raises :class:`OversizeMessage` if it exceeds ``limit`` (at most :data:`MAX_DATAGRAM`).
    """
    head = _dumps({
        "v": PROTOCOL_VERSION,
        "t": msg.kind,
        "rid": msg.request_id,
        "layer": msg.layer,
        "from": {"id": id_to_hex(msg.sender.node_id), "user": msg.sender.user, "layers": list(msg.sender.layers)},
    })
    if msg.kind == NODES:  # contacts written directly (see _contact_json): most of what a busy node encodes
        body = '{"contacts":[' + ",".join(map(_contact_json, msg.body["contacts"])) + "]}"
    else:
        body = _dumps(_encode_body(msg.kind, msg.body))
    extra = ',"tok":' + _json_string(msg.token) if msg.token else ""
    if msg.truncated:
        extra += ',"trunc":true'
    # The text json.dumps gives for the whole object {v, t, rid, layer, from, body[, tok][, trunc]}.
    data = (head[:-1] + ',"body":' + body + extra + "}").encode("utf-8")
    limit = min(limit, MAX_DATAGRAM)
    if len(data) < min(pad_to, limit) and len(data) + _ENVELOPE_BYTES <= limit:
        spaces = max(0, min(pad_to, limit) - len(data) - _ENVELOPE_BYTES)
        data = data[:-1] + b',"pad":"' + b" " * spaces + b'"}'
    if len(data) > limit:
        raise OversizeMessage(f"{msg.kind} message is {len(data)} bytes, max {limit}")
    return data


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _contact_json(contact: Contact) -> str:
    """``_dumps(contact.to_dict())`` without building the dict: NODES answers are most of what a node encodes."""
    return (f'{{"id":"{contact.node_id:0{ID_HEX_LEN}x}","host":{_json_string(contact.host)},"port":{contact.port:d},'
            f'"user":{_json_string(contact.user)},"layers":[{",".join(map(str, contact.layers))}]}}')


def encode_fitting(msg: Message, limit: int = MAX_DATAGRAM) -> bytes:
    """Like :func:`encode`, but a NODES message drops its farthest contacts until it fits in ``limit``."""
    return fit(msg, limit)[0]


def fit(msg: Message, limit: int = MAX_DATAGRAM) -> tuple[bytes, Message]:
    """:func:`encode_fitting`'s bytes and the message they encode (``msg`` itself, or it with fewer contacts)."""
    while True:
        try:
            return encode(msg, limit=limit), msg
        except OversizeMessage:
            contacts = msg.body.get("contacts") if msg.kind == NODES else None
            if not contacts:
                raise
            msg = replace(msg, body={"contacts": tuple(contacts)[:-1]})


def decode(data: bytes) -> Message:
    """Parse one datagram strictly; raises :class:`OversizeMessage` or :class:`MalformedMessage`."""
    if len(data) > MAX_DATAGRAM:
        raise OversizeMessage(f"datagram of {len(data)} bytes, max {MAX_DATAGRAM}")
    try:
        wire = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedMessage(f"not UTF-8 JSON: {exc.__class__.__name__}") from None
    if not isinstance(wire, dict) or not _TOP_KEYS <= wire.keys():
        raise MalformedMessage("message must be an object with v, t, rid, layer, from, body")
    if wire["v"] != PROTOCOL_VERSION or type(wire["v"]) is not int:
        raise MalformedMessage(f"unsupported protocol version {wire['v']!r}")
    kind = wire["t"]
    if not isinstance(kind, str) or (kind not in REQUEST_KINDS and kind not in RESPONSE_KINDS):
        raise MalformedMessage(f"unknown message type {kind!r}")
    sender = wire["from"]
    if not isinstance(sender, dict):
        raise MalformedMessage("from must be an object")
    try:
        parsed_sender = Sender(
            node_id=id_from_hex(sender.get("id")),
            user=check_user(sender.get("user", "")),
            layers=check_layers(sender.get("layers", [0])),
        )
        layer = check_layer_id(wire["layer"])
        body = _decode_body(kind, wire["body"])
    except MalformedMessage:
        raise
    except BadRequest as exc:
        raise MalformedMessage(str(exc)) from None
    token, truncated, pad = wire.get("tok", ""), wire.get("trunc", False), wire.get("pad", "")
    if not isinstance(token, str) or token and (len(token) != TOKEN_LEN or not set(token) <= _HEX):
        raise MalformedMessage(f"tok must be {TOKEN_LEN} lowercase hex characters")
    if not isinstance(truncated, bool) or not isinstance(pad, str):
        raise MalformedMessage("trunc must be a boolean and pad a string")
    return Message(kind=kind, request_id=_check_rid(wire["rid"]), sender=parsed_sender, layer=layer, body=body,
                   token=token, truncated=truncated)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"JSON constant {name} not allowed")
