"""Who is in a group, who may invite, and the keys a group's messages are sealed with.

The roster lives in the group's log (:mod:`bitnode.access.group_replica`) as
*control entries* between the messages, so every broker and every member
reads the same membership at every point of the group's order, and a member
that was away catches up on it as on the messages.

Control entry, version 1::

    magic       7 bytes  b"\\x10GCTL1\\n"   (sealed messages start with 0x01/0x02, frames with 0x00)
    body size   u32
    body        canonical UTF-8 JSON object (below)
    sig size    u16
    signature   RSA-PSS/SHA-256 by ``by``'s master key over DOMAIN + body (empty for "term")

Body: ``{"v": 1, "op": ..., "group_key_id", "by", "id": "<random hex>", "time", ...}`` with, per op:

- ``add``    ``member``, ``wraps: {member: bundle}``: ``by`` (an admin) lets ``member`` in; the
  bundle carries the group's private key and every generation key so far (a late joiner reads the history);
- ``remove`` ``member``, ``generation`` (the current one + 1), ``wraps: {m: bundle}`` for *every*
  member that stays: ``member`` is out and, from the next message on, the group's messages are sealed
  with a key it never gets (it keeps what it had: it can still read what was sent before);
- ``admin``  ``member``, ``admin`` (bool): only the creator makes or unmakes admins;
- ``term``   ``term``: written by a broker that took over as primary (a no-op for the roster; see
  group_replica). Unsigned: it changes nothing.

Rules (:func:`apply`; brokers check them before an entry enters the log,
members again before they believe one): the creator is always a member and an
admin; ``add`` and ``remove`` need an admin; removing an admin, or the
creator, needs the creator (the creator cannot be removed); a ``remove``'s
wraps name exactly the members that stay.

Key bundle (``wraps`` values): base64 of :func:`bitnode.crypt.aes.hybrid_encrypt`
to the member's master key of ``{"v": 1, "private_key": PEM | null, "label": str,
"generations": {"<g>": "<hex of 32 bytes>"}}``, with associated data
:data:`BUNDLE_DOMAIN` + group key id + 0x00 + member, so a bundle cannot be
moved to another group or member.
"""

from __future__ import annotations

import base64
import secrets
import struct
from dataclasses import dataclass, field
from typing import Any

from bitnode import boundedjson, globalid
from bitnode.access.group_config import canonical
from bitnode.access.group_protocol import parse_group_key_id
from bitnode.crypt import aes, keys
from bitnode.crypt.keys import DecryptionError
from bitnode.errors import BadRequest, Conflict, Forbidden

MAGIC = b"\x10GCTL1\n"
DOMAIN = b"bitnode-group-control\x001\x00"
BUNDLE_DOMAIN = b"bitnode-group-keys\x001\x00"
OPS = ("add", "remove", "admin", "term")
#: Largest control entry accepted (a remove carries one bundle per member that stays).
MAX_CONTROL_BYTES = 512 * 1024
FIRST_GENERATION = 1
_SIZE = struct.Struct(">I")
_SIG = struct.Struct(">H")


class RosterRefused(Forbidden):
    """A control entry the roster does not allow (who signed it, or what it asks)."""


@dataclass(frozen=True)
class ControlEntry:
    """One decoded control entry (the signature is not checked by :func:`decode`)."""

    op: str
    group_key_id: str
    by: str
    entry_id: str
    time: float
    body: dict
    body_bytes: bytes
    signature: bytes

    @property
    def member(self) -> str:
        return self.body.get("member", "")

    @property
    def wraps(self) -> dict:
        return self.body.get("wraps", {})

    def signed_bytes(self) -> bytes:
        """What ``by`` signed."""
        return DOMAIN + self.body_bytes


def is_control(blob: bytes) -> bool:
    """Whether a log entry's blob is a control entry (else a sealed message)."""
    return bytes(blob[:len(MAGIC)]) == MAGIC


def encode(op: str, group_key_id: str, by: str, time: float, signer: keys.RsaPrivateKey | None = None,
           **fields: Any) -> bytes:
    """A control entry's bytes; signed with ``signer`` (by's master key) unless it is a ``term`` entry."""
    body = dict(fields, v=1, op=op, group_key_id=group_key_id, by=by, id=secrets.token_hex(16), time=float(time))
    raw = canonical(body)
    signature = b"" if signer is None else keys.sign(signer, DOMAIN + raw)
    blob = b"".join((MAGIC, _SIZE.pack(len(raw)), raw, _SIG.pack(len(signature)), signature))
    decode(blob)  # what we write must read back
    return blob


def decode(blob: bytes) -> ControlEntry:
    """Parse a control entry; BadRequest when it is malformed (signature not checked)."""
    blob = bytes(blob)
    if len(blob) > MAX_CONTROL_BYTES or not is_control(blob):
        raise BadRequest("not a control entry, or too large")
    start = len(MAGIC) + _SIZE.size
    if len(blob) < start:
        raise BadRequest("control entry is truncated")
    (size,) = _SIZE.unpack_from(blob, len(MAGIC))
    end = start + size
    if end + _SIG.size > len(blob):
        raise BadRequest("control entry is truncated")
    raw = blob[start:end]
    (sig_size,) = _SIG.unpack_from(blob, end)
    signature = blob[end + _SIG.size:]
    if len(signature) != sig_size:
        raise BadRequest("control entry signature does not match its size")
    body = boundedjson.loads(raw, "control entry", max_depth=4)
    if not isinstance(body, dict) or body.get("v") != 1 or body.get("op") not in OPS:
        raise BadRequest("control entry must be a JSON object of version 1 with a known op")
    for name in ("group_key_id", "by", "id"):
        if not isinstance(body.get(name), str) or not body[name]:
            raise BadRequest(f"control entry has no {name}")
    when = body.get("time")
    if isinstance(when, bool) or not isinstance(when, (int, float)):
        raise BadRequest("control entry has no time")
    parse_group_key_id(body["group_key_id"])
    op = body["op"]
    if op in ("add", "remove", "admin"):
        if not isinstance(body.get("member"), str):
            raise BadRequest(f"a {op} entry names a member")
        globalid.to_global_id(body["member"])
        if not signature:
            raise BadRequest(f"a {op} entry must be signed")
    if op in ("add", "remove"):
        wraps = body.get("wraps")
        if not isinstance(wraps, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wraps.items()):
            raise BadRequest(f"a {op} entry carries key bundles by member")
    if op == "remove" and (isinstance(body.get("generation"), bool) or not isinstance(body.get("generation"), int)):
        raise BadRequest("a remove entry names the new key generation")
    if op == "admin" and not isinstance(body.get("admin"), bool):
        raise BadRequest("an admin entry says true or false")
    if op == "term" and (isinstance(body.get("term"), bool) or not isinstance(body.get("term"), int)):
        raise BadRequest("a term entry names its term")
    return ControlEntry(op, body["group_key_id"], body["by"], body["id"], float(when), body, raw, signature)


def verify(entry: ControlEntry, signer_public: keys.RsaPublicKey) -> bool:
    """Whether ``entry`` is signed by the holder of ``signer_public`` (``entry.by``'s master key)."""
    return bool(entry.signature) and keys.verify(signer_public, entry.signed_bytes(), entry.signature)


@dataclass
class Roster:
    """The membership of a group after some prefix of its log."""

    creator: str
    members: dict[str, bool] = field(default_factory=dict)  # member -> admin
    generation: int = FIRST_GENERATION
    seq: int = 0  # the last entry applied

    @classmethod
    def first(cls, creator: str) -> Roster:
        """A new group's roster: the creator alone, an admin, generation 1."""
        return cls(creator, {creator: True})

    def copy(self) -> Roster:
        return Roster(self.creator, dict(self.members), self.generation, self.seq)

    def is_member(self, user: str) -> bool:
        return user in self.members

    def is_admin(self, user: str) -> bool:
        return self.members.get(user, False)

    def admins(self) -> list[str]:
        return sorted(m for m, admin in self.members.items() if admin)

    def describe(self) -> dict:
        return {"members": sorted(self.members), "admins": self.admins(), "generation": self.generation,
                "roster_sequence": self.seq}


def check(roster: Roster, entry: ControlEntry, group_key_id: str) -> None:
    """Raise RosterRefused (or Conflict) unless ``roster`` allows ``entry`` (signature checked elsewhere)."""
    if entry.group_key_id != group_key_id:
        raise RosterRefused(f"a control entry of another group ({entry.group_key_id})")
    if entry.op == "term":
        return
    by, member = entry.by, entry.member
    if not roster.is_admin(by):
        raise RosterRefused(f"{by} is not an admin of group {group_key_id}")
    if entry.op == "add":
        if roster.is_member(member):
            raise Conflict(f"{member} is a member of group {group_key_id} already")
        if set(entry.wraps) != {member}:
            raise RosterRefused("an add entry carries the new member's key bundle, and only that")
    elif entry.op == "remove":
        if not roster.is_member(member):
            raise Conflict(f"{member} is not a member of group {group_key_id}")
        if member == roster.creator:
            raise RosterRefused("the creator of a group cannot be removed from it")
        if roster.is_admin(member) and by != roster.creator:
            raise RosterRefused("only the creator removes an admin")
        if entry.body["generation"] != roster.generation + 1:
            raise RosterRefused(f"a remove makes key generation {roster.generation + 1}")
        if set(entry.wraps) != set(roster.members) - {member}:
            raise RosterRefused("a remove entry carries a key bundle for every member that stays, and only those")
    elif entry.op == "admin":
        if by != roster.creator:
            raise RosterRefused("only the creator makes or unmakes admins")
        if not roster.is_member(member) or member == roster.creator:
            raise Conflict(f"{member} is not a member (other than the creator) of group {group_key_id}")


def apply(roster: Roster, entry: ControlEntry, seq: int) -> Roster:
    """The roster after ``entry`` (at sequence ``seq``), which :func:`check` allowed."""
    after = roster.copy()
    after.seq = seq
    if entry.op == "add":
        after.members[entry.member] = False
    elif entry.op == "remove":
        del after.members[entry.member]
        after.generation = int(entry.body["generation"])
    elif entry.op == "admin":
        after.members[entry.member] = bool(entry.body["admin"])
    return after


def fold(creator: str, group_key_id: str, controls: list[tuple[int, bytes]]) -> Roster:
    """The roster after the control entries ``[(seq, blob)]`` of a log (in order); entries the roster
    refuses (or that do not parse) are skipped, as every reader of the log skips them."""
    roster = Roster.first(creator)
    for seq, blob in controls:
        try:
            entry = decode(blob)
            check(roster, entry, group_key_id)
        except (BadRequest, Forbidden, Conflict):
            roster.seq = seq
            continue
        roster = apply(roster, entry, seq)
    return roster


# -- key bundles ----------------------------------------------------------------------------------

def new_secret() -> bytes:
    """A fresh generation key."""
    return aes.generate_key()


def _bundle_aad(group_key_id: str, member: str) -> bytes:
    return BUNDLE_DOMAIN + group_key_id.encode("utf-8") + b"\x00" + member.encode("utf-8")


def wrap_keys(member_public: keys.RsaPublicKey, group_key_id: str, member: str, generations: dict[int, bytes],
              private_pem: str | None = None, label: str = "") -> str:
    """A key bundle for ``member`` (see the module doc). CPU work: run it off the reactor."""
    plain = canonical({"v": 1, "private_key": private_pem, "label": label,
                        "generations": {str(g): secret.hex() for g, secret in sorted(generations.items())}})
    return base64.b64encode(aes.hybrid_encrypt(member_public, plain, aad=_bundle_aad(group_key_id, member))).decode()


def unwrap_keys(master_key: keys.RsaPrivateKey, group_key_id: str, member: str,
                bundle: str) -> tuple[dict[int, bytes], str | None, str]:
    """``(generations, private key PEM or None, label)`` of a bundle sealed to me; BadRequest if it does not
    open. CPU work: run it off the reactor."""
    try:
        sealed = base64.b64decode(bundle, validate=True)
        plain = aes.hybrid_decrypt(master_key, sealed, aad=_bundle_aad(group_key_id, member))
        value = boundedjson.loads(plain, "key bundle", max_depth=3)
        generations = {int(g): bytes.fromhex(secret) for g, secret in value["generations"].items()}
        pem = value.get("private_key")
        label = value.get("label") or ""
    except (ValueError, KeyError, TypeError, AttributeError, DecryptionError):
        raise BadRequest("a group key bundle that does not open with my key") from None
    if any(g < FIRST_GENERATION or len(secret) != aes.KEY_SIZE for g, secret in generations.items()):
        raise BadRequest("a group key bundle with a malformed key")
    if (pem is not None and not isinstance(pem, str)) or not isinstance(label, str):
        raise BadRequest("a group key bundle with a malformed private key or label")
    return generations, pem, label
