"""Wire formats and rules of key sharing (``Key`` packets) and key audits (``AuditKey`` packets).

The engine that sends and answers them is :mod:`bitnode.access.key_exchange`;
this module is pure functions and values (no I/O), testable alone.

Sharing
-------

:meth:`~bitnode.access.key_exchange.KeyExchange.share` sends one key of our
key store to another user in a ``Key`` packet.  The payload, version 1, is a hybrid envelope
(:func:`bitnode.crypt.aes.hybrid_encrypt`: a fresh AES-256-GCM key wrapped
with RSA-OAEP to the recipient's master key, the one in their identity) of
the UTF-8 JSON object::

    {"version": 1, "key_id": "alias$owner@host", "label": "...",
     "is_private": false, "fingerprint": "<sha256 hex of the public DER>",
     "pem": "-----BEGIN PUBLIC KEY-----..."}

The envelope's associated data is ``SHARE_DOMAIN | sender | 0x00 |
recipient``: a sealed key taken out of one packet cannot be replayed as
coming from someone else or to someone else.  The key id, the label and
whether it is private travel inside the encryption, so an observer of the
wire learns none of them.  The recipient decrypts, checks the policy below,
stores the key in its :class:`~bitnode.crypt.keystore.KeyStore` (written to
disk before it answers) and answers ``Ack`` with ``{"version": 1,
"key_id", "fingerprint", "is_private"}``; the sender checks the fingerprint
(it proves the recipient decrypted the right key) and only then reports
success.  Any refusal is a ``Fail`` whose payload is the reason; the sender
answers it as 409 (``PeerRefused``).

Who may share what (:func:`check_share_policy` on both sides, and the rules of
:class:`~bitnode.access.key_exchange.KeyExchange`):

- anyone may share a key with us: no friendship or earlier contact needed
  (the packet is signed, so the sharer is known);
- the private part of a master key is never shared (403); someone's master
  *public* key may be passed on by anyone, and every master key received is
  checked against its owner's published identity, so it cannot be forged;
- any other key the sharer holds may be passed on: its own keys, and keys of
  other users it received (share and group keys). For a key of someone
  else's namespace the sharer first asks the *reshare policy* registered for
  the key's alias prefix (service_shares registers ``share_``: the owner's
  rule for its shares); without one it is allowed (a group key passed on
  does not make a member: a group's brokers admit the members of its roster);
- the receiver stores a key of a third party's namespace only when it holds
  no *different* key under that id (so nobody can swap a key it holds); a key
  offered by its **owner** replaces a different one held under its id (the
  owner rotated it, or someone planted a fake one earlier: the owner's word
  wins), the old one being kept as a previous generation; nobody can give us
  a key of our own namespace unless a handler for that kind of key takes it
  (service_shares: a share proposed to its owner, ``share_create`` with
  ``owner_id``).

Audits
------

:meth:`~bitnode.access.key_exchange.KeyExchange.audit` asks a user to prove
it holds a key we know (at least its public half).  The request (``AuditKey``, JSON)::

    {"version": 1, "key_id", "mode": "private"|"public",
     "challenge": "<base64 of 32 random bytes>", "asker_proof": "<hex>"}

Every proof is computed over the *context* ``AUDIT_DOMAIN | auditor | 0x00 |
auditee | 0x00 | key_id | 0x00 | mode | 0x00 | challenge``, so an answer is
good for one audit only and cannot be replayed or turned into another one.

- ``asker_proof`` = HMAC-SHA256(K, ``b"ask" | context``) with ``K`` =
  SHA-256(``MAC_DOMAIN | public DER``).  The auditee answers only someone who
  knows the public key: nobody can probe which keys we hold by key id alone.
  (``K`` is not the public fingerprint, which is shown freely.)
- ``mode=private``: the auditee signs ``b"private" | context`` with the
  private key (RSA-PSS/SHA-256); we verify with the public key.  A signature
  over a domain-separated context of our random challenge leaks nothing and
  cannot be reused as any other signature (decrypting a challenge instead
  would make the auditee a decryption oracle for data wrapped to that key).
- ``mode=public``: the auditee answers HMAC-SHA256(K, ``b"public" |
  context``).  This proves it holds the public key material (not a secret:
  anyone holding the public key passes).

The answer is an ``AuditKey`` reply with the same packet id, ``{"version": 1,
"key_id", "mode", "proof": "<base64>"}``; a ``Fail`` when the auditee does not
hold the key (the same text whether it lacks it or the asker proof is
wrong).  The result is ``{"result": "OK"|"FAILED", "reason", ...}``: a
refusal or a wrong proof is ``FAILED``; no answer at all is an error
(``Timeout``/``Unavailable``, 503), because then nothing was learnt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from typing import Any

from bitnode import boundedjson, globalid
from bitnode.crypt import aes, keys
from bitnode.crypt.keys import RsaPrivateKey, RsaPublicKey
from bitnode.crypt.keystore import MASTER_ALIAS, validate_label
from bitnode.errors import BadRequest, Forbidden, NotFound

VERSION = 1
SHARE_DOMAIN = b"bitnode-key-share/1\x00"
AUDIT_DOMAIN = b"bitnode-key-audit/1\x00"
MAC_DOMAIN = b"bitnode-key-audit-mac/1\x00"
CHALLENGE_BYTES = 32
#: A Key payload larger than this is refused before any decryption.
MAX_KEY_PAYLOAD = 3 * keys.MAX_PEM_BYTES
MAX_AUDIT_PAYLOAD = 8 * 1024
MAX_TIMEOUT = 3600.0
MODES = ("private", "public")
NOT_HELD = "key {key_id} is not held here"


# -- policy ---------------------------------------------------------------------


def check_share_policy(key_id: str, sharer: str, is_private: bool) -> globalid.KeyId:
    """The parsed ``key_id``; Forbidden for the private part of a master key (see the module docstring).

    Whose namespace the key is in (the sharer's, the recipient's, a third
    party's) decides the rest, in :class:`~bitnode.access.key_exchange.KeyExchange`.
    """
    parsed = globalid.KeyId.parse(key_id)
    if parsed.alias == MASTER_ALIAS and is_private:
        raise Forbidden("the private part of a master key is never shared")
    return parsed


def check_timeout(timeout: float) -> float:
    """A positive number of seconds up to an hour."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise BadRequest(f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds")
    return float(timeout)


# -- the Key packet ----------------------------------------------------------------


@dataclass(frozen=True)
class KeyOffer:
    """A key as it travels in a ``Key`` packet (``pem`` is secret when private)."""

    key_id: str
    label: str
    is_private: bool
    fingerprint: str
    pem: bytes

    def __repr__(self) -> str:
        return f"<KeyOffer {self.key_id} private={self.is_private} {self.fingerprint[:16]}>"


def _share_aad(sender: str, recipient: str) -> bytes:
    return SHARE_DOMAIN + sender.encode("utf-8") + b"\x00" + recipient.encode("utf-8")


def seal_key(recipient_key: RsaPublicKey, sender: str, recipient: str, offer: KeyOffer) -> bytes:
    """The ``Key`` payload carrying ``offer`` to ``recipient`` (CPU work: run it in a thread)."""
    body = json.dumps({
        "version": VERSION, "key_id": offer.key_id, "label": offer.label, "is_private": offer.is_private,
        "fingerprint": offer.fingerprint, "pem": offer.pem.decode("ascii"),
    }, sort_keys=True).encode("utf-8")
    return aes.hybrid_encrypt(recipient_key, body, aad=_share_aad(sender, recipient))


def open_key(my_key: RsaPrivateKey, payload: bytes, sender: str, recipient: str) -> KeyOffer:
    """Decrypt and check a ``Key`` payload; BadRequest (``DecryptionError``, ``InvalidKey``) if unusable.

    The key material is parsed and its fingerprint compared with the one
    announced, so what is returned is a usable key.  CPU work: run it in a thread.
    """
    if not isinstance(payload, bytes) or len(payload) > MAX_KEY_PAYLOAD:
        raise BadRequest("Key payload is too large")
    body = aes.hybrid_decrypt(my_key, payload, aad=_share_aad(sender, recipient))
    data = json_object(body, "Key payload")
    if data.get("version") != VERSION:
        raise BadRequest(f"unknown Key payload version {data.get('version')!r}")
    key_id, label, is_private = data.get("key_id"), data.get("label", ""), data.get("is_private")
    fingerprint, pem = data.get("fingerprint"), data.get("pem")
    if not isinstance(is_private, bool) or not isinstance(pem, str) or not isinstance(fingerprint, str):
        raise BadRequest("Key payload is missing fields")
    key_id = str(globalid.KeyId.parse(key_id))
    validate_label(label)
    material = keys.private_from_pem(pem) if is_private else keys.public_from_pem(pem)
    if material.fingerprint() != fingerprint:
        raise BadRequest("the key does not match its announced fingerprint")
    return KeyOffer(key_id, label, is_private, fingerprint, pem.encode("ascii"))


def ack_payload(key_id: str, fingerprint: str, is_private: bool) -> bytes:
    """The ``Ack`` a recipient sends once the key is stored."""
    return json.dumps({"version": VERSION, "key_id": key_id, "fingerprint": fingerprint,
                       "is_private": is_private}, sort_keys=True).encode("utf-8")


def json_object(data: bytes, what: str) -> dict:
    """Parse ``data`` as a JSON object; BadRequest naming ``what`` otherwise."""
    try:
        value = boundedjson.loads(data, what)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{what} is not a JSON object")
    return value


# -- the AuditKey packet ----------------------------------------------------------------


def audit_context(auditor: str, auditee: str, key_id: str, mode: str, challenge: bytes) -> bytes:
    """The bytes every proof of one audit is computed over."""
    parts = (auditor.encode("utf-8"), auditee.encode("utf-8"), key_id.encode("utf-8"), mode.encode("ascii"))
    return AUDIT_DOMAIN + b"\x00".join(parts) + b"\x00" + challenge


def _mac_key(public: RsaPublicKey) -> bytes:
    return hashlib.sha256(MAC_DOMAIN + public.to_der()).digest()


def _mac(public: RsaPublicKey, label: bytes, context: bytes) -> bytes:
    return hmac.new(_mac_key(public), label + context, hashlib.sha256).digest()


@dataclass(frozen=True)
class AuditRequest:
    """One audit question, as sent by the auditor."""

    key_id: str
    mode: str
    challenge: bytes
    asker_proof: bytes

    def context(self, auditor: str, auditee: str) -> bytes:
        """This audit's :func:`audit_context`."""
        return audit_context(auditor, auditee, self.key_id, self.mode, self.challenge)


def make_audit_request(public: RsaPublicKey, auditor: str, auditee: str, key_id: str, mode: str,
                       challenge: bytes | None = None) -> AuditRequest:
    """A fresh audit of ``key_id`` (we hold ``public``) for ``auditee``."""
    if mode not in MODES:
        raise BadRequest(f"audit mode must be one of {', '.join(MODES)}")
    challenge = os.urandom(CHALLENGE_BYTES) if challenge is None else challenge
    context = audit_context(auditor, auditee, key_id, mode, challenge)
    return AuditRequest(key_id, mode, challenge, _mac(public, b"ask", context))


def encode_audit_request(request: AuditRequest) -> bytes:
    """The ``AuditKey`` request payload."""
    return json.dumps({"version": VERSION, "key_id": request.key_id, "mode": request.mode,
                       "challenge": base64.b64encode(request.challenge).decode("ascii"),
                       "asker_proof": request.asker_proof.hex()}, sort_keys=True).encode("utf-8")


def decode_audit_request(payload: bytes) -> AuditRequest:
    """Parse an ``AuditKey`` request; BadRequest if malformed."""
    if len(payload) > MAX_AUDIT_PAYLOAD:
        raise BadRequest("AuditKey payload is too large")
    data = json_object(payload, "AuditKey request")
    if data.get("version") != VERSION:
        raise BadRequest(f"unknown AuditKey version {data.get('version')!r}")
    mode = data.get("mode")
    if mode not in MODES:
        raise BadRequest("bad audit mode")
    challenge = _b64(data.get("challenge"), "challenge")
    if len(challenge) != CHALLENGE_BYTES:
        raise BadRequest("bad audit challenge")
    try:
        asker_proof = bytes.fromhex(data.get("asker_proof") or "")
    except (TypeError, ValueError):
        raise BadRequest("bad asker proof") from None
    return AuditRequest(str(globalid.KeyId.parse(data.get("key_id"))), mode, challenge, asker_proof)


def asker_knows_key(public: RsaPublicKey, request: AuditRequest, auditor: str, auditee: str) -> bool:
    """Whether the auditor's ``asker_proof`` was made with the same public key we hold."""
    expected = _mac(public, b"ask", request.context(auditor, auditee))
    return hmac.compare_digest(expected, request.asker_proof)


def answer_audit(request: AuditRequest, public: RsaPublicKey, private: RsaPrivateKey | None,
                 auditor: str, auditee: str) -> bytes:
    """The proof for ``request`` (a signature with ``private`` in private mode). CPU work: use a thread."""
    context = request.context(auditor, auditee)
    if request.mode == "private":
        if private is None:
            raise NotFound(NOT_HELD.format(key_id=request.key_id))
        return keys.sign(private, b"private" + context)
    return _mac(public, b"public", context)


def encode_audit_answer(request: AuditRequest, proof: bytes) -> bytes:
    """The ``AuditKey`` reply payload."""
    return json.dumps({"version": VERSION, "key_id": request.key_id, "mode": request.mode,
                       "proof": base64.b64encode(proof).decode("ascii")}, sort_keys=True).encode("utf-8")


def check_audit_answer(request: AuditRequest, public: RsaPublicKey, payload: bytes,
                       auditor: str, auditee: str) -> str:
    """Verify an ``AuditKey`` reply: "" when it proves possession, else why not."""
    try:
        data = json_object(payload, "AuditKey answer")
        proof = _b64(data.get("proof"), "proof")
    except BadRequest as err:
        return str(err)
    if data.get("version") != VERSION or data.get("key_id") != request.key_id or data.get("mode") != request.mode:
        return "the answer is about another audit"
    context = request.context(auditor, auditee)
    if request.mode == "private":
        ok = keys.verify(public, b"private" + context, proof)
    else:
        ok = hmac.compare_digest(_mac(public, b"public", context), proof)
    return "" if ok else "the proof does not verify"


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"bad {what}")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, binascii.Error):
        raise BadRequest(f"bad {what}") from None
