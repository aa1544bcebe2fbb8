"""Values of DHT records bound to an identity's master key: ``suppliers:`` and ``identity:``.

Such a record may be published by anyone (its customer, or a supplier keeping
it alive), so the DHT envelope's writer proves nothing. What counts is inside
the value, signed by the identity's RSA master key:

* the DHT key names that key: ``suppliers:<fingerprint>`` / ``identity:<fingerprint>``
  (lowercase hex SHA-256 of the public key DER, as :func:`bitnode.crypt.keys.key_fingerprint`),
  so nobody but the key's holder can write a valid value under it;
* a ``suppliers`` value (:data:`SUPPLIERS_FIELDS`)::

      {"customer_idurl": "http://id.net/alice.xml", "ecc_map": "2-of-4",
       "suppliers": ["http://id.net/bob.xml", "", ...], "revision": 7,
       "ttl": 86400, "signed_at": 1700000000,
       "customer_key": "<base64 DER of the master public key>",
       "signature": "<base64 RSA-PSS signature>"}

  The signature covers :data:`SUPPLIERS_CONTEXT` + the canonical JSON (sorted
  keys, no spaces, UTF-8) of every field but ``signature``. The customer signs a
  lifetime (``ttl``), not an expiry date: whoever stores a copy later gives it a
  fresh envelope living at most ``ttl`` seconds (see :func:`max_lifetime`), so
  the DHT entry's expiry is renewed by each re-store and the customer's
  signature stays valid however old it is. ``signed_at`` is when the customer
  signed (it re-signs at each of its own publishes);
* an ``identity`` value is ``{"idurl", "xml"}``: the identity document, signed
  by its own master key (the one the key names), whose primary IDURL is ``idurl``.

Which of two values is newer (:func:`order`) is decided by signed content only:
``(revision, signed_at, signature)`` for suppliers, ``(revision, xml)`` for
identities. Equal orders mean the same signed value.

Every check raises :class:`InvalidBoundValue` (a ``ValueError``);
:mod:`bitnode.dht.records` turns it into its own ``InvalidRecord``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from bitnode.crypt import keys
from bitnode.crypt.keys import RsaPrivateKey, RsaPublicKey
from bitnode.errors import BadRequest
from bitnode.globalid import is_canonical_idurl
from bitnode.userid.identity import Identity

SUPPLIERS = "suppliers"
IDENTITY = "identity"
BOUND_TYPES = frozenset({SUPPLIERS, IDENTITY})
SUPPLIERS_CONTEXT = b"bitnode-suppliers-record-v1\n"
SUPPLIERS_FIELDS = frozenset({"customer_idurl", "ecc_map", "suppliers", "revision", "ttl", "signed_at",
                              "customer_key", "signature"})
IDENTITY_FIELDS = frozenset({"idurl", "xml"})
#: Positions a suppliers record may list (a customer hires at most 16; room for growth).
MAX_SUPPLIERS = 64
MIN_TTL = 10
MAX_TTL = 30 * 24 * 3600
MAX_ECC_MAP = 16
MAX_REVISION = 2**63 - 1
_FINGERPRINT_LEN = 64
_HEX = frozenset("0123456789abcdef")


class InvalidBoundValue(ValueError):
    """A bound record's value with a bad shape, a foreign key or a bad signature."""


def key_for(record_type: str, public_key: RsaPublicKey | RsaPrivateKey) -> str:
    """The DHT key of ``record_type``'s record bound to ``public_key``."""
    if record_type not in BOUND_TYPES:
        raise InvalidBoundValue(f"{record_type!r} records are not bound to a key")
    return f"{record_type}:{keys.key_fingerprint(public_key)}"


def suppliers_key_of(value: dict) -> str:
    """The DHT key a ``suppliers`` value belongs under (from the key it carries; not a check of it)."""
    try:
        public = keys.public_from_der(base64.b64decode(value["customer_key"], validate=True))
    except (KeyError, TypeError, ValueError, binascii.Error, BadRequest):
        raise InvalidBoundValue("value.customer_key is not readable") from None
    return key_for(SUPPLIERS, public)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _signing_bytes(value: dict) -> bytes:
    return SUPPLIERS_CONTEXT + _canonical({k: v for k, v in value.items() if k != "signature"})


def sign_suppliers(master: RsaPrivateKey, customer_idurl: str, ecc_map: str, suppliers: list[str], revision: int,
                   ttl: int, signed_at: int) -> dict:
    """A ``suppliers`` value signed with the customer's master key (RSA: call it off the reactor)."""
    value = {"customer_idurl": customer_idurl, "ecc_map": ecc_map, "suppliers": list(suppliers),
             "revision": int(revision), "ttl": int(ttl), "signed_at": int(signed_at),
             "customer_key": base64.b64encode(master.public_key().to_der()).decode("ascii")}
    signature = keys.sign(master, _signing_bytes(value))
    value["signature"] = base64.b64encode(signature).decode("ascii")
    check_value(SUPPLIERS, key_for(SUPPLIERS, master), value)
    return value


def _is_int(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _key_fingerprint(key: str, record_type: str) -> str:
    namespace, _, fingerprint = key.partition(":")
    if namespace != record_type or len(fingerprint) != _FINGERPRINT_LEN or not set(fingerprint) <= _HEX:
        raise InvalidBoundValue(f"{record_type} keys must be {record_type}:<sha-256 hex of the master key>")
    return fingerprint


def check_value(record_type: str, key: str, value: Any) -> None:
    """Shape, key binding and master-key signature of a bound value; raises :class:`InvalidBoundValue`."""
    if record_type == SUPPLIERS:
        check_suppliers(key, value)
    elif record_type == IDENTITY:
        identity_of(key, value)
    else:
        raise InvalidBoundValue(f"{record_type!r} records are not bound to a key")


def check_suppliers(key: str, value: Any) -> bytes:
    """Check a ``suppliers`` value against its DHT key; the customer's master public key (DER)."""
    fingerprint = _key_fingerprint(key, SUPPLIERS)
    if not isinstance(value, dict) or set(value) != SUPPLIERS_FIELDS:
        raise InvalidBoundValue(f"suppliers value must have exactly: {', '.join(sorted(SUPPLIERS_FIELDS))}")
    idurl, ecc_map, suppliers = value["customer_idurl"], value["ecc_map"], value["suppliers"]
    if not isinstance(idurl, str) or not is_canonical_idurl(idurl):
        raise InvalidBoundValue("value.customer_idurl must be a canonical IDURL")
    if not isinstance(ecc_map, str) or not 0 < len(ecc_map) <= MAX_ECC_MAP or not ecc_map.isprintable():
        raise InvalidBoundValue(f"value.ecc_map must be a short string like 2-of-4 (at most {MAX_ECC_MAP})")
    if not isinstance(suppliers, list) or len(suppliers) > MAX_SUPPLIERS or not all(
            isinstance(s, str) and (s == "" or is_canonical_idurl(s)) for s in suppliers):
        raise InvalidBoundValue(f"value.suppliers must hold at most {MAX_SUPPLIERS} canonical IDURLs or ''")
    if not _is_int(value["revision"], 0, MAX_REVISION) or not _is_int(value["signed_at"], 0, MAX_REVISION):
        raise InvalidBoundValue("value.revision and value.signed_at must be ints >= 0")
    if not _is_int(value["ttl"], MIN_TTL, MAX_TTL):
        raise InvalidBoundValue(f"value.ttl must be an int of {MIN_TTL}..{MAX_TTL} seconds")
    try:
        der = base64.b64decode(value["customer_key"], validate=True)
        signature = base64.b64decode(value["signature"], validate=True)
    except (TypeError, ValueError, binascii.Error):
        raise InvalidBoundValue("value.customer_key or value.signature is not readable") from None
    # The fingerprint is the SHA-256 of the DER the customer exported: compare before parsing anything.
    if hashlib.sha256(der).hexdigest() != fingerprint:
        raise InvalidBoundValue("value.customer_key is not the key its DHT key names")
    if not keys.verify_der(der, _signing_bytes(value), signature):
        raise InvalidBoundValue("value.signature is not the customer's (or its key is not acceptable)")
    return der


def identity_of(key: str, value: Any) -> Identity:
    """Check an ``identity`` value against its DHT key; the identity it carries."""
    fingerprint = _key_fingerprint(key, IDENTITY)
    if not isinstance(value, dict) or set(value) != IDENTITY_FIELDS:
        raise InvalidBoundValue("identity value must have exactly: idurl, xml")
    if not isinstance(value["idurl"], str) or not isinstance(value["xml"], str):
        raise InvalidBoundValue("value.idurl and value.xml must be strings")
    try:
        identity = Identity.from_xml(value["xml"].encode("utf-8"))
    except (BadRequest, ValueError) as err:
        raise InvalidBoundValue(f"value.xml is not an identity document: {err}") from None
    if identity.fingerprint() != fingerprint:
        raise InvalidBoundValue("the identity's key is not the key its DHT key names")
    if identity.idurl != value["idurl"]:
        raise InvalidBoundValue("value.idurl is not the identity's IDURL")
    if not identity.verify():
        raise InvalidBoundValue("the identity document is not signed by its key")
    return identity


def order(record_type: str, value: dict) -> tuple:
    """What makes one valid value newer than another (equal: the same signed value)."""
    if record_type == SUPPLIERS:
        return value["revision"], value["signed_at"], value["signature"]
    revision = Identity.from_xml(value["xml"].encode("utf-8")).revision
    return revision, value["xml"]


def max_lifetime(record_type: str, value: dict) -> int:
    """The longest an envelope carrying ``value`` may live (suppliers: the ttl the customer signed)."""
    return value["ttl"] if record_type == SUPPLIERS else MAX_TTL
