"""The index of a share: the owner's catalog rows of one share key, sealed for the share's readers.

Why an index: a grantee cannot read the owner's catalog (it is encrypted with
the owner's master key), yet needs, for every shared file, the version ids,
the segment lengths, the block hashes, k-of-n and the per-version key. The
owner therefore extracts that part of its catalog (:func:`share_subset`: the
items under the share key, their *complete* versions, their segments and
blocks — the same rows and row shapes as :meth:`Catalog.export`, so the
grantee imports it with :meth:`Catalog.import_`) and stores it on each of its
suppliers at ``<alias>.index/current`` (:mod:`bitnode.storage.share_scope`).

Stored form, format 1 (UTF-8 JSON)::

    {"signed": "<canonical JSON text>", "signature": "<base64 RSA-PSS/SHA-256>"}

where the signed text is ``{"format": 1, "owner", "key_id", "serial",
"body": "<base64>"}`` and ``body`` is a hybrid envelope
(:func:`bitnode.crypt.aes.hybrid_encrypt`) to the share's public key of the
zlib-compressed JSON ``{"format": 1, "owner", "key_id", "serial", "created",
"catalog": <subset>}``, with associated data binding owner, key id and
serial. So:

- only holders of the share's private key can read it (suppliers and
  non-readers learn nothing but its size);
- it is signed with the owner's master key, checked against the owner's
  published identity: neither a supplier nor another reader (who holds the
  share key too) can forge or alter it;
- the serial grows with every publish and readers take the highest one that
  verifies, so a supplier replaying an older copy is outvoted by the others.

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
from bitnode.crypt import aes, keys
from bitnode.crypt.keys import RsaPrivateKey, RsaPublicKey
from bitnode.errors import BadRequest
from bitnode.storage.catalog_format import COMPLETE, READABLE_EXPORT_FORMATS, parse_export

INDEX_FORMAT = 1
#: A stored index must fit in one Data packet with room to spare.
MAX_INDEX_BYTES = 8 * 1024 * 1024
#: The decompressed body is bounded too, so a hostile index cannot exhaust memory.
MAX_BODY_BYTES = 64 * 1024 * 1024
_AAD = b"bitnode-share-index-v1"


@dataclass(frozen=True)
class SignedIndex:
    """A stored index whose signature verified: who, which share, which serial, and the sealed body."""

    owner: str
    key_id: str
    serial: int
    body: bytes


def _canonical(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _aad(owner: str, key_id: str, serial: int) -> bytes:
    return _AAD + b"\x00" + owner.encode("utf-8") + b"\x00" + key_id.encode("utf-8") + b"\x00" + str(serial).encode()


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
    return hashlib.sha256(_canonical(subset)).hexdigest()


def seal_index(master: RsaPrivateKey, share_public: RsaPublicKey, owner: str, key_id: str, serial: int,
               created: float, subset: dict) -> bytes:
    """The stored form of an index (see the module docstring); BadRequest when it would be too large."""
    inner = {"format": INDEX_FORMAT, "owner": owner, "key_id": key_id, "serial": serial, "created": created,
             "catalog": subset}
    envelope = aes.hybrid_encrypt(share_public, zlib.compress(_canonical(inner), 6), aad=_aad(owner, key_id, serial))
    signed = _canonical({"format": INDEX_FORMAT, "owner": owner, "key_id": key_id, "serial": serial,
                         "body": base64.b64encode(envelope).decode("ascii")})
    signature = keys.sign(master, signed)
    stored = _canonical({"signed": signed.decode("utf-8"), "signature": base64.b64encode(signature).decode("ascii")})
    if len(stored) > MAX_INDEX_BYTES:
        raise BadRequest(f"the index of {key_id} is {len(stored)} bytes, more than {MAX_INDEX_BYTES}: "
                         "too many files in one share")
    return stored


def verify_index(owner_public: RsaPublicKey, data: bytes, owner: str, key_id: str) -> SignedIndex:
    """Check a stored index's signature and what it claims to be; BadRequest otherwise."""
    if len(data) > MAX_INDEX_BYTES:
        raise BadRequest("share index too large")
    try:
        outer = boundedjson.loads(data, "share index")
        signed = outer["signed"].encode("utf-8")
        signature = base64.b64decode(outer["signature"], validate=True)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise BadRequest(f"share index is not readable: {err}") from None
    if not keys.verify(owner_public, signed, signature):
        raise BadRequest(f"share index of {key_id} is not signed by {owner}")
    head = boundedjson.loads(signed, "share index head")
    if (head.get("format"), head.get("owner"), head.get("key_id")) != (INDEX_FORMAT, owner, key_id):
        raise BadRequest(f"share index is not the index of {key_id}")
    serial = head.get("serial")
    if isinstance(serial, bool) or not isinstance(serial, int) or serial < 1:
        raise BadRequest("share index has no valid serial")
    try:
        body = base64.b64decode(head["body"], validate=True)
    except (KeyError, ValueError, TypeError):
        raise BadRequest("share index has no body") from None
    return SignedIndex(owner, key_id, serial, body)


def open_index(share_private: RsaPrivateKey, signed: SignedIndex) -> dict:
    """Decrypt a verified index: ``{"serial", "created", "catalog"}``; BadRequest when it does not check out."""
    plain = aes.hybrid_decrypt(share_private, signed.body, aad=_aad(signed.owner, signed.key_id, signed.serial))
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
    if (not isinstance(inner, dict) or inner.get("format") != INDEX_FORMAT or inner.get("owner") != signed.owner
            or inner.get("key_id") != signed.key_id or inner.get("serial") != signed.serial):
        raise BadRequest("share index body does not match its signed header")
    catalog = inner.get("catalog")
    _check_catalog(catalog, signed.key_id)
    return {"serial": signed.serial, "created": inner.get("created"), "catalog": catalog}


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
