"""Signed DHT records: envelope, Ed25519 signing, type shapes and overwrite rules.

A record is a JSON object::

    {"version": 1, "key": "nickname:alice", "record_type": "nickname",
     "value": {"idurl": "...", "nickname": "alice"},
     "writer_pubkey": "<base64 of the raw 32-byte Ed25519 key>",
     "created": 1700000000, "expires": 1700086400, "seq": 3,
     "signature": "<base64 Ed25519 signature>"}

The signature covers the canonical JSON (sorted keys, no spaces, UTF-8) of every
field except ``signature``, prefixed with :data:`SIGNING_CONTEXT`. Times are
whole seconds (ints), so the canonical form is the same in any language.

Keys are namespaced strings: ``nickname:``, ``identity:`` and ``suppliers:``
keys must carry records of that type; ``skip_validation`` records may use any
other key (``app:x``, or a plain ``abcd`` as in the API examples). A
``nickname:X`` record must have ``value.nickname == X``. ``suppliers`` and
``identity`` records are *key-bound* (:data:`KEY_BOUND_TYPES`, see
:mod:`bitnode.dht.bound_values`): the key names the fingerprint of an
identity's master key, the value is signed by that key, and anyone may publish
a copy (a customer's suppliers keep its record alive), so their envelope
writer proves nothing.

The writer's key is an Ed25519 private key, given either as a
:class:`bitnode.crypt.fastsign.Ed25519PrivateKey` (what the identity service
holds) or as a raw pycryptodome ``EccKey``; the DHT never creates or stores it.

Overwrite rules (:func:`check_replace`), for an unexpired stored record:

* key-bound types: the signed value decides, whoever publishes it: a newer one
  (:func:`bound_values.order`) replaces; the same signed value replaces only
  with a later ``expires`` (a re-store renews it); an older one is refused. Its
  envelope may live at most what the value allows
  (:func:`bound_values.max_lifetime`: a suppliers value's signed ``ttl``).
* same writer key: a strictly higher ``seq`` replaces; the identical record is
  accepted again (a refresh); anything else is refused.
* different writer, ``nickname``: refused — the first owner holds the key
  until its record expires.
* different writer, ``skip_validation``: last writer wins — a strictly newer
  ``created`` replaces (equal ``created``: the larger signature wins, so every
  node picks the same one).

An expired stored record is replaced by any valid record.

First-come records (:data:`FIRST_COME_TYPES`, ``nickname``): whoever claims the
name first holds it. ``created`` is chosen by the writer, so it can never
decide *who* was first: a node keeps the record it stored first, a node refuses
to start holding a first-come record whose ``created`` is older than a small
age (:func:`check_fresh`; the owner re-signs its record with a fresh
``created`` whenever it pushes it), and a reader that found several writers'
copies takes the writer most nodes returned (:func:`pick_best`).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import asdict, dataclass
from typing import Any

from Crypto.PublicKey import ECC
from Crypto.Signature import eddsa

from bitnode.crypt.fastsign import Ed25519PrivateKey
from bitnode.dht import bound_values
from bitnode.dht.ids import key_to_id
from bitnode.errors import BadRequest, Conflict

RECORD_VERSION = 1
SIGNING_CONTEXT = b"bitnode-dht-record-v1\n"
NICKNAME = "nickname"
IDENTITY = bound_values.IDENTITY
SUPPLIERS = bound_values.SUPPLIERS
SKIP_VALIDATION = "skip_validation"
RECORD_TYPES = frozenset({NICKNAME, IDENTITY, SUPPLIERS, SKIP_VALIDATION})
#: first claim wins; ``created`` must be fresh when a node first stores one (see the module docstring)
FIRST_COME_TYPES = frozenset({NICKNAME})
#: bound to an identity's master key: any publisher, the signed value decides (see :mod:`bitnode.dht.bound_values`)
KEY_BOUND_TYPES = bound_values.BOUND_TYPES
#: typed namespaces (``type:name`` keys); only first-come ones are held by their first writer
FIRST_OWNER_TYPES = FIRST_COME_TYPES | KEY_BOUND_TYPES
MAX_KEY_LEN = 256
MAX_RECORD_BYTES = 6144
MAX_TTL = 30 * 24 * 3600
MAX_CLOCK_SKEW = 600
#: default for how old ``created`` may be when a node first stores a first-come record (a setting in the service)
FIRST_COME_MAX_AGE = 600.0

_FIELDS = ("version", "key", "value", "record_type", "writer_pubkey", "created", "expires", "seq", "signature")


class InvalidRecord(BadRequest):
    """A record with a bad shape, a bad signature, or out-of-range times."""


class StaleRecord(InvalidRecord):
    """A first-come record whose ``created`` lies too far in the past for a node to start holding it."""


class RecordConflict(Conflict):
    """A valid record that may not replace the one already stored (e.g. nickname taken)."""


@dataclass(frozen=True)
class Record:
    """A signed DHT record (see the module docstring for the wire form)."""

    key: str
    value: Any
    record_type: str
    writer_pubkey: str
    created: int
    expires: int
    seq: int
    signature: str
    version: int = RECORD_VERSION

    @property
    def key_id(self) -> int:
        """The DHT id the key maps to."""
        return key_to_id(self.key)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-safe envelope."""
        return asdict(self)

    def to_json(self) -> str:
        """Canonical JSON of the whole envelope."""
        return _canonical(self.to_dict()).decode("utf-8")

    def signing_bytes(self) -> bytes:
        """What the signature covers."""
        body = self.to_dict()
        del body["signature"]
        return SIGNING_CONTEXT + _canonical(body)

    def is_expired(self, now: float) -> bool:
        """True once ``now`` has reached ``expires``."""
        return now >= self.expires

    @classmethod
    def from_dict(cls, data: Any) -> Record:
        """Parse the envelope's structure (not the signature or value shape: see :func:`verify`)."""
        if not isinstance(data, dict) or set(data) != set(_FIELDS):
            raise InvalidRecord(f"record must be an object with exactly the fields {', '.join(_FIELDS)}")
        for name in ("key", "record_type", "writer_pubkey", "signature"):
            if not isinstance(data[name], str):
                raise InvalidRecord(f"record {name} must be a string")
        for name in ("version", "created", "expires", "seq"):
            if type(data[name]) is not int:
                raise InvalidRecord(f"record {name} must be an int")
        return cls(**{name: data[name] for name in _FIELDS})


def _canonical(obj: Any) -> bytes:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
            "utf-8"
        )
    except (TypeError, ValueError) as exc:
        raise InvalidRecord(f"record is not plain JSON: {exc}") from None


SignerKey = Ed25519PrivateKey | ECC.EccKey


def generate_signing_key() -> ECC.EccKey:
    """A new Ed25519 private key (OS randomness: keys are not simulation state). For tests and tools."""
    return ECC.generate(curve="ed25519")


def _ecc(key: SignerKey) -> ECC.EccKey:
    """The pycryptodome key inside either accepted key type; refuses anything but an Ed25519 private key."""
    raw = key.raw if isinstance(key, Ed25519PrivateKey) else key
    if not isinstance(raw, ECC.EccKey) or raw.curve != "Ed25519" or not raw.has_private():
        raise BadRequest("the DHT signer must be an Ed25519 private key")
    return raw


def public_key_b64(key: SignerKey) -> str:
    """Base64 of the raw 32-byte public key."""
    return base64.b64encode(_ecc(key).public_key().export_key(format="raw")).decode("ascii")


def sign_record(
    signer_key: SignerKey, key: str, value: Any, record_type: str, created: int, expires: int, seq: int
) -> Record:
    """Build, sign and check a record; raises :class:`InvalidRecord` if it would not verify."""
    unsigned = Record(key, value, record_type, public_key_b64(signer_key), int(created), int(expires), seq, "")
    signature = eddsa.new(_ecc(signer_key), "rfc8032").sign(unsigned.signing_bytes())
    record = Record(**{**unsigned.to_dict(), "signature": base64.b64encode(signature).decode("ascii")})
    verify(record, now=created)
    return record


def verify(record: Record, now: float) -> None:
    """Check version, key namespace, value shape, times, size and signature; raises :class:`InvalidRecord`."""
    if record.version != RECORD_VERSION:
        raise InvalidRecord(f"unsupported record version {record.version}")
    check_key(record.key, record.record_type)
    check_shape(record.record_type, record.key, record.value)
    if record.seq < 0:
        raise InvalidRecord("seq must be >= 0")
    if record.created > now + MAX_CLOCK_SKEW:
        raise InvalidRecord("record created in the future")
    if not record.created < record.expires <= record.created + MAX_TTL:
        raise InvalidRecord(f"expires must be after created and at most {MAX_TTL}s later")
    if record.record_type in KEY_BOUND_TYPES:
        lifetime = bound_values.max_lifetime(record.record_type, record.value)
        if record.expires - record.created > lifetime:
            raise InvalidRecord(f"the value allows its record to live at most {lifetime}s")
    if len(record.to_json().encode("utf-8")) > MAX_RECORD_BYTES:
        raise InvalidRecord(f"record larger than {MAX_RECORD_BYTES} bytes")
    try:
        raw_key = base64.b64decode(record.writer_pubkey, validate=True)
        raw_sig = base64.b64decode(record.signature, validate=True)
        public = eddsa.import_public_key(raw_key)
        eddsa.new(public, "rfc8032").verify(record.signing_bytes(), raw_sig)
    except (ValueError, TypeError, binascii.Error):
        raise InvalidRecord("bad record signature or writer key") from None


def check_key(key: Any, record_type: Any) -> None:
    """Typed keys are ``type:name``; those namespaces are reserved for their record type."""
    if not isinstance(record_type, str) or record_type not in RECORD_TYPES:
        raise InvalidRecord(f"unknown record type {record_type!r}")
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LEN or not key.isprintable():
        raise InvalidRecord(f"key must be a printable string of 1..{MAX_KEY_LEN} characters")
    namespace, sep, name = key.partition(":")
    if record_type in FIRST_OWNER_TYPES and not (sep and name):
        raise InvalidRecord(f"{record_type} keys must look like {record_type}:name")
    if record_type in FIRST_OWNER_TYPES and namespace != record_type:
        raise InvalidRecord(f"{record_type} records must use {record_type}: keys")
    if record_type == SKIP_VALIDATION and sep and namespace in FIRST_OWNER_TYPES:
        raise InvalidRecord(f"{namespace}: keys need {namespace} records")


def _need_str(value: dict, name: str, allow_empty: bool = False) -> None:
    item = value.get(name)
    if not isinstance(item, str) or (not allow_empty and not item):
        raise InvalidRecord(f"value.{name} must be a non-empty string")


def check_shape(record_type: str, key: str, value: Any) -> None:
    """Validate the value of a typed record; raises :class:`InvalidRecord`."""
    if not isinstance(record_type, str) or record_type not in RECORD_TYPES:
        raise InvalidRecord(f"unknown record type {record_type!r}")
    if record_type == SKIP_VALIDATION:
        _canonical(value)
        return
    if record_type in KEY_BOUND_TYPES:
        try:
            bound_values.check_value(record_type, key, value)
        except bound_values.InvalidBoundValue as err:
            raise InvalidRecord(str(err)) from None
        return
    if not isinstance(value, dict) or set(value) != {"idurl", "nickname"}:
        raise InvalidRecord(f"{record_type} value must have exactly: idurl, nickname")
    _need_str(value, "idurl")
    _need_str(value, "nickname")
    if key != f"{NICKNAME}:{value['nickname']}":
        raise InvalidRecord("nickname key must be nickname:<value.nickname>")


def parse_and_verify(data: Any, now: float) -> Record:
    """:meth:`Record.from_dict` followed by :func:`verify`."""
    record = Record.from_dict(data)
    verify(record, now)
    return record


def check_fresh(record: Record, now: float, max_age: float = FIRST_COME_MAX_AGE) -> None:
    """Refuse a first-come record created more than ``max_age`` seconds ago; raises :class:`StaleRecord`.

    A backdated ``created`` must not buy a claim: a node only starts holding a
    first-come record that was signed just now (other types are not checked).
    """
    if record.record_type in FIRST_COME_TYPES and record.created < now - max_age:
        raise StaleRecord(f"{record.key} was created {int(now - record.created)}s ago; a first-come record "
                          f"must be at most {int(max_age)}s old when a node first stores it")


def check_replace(old: Record | None, new: Record, now: float) -> bool:
    """May ``new`` be stored where ``old`` is? True: store it; False: it is the same record.

    Raises :class:`RecordConflict` when the overwrite rules forbid it.
    """
    if old is None or old.is_expired(now):
        return True
    if new == old:
        return False
    if new.record_type in KEY_BOUND_TYPES and old.record_type == new.record_type:
        newer, older = bound_values.order(new.record_type, new.value), bound_values.order(old.record_type, old.value)
        if newer > older:
            return True
        if newer == older:
            return new.expires > old.expires  # the same signed value: a later expiry renews it
        raise RecordConflict(f"an older value for {new.key}: a newer one is stored")
    if new.writer_pubkey == old.writer_pubkey:
        if new.seq > old.seq:
            return True
        raise RecordConflict(f"stale record for {new.key}: seq {new.seq} <= {old.seq}")
    if old.record_type in FIRST_OWNER_TYPES or new.record_type in FIRST_OWNER_TYPES:
        raise RecordConflict(f"{new.key} is held by another writer until {old.expires}")
    if (new.created, new.signature) > (old.created, old.signature):
        return True
    raise RecordConflict(f"an equal or newer record is stored for {new.key}")


def pick_best(records: list[Record], now: float) -> Record | None:
    """Choose among copies of one key found on several nodes (one copy per node); expired ones are ignored.

    * first-come types: the writer whose record the most nodes returned; ties go to
      the earliest ``created``, then the smaller writer key. ``created`` alone never
      decides: it is the writer's claim (see :func:`check_fresh`).
    * key-bound types: the newest signed value (:func:`bound_values.order`),
      whoever published it, then the latest ``expires`` (that copy is returned).
    * ``skip_validation``: the newest wins, as in :func:`check_replace`.

    Of the chosen writer's copies, the one with the highest ``seq`` is returned.
    """
    live = [r for r in records if not r.is_expired(now)]
    if not live:
        return None
    if any(r.record_type in KEY_BOUND_TYPES for r in live):
        return max(live, key=lambda r: (bound_values.order(r.record_type, r.value), r.expires))
    newest_per_writer: dict[str, Record] = {}
    for r in live:
        cur = newest_per_writer.get(r.writer_pubkey)
        if cur is None or (r.seq, r.created) > (cur.seq, cur.created):
            newest_per_writer[r.writer_pubkey] = r
    if any(r.record_type in FIRST_COME_TYPES for r in live):
        return newest_per_writer[_pick_first_come(live)]
    return max(newest_per_writer.values(), key=lambda r: (r.created, r.signature))


def _pick_first_come(live: list[Record]) -> str:
    """The writer key most copies name (then the earliest created, then the smaller key)."""
    copies: dict[str, int] = {}
    first_created: dict[str, int] = {}
    for r in live:
        copies[r.writer_pubkey] = copies.get(r.writer_pubkey, 0) + 1
        first_created[r.writer_pubkey] = min(first_created.get(r.writer_pubkey, r.created), r.created)
    return min(copies, key=lambda w: (-copies[w], first_created[w], w))

