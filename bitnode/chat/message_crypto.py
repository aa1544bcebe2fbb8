"""End-to-end encryption of chat messages: sealed for one recipient, signed by the sender.

A message is sealed with a fresh AES-256-GCM key that is wrapped with the
recipient's RSA public key (RSA-OAEP/SHA-256), using the hybrid envelope of
:func:`bitnode.crypt.aes.hybrid_encrypt`; the whole record is then signed with
the sender's RSA master key (RSA-PSS/SHA-256). Only the recipient can read
it, and any changed byte (header, wrapped key, ciphertext or signature) makes
:func:`open_message` refuse it.

Sealed message, format version 1 (integers big-endian, text UTF-8)::

    version        1 byte   = 0x01
    message_type   u8 length  + text   ("private_message", "group_message", "delivery_receipt")
    sender         u16 length + text   the sender's global id
    recipient      u16 length + text   the recipient's global id (or a group key id)
    message_id     u8 length  + text   [A-Za-z0-9_-], at most 128 characters
    time           8 bytes  IEEE-754 double, seconds since the epoch (sender's clock)
    ciphertext     u32 length + hybrid envelope of the JSON-encoded data
    signature      u16 length + RSA-PSS/SHA-256 signature

Everything before the ciphertext (the *header*) is the associated data of the
AES-GCM encryption, so the ciphertext cannot be moved under another header
even without looking at the signature. The signature covers every byte before
the signature field: header and ciphertext. :func:`open_message` checks, in
order: the format, that the recipient is the one expected, the signature with
the sender's public key, then decrypts; the plaintext is the message data as
JSON (a JSON object for chat messages).

:func:`peek` reads the header without any key, so a receiver can learn whose
public key it needs before verifying.

Format version 2 (group messages, :func:`seal_with_secret`) has the same
layout; only the ciphertext differs: a group's messages are sealed with the
group's current *generation* key, a 32-byte AES key every member holds
(:mod:`bitnode.access.group_roster`), instead of an RSA key of one recipient::

    ciphertext     u32 length + (generation u32 + AES-256-GCM envelope of the JSON data)

The generation is part of the signed ciphertext and of the AES-GCM associated
data (header + generation), so it cannot be changed either. A broker that
holds no group key checks the sender's signature with :func:`verify_sealed`.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from bitnode import boundedjson
from bitnode.crypt import aes, keys
from bitnode.crypt.keys import DecryptionError, RsaPrivateKey, RsaPublicKey
from bitnode.errors import BadRequest

FORMAT_VERSION = 1
#: Sealed with a shared secret (a group's generation key) instead of the recipient's RSA key.
SECRET_FORMAT_VERSION = 2
PRIVATE_MESSAGE = "private_message"
GROUP_MESSAGE = "group_message"
#: A recipient's note to the sender that queued messages reached it (data: ``{"receipt_for": [ids]}``).
DELIVERY_RECEIPT = "delivery_receipt"
MESSAGE_TYPES = (PRIVATE_MESSAGE, GROUP_MESSAGE, DELIVERY_RECEIPT)
#: Largest sealed message :func:`peek` and :func:`open_message` accept.
MAX_SEALED_BYTES = 16 * 1024 * 1024
#: Sealing adds the wrapped key, the signature and the header to the JSON data.
SEAL_OVERHEAD = 16 * 1024
MAX_MESSAGE_ID = 128
_MESSAGE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,%d}\Z" % MAX_MESSAGE_ID)
_TIME = struct.Struct(">d")
_GENERATION = struct.Struct(">I")


class MessageRejected(BadRequest):
    """A sealed message that is malformed, not for us, not signed by its sender, or tampered with."""


@dataclass(frozen=True)
class MessageHeader:
    """What a sealed message says about itself before it is verified (see :func:`peek`)."""

    message_type: str
    sender: str
    recipient: str
    message_id: str
    time: float


@dataclass(frozen=True)
class OpenedMessage:
    """A verified and decrypted message."""

    header: MessageHeader
    data: Any



def normalize_data(data: Any) -> dict:
    """Message content: a JSON object; a string is wrapped as ``{"message": text}``."""
    if isinstance(data, str):
        data = {"message": data}
    if not isinstance(data, dict):
        raise BadRequest("message data must be a JSON object (or a text)")
    return data

def validate_message_id(message_id: str) -> str:
    """A message id: 1..128 characters of ``[A-Za-z0-9_-]`` (BadRequest otherwise)."""
    if not isinstance(message_id, str) or not _MESSAGE_ID_RE.match(message_id):
        raise BadRequest(f"message id must be 1..{MAX_MESSAGE_ID} characters of letters, digits, '_' or '-'")
    return message_id


def _text(value: str, what: str, width: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{what} must be a non-empty string")
    raw = value.encode("utf-8")
    if len(raw) >= 1 << (8 * width):
        raise BadRequest(f"{what} is too long")
    return len(raw).to_bytes(width, "big") + raw


def encode_header(header: MessageHeader, version: int = FORMAT_VERSION) -> bytes:
    """The header bytes (version through time) of a sealed message."""
    if header.message_type not in MESSAGE_TYPES:
        raise BadRequest(f"message type must be one of {', '.join(MESSAGE_TYPES)}")
    validate_message_id(header.message_id)
    if not isinstance(header.time, (int, float)) or isinstance(header.time, bool):
        raise BadRequest("message time must be a number")
    return b"".join((
        bytes([version]),
        _text(header.message_type, "message type", 1),
        _text(header.sender, "sender", 2),
        _text(header.recipient, "recipient", 2),
        _text(header.message_id, "message id", 1),
        _TIME.pack(float(header.time)),
    ))


def seal(header: MessageHeader, data: Any, sender_key: RsaPrivateKey, recipient_key: RsaPublicKey) -> bytes:
    """Encrypt ``data`` (JSON-encodable) for ``recipient_key`` and sign it with ``sender_key``.

    CPU work (an RSA encryption and an RSA signature): run it off the reactor.
    """
    head = encode_header(header)
    return _signed(head, aes.hybrid_encrypt(recipient_key, _json_bytes(data), aad=head), sender_key)


def seal_with_secret(header: MessageHeader, data: Any, sender_key: RsaPrivateKey, generation: int,
                     secret: bytes) -> bytes:
    """Encrypt ``data`` with a group's generation key ``secret`` (format 2) and sign it with ``sender_key``.

    CPU work (an RSA signature): run it off the reactor.
    """
    if isinstance(generation, bool) or not isinstance(generation, int) or not 0 <= generation < 1 << 32:
        raise BadRequest("a key generation must be a whole number below 2**32")
    head = encode_header(header, SECRET_FORMAT_VERSION)
    gen = _GENERATION.pack(generation)
    return _signed(head, gen + aes.encrypt(secret, _json_bytes(data), aad=head + gen), sender_key)


def _json_bytes(data: Any) -> bytes:
    try:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise BadRequest(f"message data is not JSON: {err}") from None


def _signed(head: bytes, ciphertext: bytes, sender_key: RsaPrivateKey) -> bytes:
    signed = head + len(ciphertext).to_bytes(4, "big") + ciphertext
    signature = keys.sign(sender_key, signed)
    return signed + len(signature).to_bytes(2, "big") + signature


class _Reader:
    def __init__(self, blob: bytes):
        self.blob = blob
        self.pos = 0

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.blob):
            raise MessageRejected("sealed message is truncated")
        part = self.blob[self.pos:self.pos + size]
        self.pos += size
        return part

    def sized(self, width: int) -> bytes:
        return self.take(int.from_bytes(self.take(width), "big"))

    def text(self, width: int, what: str) -> str:
        raw = self.sized(width)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MessageRejected(f"sealed message has a malformed {what}") from None
        if not value:
            raise MessageRejected(f"sealed message has an empty {what}")
        return value


def _parse(blob: bytes) -> tuple[MessageHeader, bytes, bytes, bytes, bytes]:
    """(header, header bytes, signed bytes, ciphertext, signature); MessageRejected if malformed.

    The format version is the first byte of the header bytes.
    """
    if not isinstance(blob, (bytes, bytearray)):
        raise MessageRejected("sealed message must be bytes")
    if len(blob) > MAX_SEALED_BYTES:
        raise MessageRejected("sealed message is too large")
    reader = _Reader(bytes(blob))
    version = reader.take(1)[0]
    if version not in (FORMAT_VERSION, SECRET_FORMAT_VERSION):
        raise MessageRejected(f"unknown message format version {version}")
    message_type = reader.text(1, "message type")
    sender = reader.text(2, "sender")
    recipient = reader.text(2, "recipient")
    message_id = reader.text(1, "message id")
    (when,) = _TIME.unpack(reader.take(_TIME.size))
    if message_type not in MESSAGE_TYPES:
        raise MessageRejected(f"unknown message type {message_type!r}")
    try:
        validate_message_id(message_id)
    except BadRequest:
        raise MessageRejected("sealed message has a malformed message id") from None
    if when != when or when in (float("inf"), float("-inf")):
        raise MessageRejected("sealed message has a malformed time")
    header_end = reader.pos
    ciphertext = reader.sized(4)
    signed_end = reader.pos
    signature = reader.sized(2)
    if reader.pos != len(reader.blob):
        raise MessageRejected("sealed message has trailing bytes")
    header = MessageHeader(message_type, sender, recipient, message_id, when)
    return header, reader.blob[:header_end], reader.blob[:signed_end], ciphertext, signature


def peek(blob: bytes) -> MessageHeader:
    """The header of a sealed message, unverified: use it only to find the keys to open it with."""
    return _parse(blob)[0]


def open_message(blob: bytes, recipient_key: RsaPrivateKey, sender_public: RsaPublicKey,
                 expected_recipient: str) -> OpenedMessage:
    """Verify and decrypt a sealed message.

    :param recipient_key: our private key (the one the message was sealed for).
    :param sender_public: the public master key of the sender named in the header.
    :param expected_recipient: our global id (or group key id): a message
        addressed to anyone else is refused before anything is decrypted.
    :raises MessageRejected: malformed, not for us, bad signature, or a
        ciphertext that does not decrypt (tampered or sealed for another key).
    """
    header, head, ciphertext = _verified(blob, sender_public, expected_recipient, FORMAT_VERSION)
    try:
        plaintext = aes.hybrid_decrypt(recipient_key, ciphertext, aad=head)
    except DecryptionError:
        raise MessageRejected("message cannot be decrypted with our key") from None
    return OpenedMessage(header, _content(plaintext))


def sealed_generation(blob: bytes) -> int:
    """The key generation a format-2 message was sealed with (unverified: to pick the key)."""
    header, head, _, ciphertext, _ = _parse(blob)
    if head[0] != SECRET_FORMAT_VERSION or len(ciphertext) < _GENERATION.size:
        raise MessageRejected("not a message sealed with a group key")
    return _GENERATION.unpack_from(ciphertext)[0]


def open_with_secret(blob: bytes, secret: bytes, sender_public: RsaPublicKey, expected_recipient: str) -> OpenedMessage:
    """Verify and decrypt a format-2 message with the generation key it names (:func:`sealed_generation`).

    :raises MessageRejected: malformed, another format, not for ``expected_recipient``, bad signature, or
        a ciphertext that ``secret`` does not open.
    """
    header, head, ciphertext = _verified(blob, sender_public, expected_recipient, SECRET_FORMAT_VERSION)
    gen, body = ciphertext[:_GENERATION.size], ciphertext[_GENERATION.size:]
    try:
        plaintext = aes.decrypt(secret, body, aad=head + gen)
    except (DecryptionError, BadRequest):
        raise MessageRejected("message cannot be decrypted with that group key") from None
    return OpenedMessage(header, _content(plaintext))


def verify_sealed(blob: bytes, sender_public: RsaPublicKey, expected_recipient: str) -> MessageHeader:
    """The header of a sealed message (either format) whose signature verifies; no key is needed to read it.

    What a group broker, which cannot read the group's messages, checks before it takes one.
    """
    header, _, _ = _verified(blob, sender_public, expected_recipient, None)
    return header


def _verified(blob: bytes, sender_public: RsaPublicKey, expected_recipient: str,
              version: int | None) -> tuple[MessageHeader, bytes, bytes]:
    header, head, signed, ciphertext, signature = _parse(blob)
    if version is not None and head[0] != version:
        raise MessageRejected(f"message has format {head[0]}, expected {version}")
    if header.recipient != expected_recipient:
        raise MessageRejected(f"message is addressed to {header.recipient}, not to {expected_recipient}")
    if not keys.verify(sender_public, signed, signature):
        raise MessageRejected(f"message signature does not verify with the key of {header.sender}")
    return header, head, ciphertext


def _content(plaintext: bytes) -> Any:
    try:
        return boundedjson.loads(plaintext, "message content")
    except (UnicodeDecodeError, ValueError):
        raise MessageRejected("message content is not JSON") from None
