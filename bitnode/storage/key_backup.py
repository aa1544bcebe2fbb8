"""My other keys, and small records other services ask to keep, sealed to my master key for the catalog backup.

Files uploaded under a share key (``share_<hex>$me``) or a group key can only
be decrypted with that key, so a catalog restored on a new machine is worth
little without them. The catalog backup (:mod:`bitnode.storage.catalog_backup`)
therefore carries, in its signed manifest, a *key backup*: every key of my key
store but the master key (private PEM when I hold the private half, else the
public one, with its label), plus named *parts* — small JSON records a
service registers with service_backups (service_shares keeps its share records
there, so that an owner goes on publishing its shares after a recovery).

The plaintext document (never stored as is), format 1::

    {"format": 1, "owner": "<my global id>",
     "keys": [{"key_id": str, "label": str, "is_private": bool, "pem": str}, ...],
     "parts": {"<name>": <any JSON value>, ...}}

The stored form, format 1 (canonical JSON, bytes)::

    {"format": 1, "owner": "<my global id>",
     "sealed": base64(hybrid_encrypt(master public key, zlib(document), aad=HEADER + owner)),
     "signature": base64(RSA-PSS(master private key, HEADER + owner + "\\0" + sealed))}

``sealed`` is the RSA-OAEP + AES-256-GCM envelope of :func:`bitnode.crypt.aes.hybrid_encrypt`:
only the master private key opens it, any changed byte fails its tag. The
signature makes it mine: anyone can encrypt to my public key, only I can sign,
so a supplier cannot slip me keys of its own making even outside the (also
signed) manifest. Key creation times are not kept: a restored key is created
again at restore time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from typing import Any

from bitnode import boundedjson
from bitnode.crypt import aes, keys
from bitnode.crypt.keys import RsaPrivateKey
from bitnode.errors import BadRequest, Conflict

FORMAT = 1
HEADER = b"bitnode-key-backup\x001\x00"
#: A document larger than this once decompressed is refused (about 8000 keys of 2048 bits).
MAX_DOCUMENT = 16 * 1024 * 1024


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def collect(keystore: Any, parts: dict | None = None) -> dict:
    """The plaintext document of ``keystore`` (every key but the master) and ``parts``."""
    entries = []
    for info in keystore.list():
        if info.key_id == keystore.master_key_id:
            continue  # the one key the backup is sealed with; others' master (public) keys go too
        shown = keystore.as_dict(info, include_private=True)
        private = bool(info.is_private and shown.get("private"))
        entries.append({"key_id": info.key_id, "label": info.label, "is_private": private,
                        "pem": shown["private"] if private else shown["public"]})
    return {"format": FORMAT, "owner": keystore.owner, "keys": entries, "parts": dict(parts or {})}


def digest(document: dict) -> str:
    """SHA-256 (hex) of the document's canonical form: equal documents, equal digests."""
    return hashlib.sha256(_canonical(document)).hexdigest()


def seal(master: RsaPrivateKey, document: dict) -> bytes:
    """The stored form of ``document`` (see the module docstring). Worker thread: RSA work."""
    owner = _check_document(document)["owner"]
    sealed = aes.hybrid_encrypt(master.public_key(), zlib.compress(_canonical(document), 6),
                                aad=HEADER + owner.encode("utf-8"))
    signature = keys.sign(master, _signed_bytes(owner, sealed))
    return _canonical({"format": FORMAT, "owner": owner, "sealed": base64.b64encode(sealed).decode("ascii"),
                       "signature": base64.b64encode(signature).decode("ascii")})


def open_sealed(master: RsaPrivateKey, data: bytes, owner: str) -> dict:
    """The document sealed in ``data`` by :func:`seal`; BadRequest when it is not mine or not intact. Worker thread."""
    try:
        outer = boundedjson.loads(data, "key backup")
        if not isinstance(outer, dict):
            raise ValueError("not a JSON object")
        version, stated_owner = outer.get("format"), outer.get("owner")
        sealed = base64.b64decode(outer["sealed"], validate=True)
        signature = base64.b64decode(outer["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as err:
        raise BadRequest(f"key backup is not readable: {err}") from None
    if version != FORMAT:
        raise BadRequest(f"key backup has unknown format {version!r}")
    if stated_owner != owner:
        raise BadRequest(f"key backup belongs to {stated_owner!r}, not {owner}")
    if not keys.verify(master.public_key(), _signed_bytes(owner, sealed), signature):
        raise BadRequest("key backup is not signed by my master key")
    packed = aes.hybrid_decrypt(master, sealed, aad=HEADER + owner.encode("utf-8"))
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(packed, MAX_DOCUMENT)
        if inflater.unconsumed_tail:
            raise BadRequest(f"key backup is larger than {MAX_DOCUMENT} bytes")
        document = json.loads(text.decode("utf-8"))
    except (zlib.error, ValueError) as err:
        raise BadRequest(f"key backup does not unpack: {err}") from None
    if _check_document(document)["owner"] != owner:
        raise BadRequest("key backup names another owner inside")
    return document


def restore_keys(keystore: Any, document: dict) -> dict:
    """Put the document's keys into ``keystore``; keys already there are left as they are.

    Raises nothing for one bad key: returns ``{"restored": [key ids],
    "present": n, "failed": [{"key_id", "error"}]}`` (a key id that holds
    another key here is a failure, never overwritten).
    """
    outcome: dict = {"restored": [], "present": 0, "failed": []}
    for entry in _check_document(document)["keys"]:
        key_id = entry["key_id"]
        if key_id == keystore.master_key_id:
            continue
        held = keystore.has(key_id) and (keystore.get(key_id).is_private or not entry["is_private"])
        try:
            if entry["is_private"]:
                keystore.add_private(key_id, entry["pem"], entry["label"])
            else:
                keystore.add_public(key_id, entry["pem"], entry["label"])
        except (BadRequest, Conflict) as err:
            outcome["failed"].append({"key_id": key_id, "error": str(err)})
            continue
        if held:
            outcome["present"] += 1
        else:
            outcome["restored"].append(key_id)
    return outcome


def _signed_bytes(owner: str, sealed: bytes) -> bytes:
    return HEADER + owner.encode("utf-8") + b"\x00" + sealed


def _check_document(document: Any) -> dict:
    """``document`` if it has the shape of format 1; BadRequest otherwise."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BadRequest("key backup document has an unknown format")
    if not isinstance(document.get("owner"), str) or not isinstance(document.get("parts"), dict):
        raise BadRequest("key backup document has no owner or parts")
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise BadRequest("key backup document has no key list")
    for entry in entries:
        if (not isinstance(entry, dict) or not isinstance(entry.get("key_id"), str)
                or not isinstance(entry.get("label"), str) or not isinstance(entry.get("is_private"), bool)
                or not isinstance(entry.get("pem"), str)):
            raise BadRequest("key backup document has a malformed key entry")
    return document


class BackupParts:
    """Named records services keep in the key backup: collected at every backup, handed back after a restore.

    A service registers ``collect() -> JSON value`` and ``restore(value)``.
    A part found in a restored backup whose service has not registered (yet)
    is *pending*: it goes on into the next backups as it was, is handed to
    its service when it registers, and ``on_pending(pending)`` is called on
    every change so the owner can persist it across restarts.
    """

    def __init__(self) -> None:
        self.pending: dict[str, Any] = {}
        self.on_pending: Any = None
        self._parts: dict[str, tuple[Any, Any]] = {}

    def register(self, name: str, collect_part: Any, restore_part: Any) -> Any:
        """Register part ``name`` (a pending value is restored at once); returns unregister."""
        if not isinstance(name, str) or not name:
            raise BadRequest("a backup part needs a name")
        entry = (collect_part, restore_part)
        self._parts[name] = entry
        if name in self.pending:
            self._hand_over({name: self.pending[name]})

        def unregister() -> None:
            if self._parts.get(name) is entry:
                del self._parts[name]

        return unregister

    def collect(self) -> dict:
        """Every part's current value, pending ones included."""
        values = dict(self.pending)
        for name, (collect_part, _) in self._parts.items():
            values[name] = collect_part()
        return values

    def restore(self, values: dict) -> dict:
        """Hand restored values to their services; ``{name: "restored" | "pending" | "failed: ..."}``."""
        return self._hand_over(values)

    def load_pending(self, values: dict) -> None:
        """Pending values kept from an earlier run; those whose service is registered are handed over."""
        self.pending.update({n: v for n, v in values.items() if n not in self.pending})
        self._hand_over({n: v for n, v in values.items() if n in self._parts})

    def _hand_over(self, values: dict) -> dict:
        outcome: dict[str, str] = {}
        before = dict(self.pending)
        for name, value in values.items():
            entry = self._parts.get(name)
            if entry is None:
                self.pending[name] = value
                outcome[name] = "pending"
                continue
            self.pending.pop(name, None)
            try:
                entry[1](value)
                outcome[name] = "restored"
            except Exception as err:  # noqa: BLE001 - one service's bad record must not stop the restore
                outcome[name] = f"failed: {err}"
        if self.pending != before and self.on_pending is not None:
            self.on_pending(dict(self.pending))
        return outcome
