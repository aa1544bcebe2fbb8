"""The index of a share: the owner's catalog rows of one share key, sealed for the share's readers.

Why an index: a grantee cannot read the owner's catalog (it is encrypted with
the owner's master key), yet needs, for every shared file, the version ids,
the segment lengths, the block hashes, k-of-n and the per-version key. The
owner therefore extracts that part of its catalog (:func:`share_subset`: the
items under the share key, their *complete* versions, their segments and
blocks — the same rows and row shapes as :meth:`Catalog.export`, so the
grantee imports it with :meth:`Catalog.import_`) and stores it on each of its
suppliers at ``<alias>.index/current`` (:mod:`bitnode.storage.share_scope`).

Stored form, format 2 (UTF-8 JSON)::

    {"signed": "<canonical JSON text>", "signature": "<base64 RSA-PSS/SHA-256>"}

where the signed text is ``{"format": 2, "owner", "key_id", "serial",
"writer", "key", "body": "<base64>"}`` and ``body`` is a hybrid envelope
(:func:`bitnode.crypt.aes.hybrid_encrypt`) to the share's public key of the
zlib-compressed JSON ``{"format": 2, "owner", "key_id", "serial", "writer",
"created", "catalog": <subset>, "members", "reshare", "removed"}``, with
associated data binding owner, key id, serial and writer. ``key`` is the
fingerprint of the share key generation it is sealed for (a reader holding
an older generation knows at once it must fetch the new key, see
:mod:`bitnode.access.share_keys`). So:

- only holders of the share's private key can read it (suppliers and
  non-readers learn nothing but its size);
- it is signed with its signer's master key, checked against the signer's
  published identity: neither a supplier nor another member (who holds the
  share key too) can forge or alter it;
- the serial grows with every publish and readers take the highest one that
  verifies, so a supplier replaying an older copy is outvoted by the others.

The same form carries two kinds of document:

- the **index** (``writer`` is ""), signed by the owner: the owner's catalog
  rows of the share (its own versions and the writers' versions it took in),
  ``members`` (``{global id: "ro" | "rw"}``, who the owner granted what),
  ``reshare`` (who may pass the share key on: ``nobody``, ``writers`` or
  ``members``) and ``removed`` (writers' version ids the owner deleted, so a
  writer's older entries do not bring them back);
- a writer's **entries** (``writer`` is its global id), signed by that writer:
  its catalog rows of the share, every version id in its own part
  (``<alias>.w<tag>-...``); ``members``/``reshare``/``removed`` are empty.

Format 1 (no ``writer``, ``key``, ``members``, ``reshare``, ``removed``;
associated data without the writer) is still read.

The per-version keys inside are already wrapped with the share's public key
(service_backups wraps a version key with the key of the remote path's key
id), which is what lets a reader decrypt the files. Every function here is
CPU work for a worker thread; none does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from dataclasses import dataclass

from bitnode import boundedjson
from bitnode.access import signed_envelope
from bitnode.access.signed_envelope import canonical
from bitnode.crypt import aes
from bitnode.crypt.keys import RsaPrivateKey, RsaPublicKey
from bitnode.errors import BadRequest
from bitnode.storage import share_scope
from bitnode.storage.catalog_format import COMPLETE, READABLE_EXPORT_FORMATS, parse_export
from bitnode.storage.segment_crypto import validate_version_id

INDEX_FORMAT = 2
READABLE_INDEX_FORMATS = (1, 2)
#: Who may pass a share key on with key_share (the owner's rule, in its index).
RESHARE_RULES = ("nobody", "writers", "members")
DEFAULT_RESHARE = "writers"
MODES = ("ro", "rw")
MAX_MEMBERS = share_scope.MAX_READERS
#: Writers' version ids the owner deleted, remembered in the index (the oldest are forgotten first).
MAX_REMOVED = 100_000
#: A stored index must fit in one Data packet with room to spare.
MAX_INDEX_BYTES = 8 * 1024 * 1024
#: The decompressed body is bounded too, so a hostile index cannot exhaust memory.
MAX_BODY_BYTES = 64 * 1024 * 1024
_AAD = b"bitnode-share-index-v1"
_AAD2 = b"bitnode-share-index-v2"


@dataclass(frozen=True)
class SignedIndex:
    """A stored index (or a writer's entries) whose signature verified: who, which share, which serial, the body.

    ``writer`` is "" for the owner's index; ``key`` the fingerprint of the share
    key generation the body is sealed for (None in format 1).
    """

    owner: str
    key_id: str
    serial: int
    body: bytes
    writer: str = ""
    key: str | None = None
    format: int = 1


def _aad(owner: str, key_id: str, serial: int, writer: str | None = None) -> bytes:
    """Format 1 (``writer`` None) or format 2 associated data."""
    base = b"\x00" + owner.encode("utf-8") + b"\x00" + key_id.encode("utf-8") + b"\x00" + str(serial).encode()
    return _AAD + base if writer is None else _AAD2 + base + b"\x00" + writer.encode("utf-8")


def share_subset(export: bytes, key_id: str) -> dict:
    """The rows of a :meth:`Catalog.export` document that a reader of ``key_id`` needs.

    Folders under the key, files with a complete version, those versions, and
    their segments and blocks; nothing of other keys, no file whose first
    upload is still running, no local source paths (they are never exported).
    """
    try:
        doc = json.loads(bytes(export).decode("utf-8"))
        versions = [row for row in doc["versions"] if row[1] == key_id and row[3] == COMPLETE]
        complete = {row[2] for row in versions}
        # Folders, links (row[6]: their target) and files with a complete version.
        items = [row for row in doc["items"] if row[0] == key_id
                 and (row[2] or (len(row) > 6 and row[6] is not None) or row[1] in complete)]
        ids = {row[0] for row in versions}
        segments = [row for row in doc["segments"] if row[0] in ids]
        blocks = [row for row in doc["blocks"] if row[0] in ids]
    except (UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError) as err:
        raise BadRequest(f"catalog export is not readable: {err}") from None
    return {"format": doc.get("format"), "items": items, "versions": versions, "segments": segments,
            "blocks": blocks}


def subset_digest(subset: dict) -> str:
    """SHA-256 hex of a subset: an unchanged share is not published again."""
    return hashlib.sha256(canonical(subset)).hexdigest()


def seal_index(signer: RsaPrivateKey, share_public: RsaPublicKey, owner: str, key_id: str, serial: int,
               created: float, subset: dict, writer: str = "", members: dict | None = None,
               reshare: str = DEFAULT_RESHARE, removed: list | None = None) -> bytes:
    """The stored form of an index or (``writer`` set) a writer's entries; BadRequest when too large.

    ``signer`` is the owner's master key for the index, the writer's for its entries.
    """
    inner = {"format": INDEX_FORMAT, "owner": owner, "key_id": key_id, "serial": serial, "writer": writer,
             "created": created, "catalog": subset, "members": dict(members or {}) if not writer else {},
             "reshare": reshare if not writer else "", "removed": list(removed or []) if not writer else []}
    envelope = aes.hybrid_encrypt(share_public, zlib.compress(canonical(inner), 6),
                                  aad=_aad(owner, key_id, serial, writer))
    stored = signed_envelope.seal(signer, {"format": INDEX_FORMAT, "owner": owner, "key_id": key_id,
                                           "serial": serial, "writer": writer, "key": share_public.fingerprint(),
                                           "body": base64.b64encode(envelope).decode("ascii")})
    if len(stored) > MAX_INDEX_BYTES:
        what = f"the entries of {writer} in" if writer else "the index of"
        raise BadRequest(f"{what} {key_id} is {len(stored)} bytes, more than {MAX_INDEX_BYTES}: "
                         "too many files in one share")
    return stored


def verify_index(signer_public: RsaPublicKey, data: bytes, owner: str, key_id: str, writer: str = "") -> SignedIndex:
    """Check a stored index's (or ``writer``'s entries') signature and what it claims to be; BadRequest otherwise."""
    what = f"entries of {writer}" if writer else "share index"
    if len(data) > MAX_INDEX_BYTES:
        raise BadRequest(f"{what} too large")
    signed, _ = signed_envelope.open_signed(signer_public, data, what, key_id, writer or owner)
    head = boundedjson.loads(signed, f"{what} head")
    fmt = head.get("format") if isinstance(head, dict) else None
    if isinstance(fmt, bool) or fmt not in READABLE_INDEX_FORMATS:
        raise BadRequest(f"{what} has an unknown format")
    if (head.get("owner"), head.get("key_id"), head.get("writer", "")) != (owner, key_id, writer):
        raise BadRequest(f"{what} is not the {what} of {key_id}")
    serial = head.get("serial")
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
        raise BadRequest(f"{what} has no valid serial")
    fingerprint = head.get("key") if fmt >= 2 else None
    if fmt >= 2 and not isinstance(fingerprint, str):
        raise BadRequest(f"{what} names no share key")
    try:
        body = base64.b64decode(head["body"], validate=True)
    except (KeyError, ValueError, TypeError):
        raise BadRequest(f"{what} has no body") from None
    return SignedIndex(owner, key_id, serial, body, writer, fingerprint, fmt)


def open_index(share_private: RsaPrivateKey, signed: SignedIndex) -> dict:
    """Decrypt a verified index or writer's entries; BadRequest when it does not check out.

    Fires with ``{"serial", "created", "catalog", "writer", "members",
    "reshare", "removed"}``, each checked: whatever this accepts can be merged
    and imported without an exception (:mod:`bitnode.access.share_merge`).
    """
    writer = signed.writer if signed.format >= 2 else None
    plain = aes.hybrid_decrypt(share_private, signed.body, aad=_aad(signed.owner, signed.key_id, signed.serial, writer))
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(plain, MAX_BODY_BYTES)
    except zlib.error as err:
        raise BadRequest(f"share index does not decompress: {err}") from None
    if inflater.unconsumed_tail:
        raise BadRequest("share index body is too large")
    try:
        inner = boundedjson.loads(raw, "share index body")
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("share index body is not JSON") from None
    if (not isinstance(inner, dict) or inner.get("format") != signed.format or inner.get("owner") != signed.owner
            or inner.get("key_id") != signed.key_id or inner.get("serial") != signed.serial
            or inner.get("writer", "") != signed.writer):
        raise BadRequest("share index body does not match its signed header")
    catalog = inner.get("catalog")
    _check_catalog(catalog, signed.key_id)
    created = inner.get("created")
    if isinstance(created, bool) or not isinstance(created, (int, float)):
        raise BadRequest("share index has no valid creation time")
    opened = {"serial": signed.serial, "created": float(created), "catalog": catalog, "writer": signed.writer,
              "members": {}, "reshare": DEFAULT_RESHARE, "removed": []}
    if signed.writer:
        alias = share_scope.share_alias(signed.key_id)
        if any(not share_scope.is_writer_version(row[0], alias, signed.writer) for row in catalog["versions"]):
            raise BadRequest(f"the entries of {signed.writer} list versions outside its part of the share")
    elif signed.format >= 2:
        opened.update(members=_check_members(inner.get("members")), reshare=_check_reshare(inner.get("reshare")),
                      removed=_check_removed(inner.get("removed")))
    return opened


def _check_catalog(catalog: object, key_id: str) -> None:
    """A catalog document every reader can import (checked row by row), of the share's key only."""
    if not isinstance(catalog, dict) or catalog.get("format") not in READABLE_EXPORT_FORMATS:
        raise BadRequest("share index catalog has an unknown format")
    try:
        rows = parse_export(catalog)
    except BadRequest as err:
        raise BadRequest(f"share index catalog is malformed: {err}") from None
    if any(row[0] != key_id for row in rows.items) or any(row[1] != key_id for row in rows.versions):
        raise BadRequest(f"share index lists files of keys other than {key_id}")


def _check_members(members: object) -> dict[str, str]:
    if (not isinstance(members, dict) or len(members) > MAX_MEMBERS
            or not all(isinstance(m, str) and 0 < len(m) <= 256 and mode in MODES for m, mode in members.items())):
        raise BadRequest("share index has a malformed members list")
    return dict(members)


def _check_reshare(rule: object) -> str:
    if rule not in RESHARE_RULES:
        raise BadRequest("share index has an unknown reshare rule")
    return str(rule)


def _check_removed(removed: object) -> list[str]:
    if not isinstance(removed, list) or len(removed) > MAX_REMOVED or not all(isinstance(v, str) for v in removed):
        raise BadRequest("share index has a malformed removed list")
    for version_id in removed:
        validate_version_id(version_id)
    return list(removed)
