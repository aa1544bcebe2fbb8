"""Signed packets and their versioned binary wire format.

Wire format, version 1 (all integers big-endian)::

    u8   version            = 1
    u8   flags              = 0 (reserved, must be zero)
    f64  date               seconds since the epoch, from the sender's clock
    u64  payload length
    32B  SHA-256 of the payload
    7 x  (u16 length, UTF-8 bytes):
         command, owner_id, creator_id, packet_id, remote_id, key_id, algorithm
    u16  signature length, then the signature bytes
    ...  payload, raw, exactly ``payload length`` bytes

The signature is made over ``SIGNING_DOMAIN`` followed by every header byte
before the signature (so it covers the version, every field and the payload's
SHA-256; the payload itself can be hashed while it streams in).  Signing and
verifying go through small injected interfaces (:class:`Signer`,
:class:`Verifier`) so this module knows no key types.

Every malformed, oversize or unauthentic input raises a :class:`BadPacket`
subclass whose ``reason`` is the drop counter name used by
:class:`bitnode.transport.stats.PacketStats`.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import struct
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

from twisted.internet.interfaces import IReactorTime

from bitnode.errors import BadRequest
from bitnode.transport.commands import Command, command_name

WIRE_VERSION = 1
SIGNING_DOMAIN = b"bitnode-packet\x00"

#: Bytes at the end of a received payload hashed after the rest, so that the hash of a leading part
#: ending in them comes cheap (:meth:`Packet.streamed_prefix_sha256`): a storage ``Data`` payload's
#: trailer after its block is at most 515 bytes.
DIGEST_HOLD = 1024
#: Largest payload accepted unless the caller says otherwise.
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
#: Upper bounds (in UTF-8 bytes) of the text fields.
MAX_COMMAND = 64
MAX_ID = 512
MAX_PACKET_ID = 128
MAX_ALGORITHM = 64
MAX_SIGNATURE = 2048

_FIXED = struct.Struct(">BBdQ32s")
_U16 = struct.Struct(">H")
_TEXT_FIELDS: tuple[tuple[str, int, bool], ...] = (
    # name, max UTF-8 bytes, may be empty
    ("command", MAX_COMMAND, False),
    ("owner_id", MAX_ID, False),
    ("creator_id", MAX_ID, False),
    ("packet_id", MAX_PACKET_ID, False),
    ("remote_id", MAX_ID, False),
    ("key_id", MAX_ID, True),
    ("algorithm", MAX_ALGORITHM, False),
)
#: Largest possible version-1 header; a longer one is malformed.
MAX_HEADER = _FIXED.size + sum(_U16.size + m for _, m, _e in _TEXT_FIELDS) + _U16.size + MAX_SIGNATURE


class BadPacket(BadRequest):
    """A packet (or packet bytes) that must be dropped; ``reason`` names the drop counter."""

    reason = "malformed"


class PacketTooLarge(BadPacket):
    """A field, the header or the payload is over its limit."""

    reason = "oversize"


class BadSignature(BadPacket):
    """The signature does not verify, or the payload does not match its signed hash."""

    reason = "bad_signature"


class UnknownSender(BadPacket):
    """No verifier is known for the packet's creator."""

    reason = "unknown_sender"


class UnknownCommand(BadPacket):
    """The packet's command is not in the command set."""

    reason = "unknown_command"


class WrongRecipient(BadPacket):
    """The packet is addressed to someone else."""

    reason = "wrong_recipient"


class Signer(Protocol):
    """Signs bytes with one private key."""

    algorithm: str

    def sign(self, data: bytes) -> bytes:
        """Return the signature of ``data``."""
        ...


class Verifier(Protocol):
    """Checks signatures made by one public key.

    A verifier may also have an ``algorithm`` attribute; when it has one, a
    packet naming a different algorithm is rejected.
    """

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is a valid signature of ``data``."""
        ...


ResolveVerifier = Callable[[str], Optional[Verifier]]


def payload_digest(payload: bytes) -> bytes:
    """SHA-256 of a payload, as carried in the header."""
    return hashlib.sha256(payload).digest()


@dataclass(frozen=True)
class Packet:
    """One signed packet.  Build with :meth:`create`, read with :meth:`decode`.

    ``remote_id`` is the recipient's global id; ``date`` comes from the
    sender's clock.  An instance always satisfies the field limits of the wire
    format (checked on construction), but is only authentic after
    :meth:`verify`.
    """

    command: str
    owner_id: str
    creator_id: str
    packet_id: str
    date: float
    payload: bytes = field(repr=False)
    remote_id: str
    key_id: str = ""
    algorithm: str = ""
    signature: bytes = field(default=b"", repr=False)
    _digest: bytes = field(default=b"", init=False, repr=False, compare=False)
    _prefix: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", command_name(self.command))
        if not isinstance(self.payload, bytes):
            raise BadPacket("payload must be bytes")
        if not isinstance(self.signature, bytes):
            raise BadPacket("signature must be bytes")
        if isinstance(self.date, bool) or not isinstance(self.date, (int, float)):
            raise BadPacket("date must be a number")
        object.__setattr__(self, "date", float(self.date))
        _check_fields(self, self.date, self.signature)

    # -- building ---------------------------------------------------------

    @classmethod
    def create(
        cls,
        clock: IReactorTime,
        command: str | Command,
        owner_id: str,
        creator_id: str,
        remote_id: str,
        payload: bytes,
        signer: Signer,
        key_id: str = "",
        packet_id: str | None = None,
        payload_sha256: bytes | None = None,
    ) -> Packet:
        """Build and sign a packet dated ``clock.seconds()``.

        ``packet_id`` defaults to a random 96-bit hex string.  Raises
        :class:`BadPacket` (a ``BadRequest``) for fields out of bounds.
        ``payload_sha256``: the SHA-256 of ``payload`` when the caller computed
        it already (the uploader hashes a block and its Data payload in one
        pass); it is trusted, so pass only a digest you computed over this very
        payload — a wrong one is signed, and every receiver then drops the
        packet (:class:`BadSignature`).
        """
        if payload_sha256 is not None and len(payload_sha256) != 32:
            raise BadPacket("payload_sha256 must be 32 bytes")
        if packet_id is None:
            packet_id = secrets.token_hex(12)
        unsigned = cls(
            command=command_name(command),
            owner_id=owner_id,
            creator_id=creator_id,
            packet_id=packet_id,
            date=float(clock.seconds()),
            payload=bytes(payload),
            remote_id=remote_id,
            key_id=key_id,
            algorithm=signer.algorithm,
        )
        if payload_sha256 is not None:
            unsigned._set_digest(bytes(payload_sha256))
        signature = signer.sign(unsigned.signed_data())
        signed = cls(
            command=unsigned.command,
            owner_id=owner_id,
            creator_id=creator_id,
            packet_id=packet_id,
            date=unsigned.date,
            payload=unsigned.payload,
            remote_id=remote_id,
            key_id=key_id,
            algorithm=signer.algorithm,
            signature=bytes(signature),
        )
        signed._set_digest(unsigned.payload_sha256)
        return signed

    # -- encoding ---------------------------------------------------------

    @property
    def payload_sha256(self) -> bytes:
        """SHA-256 of the payload (computed once, then cached)."""
        if not self._digest:
            self._set_digest(payload_digest(self.payload))
        return self._digest

    def _set_digest(self, digest: bytes) -> None:
        object.__setattr__(self, "_digest", digest)

    def streamed_prefix_sha256(self, length: int) -> str | None:
        """Hex SHA-256 of ``payload[:length]`` from the hash state kept while the payload streamed in.

        None when no state was kept, or it is already past ``length``: the
        caller then hashes those bytes itself (in a worker, not on the
        reactor). Costs at most :data:`DIGEST_HOLD` bytes of hashing.
        """
        if self._prefix is None:
            return None
        state, at = self._prefix
        if not at <= length <= len(self.payload):
            return None
        hasher = state.copy()
        hasher.update(memoryview(self.payload)[at:length])
        return hasher.hexdigest()

    def _unsigned_header(self) -> bytes:
        parts = [_FIXED.pack(WIRE_VERSION, 0, self.date, len(self.payload), self.payload_sha256)]
        for name, _limit, _empty in _TEXT_FIELDS:
            raw = getattr(self, name).encode("utf-8")
            parts.append(_U16.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)

    def signed_data(self) -> bytes:
        """The exact bytes the signature covers."""
        return SIGNING_DOMAIN + self._unsigned_header()

    def encode_header(self) -> bytes:
        """The wire header (everything but the payload, which follows it raw)."""
        return self._unsigned_header() + _U16.pack(len(self.signature)) + self.signature

    def encode(self) -> bytes:
        """Header and payload in one buffer (copies the payload; for storage and tests)."""
        return self.encode_header() + self.payload

    # -- decoding ---------------------------------------------------------

    @classmethod
    def decode(cls, data: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Packet:
        """Parse a whole encoded packet (header then payload).

        Checks structure, limits and the payload hash; does *not* check the
        signature (see :meth:`verify`).  Raises :class:`BadPacket`.
        """
        view = memoryview(data)
        header_length, payload_length = _parse_lengths(view, max_payload)
        if len(view) - header_length != payload_length:
            raise BadPacket(
                f"payload is {len(view) - header_length} bytes, header says {payload_length}"
            )
        return cls.decode_parts(view[:header_length].tobytes(), bytes(view[header_length:]), max_payload)

    @classmethod
    def decode_parts(
        cls,
        header: bytes,
        payload: bytes,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        payload_sha256: bytes | None = None,
    ) -> Packet:
        """Parse a header and its payload received separately.

        ``payload_sha256`` is the digest the caller already computed over
        ``payload`` while it streamed in (saves hashing it twice); it is
        trusted, so pass only a digest you computed yourself.
        """
        return PacketHead.decode(header, max_payload).packet(payload, payload_sha256)

    # -- verifying --------------------------------------------------------

    def verify(self, resolve_verifier: ResolveVerifier) -> None:
        """Check the signature with the creator's verifier.

        Raises :class:`UnknownSender` when ``resolve_verifier`` knows no key
        for ``creator_id`` and :class:`BadSignature` when the signature fails.
        """
        _verify(self.creator_id, self.algorithm, self.signed_data(), self.signature, resolve_verifier)


@dataclass(frozen=True)
class PacketHead:
    """A packet's header alone, parsed before its payload arrives (see :meth:`decode`).

    It holds everything the signature covers, including the payload's length
    and SHA-256, so a receiver can check the signature, the recipient and the
    replay window before it accepts a byte of the payload, then build the
    :class:`Packet` with :meth:`packet` once the payload is in.
    """

    command: str
    owner_id: str
    creator_id: str
    packet_id: str
    date: float
    remote_id: str
    key_id: str
    algorithm: str
    signature: bytes = field(repr=False)
    payload_length: int
    payload_sha256: bytes = field(repr=False)
    signed: bytes = field(repr=False)  # exactly the bytes the signature covers

    @classmethod
    def decode(cls, header: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> PacketHead:
        """Parse a wire header; :class:`BadPacket` when malformed, over a limit or unsigned."""
        view = memoryview(header)
        header_length, payload_length = _parse_lengths(view, max_payload)
        if header_length != len(view):
            raise BadPacket(f"header has {len(view) - header_length} trailing bytes")
        _version, _flags, date, _length, signed_digest = _FIXED.unpack_from(view, 0)
        offset = _FIXED.size
        texts: dict[str, str] = {}
        for name, _limit, _empty in _TEXT_FIELDS:
            (size,) = _U16.unpack_from(view, offset)
            offset += _U16.size
            try:
                texts[name] = str(view[offset : offset + size], "utf-8")
            except UnicodeDecodeError as exc:
                raise BadPacket(f"{name} is not valid UTF-8") from exc
            offset += size
        signed = SIGNING_DOMAIN + bytes(view[:offset])
        (sig_size,) = _U16.unpack_from(view, offset)
        offset += _U16.size
        signature = view[offset : offset + sig_size].tobytes()
        if not signature:
            raise BadPacket("packet is not signed")
        head = cls(date=date, signature=signature, payload_length=payload_length, payload_sha256=signed_digest,
                   signed=signed, **texts)
        _check_fields(head, date, signature)
        return head

    def verify(self, resolve_verifier: ResolveVerifier) -> None:
        """Check the signature over the header (and so over the payload's hash) before the payload arrives.

        Raises :class:`UnknownSender` or :class:`BadSignature` like :meth:`Packet.verify`.
        """
        _verify(self.creator_id, self.algorithm, self.signed, self.signature, resolve_verifier)

    def packet(self, payload: bytes, payload_sha256: bytes | None = None, prefix: tuple | None = None) -> Packet:
        """The whole packet once ``payload`` is in; :class:`BadSignature` if it is not the one signed for.

        ``payload_sha256`` is a digest the caller computed over ``payload``
        itself while it streamed in (trusted: pass only your own); ``prefix``,
        ``(hashlib state, length)``, the state of that hash over
        ``payload[:length]`` (see :meth:`Packet.streamed_prefix_sha256`).
        """
        if len(payload) != self.payload_length:
            raise BadPacket(f"payload is {len(payload)} bytes, header says {self.payload_length}")
        digest = payload_sha256 if payload_sha256 is not None else payload_digest(payload)
        if digest != self.payload_sha256:
            raise BadSignature("payload does not match its signed SHA-256")
        packet = Packet(
            command=self.command, owner_id=self.owner_id, creator_id=self.creator_id, packet_id=self.packet_id,
            date=self.date, payload=payload if isinstance(payload, bytes) else bytes(payload),
            remote_id=self.remote_id, key_id=self.key_id, algorithm=self.algorithm, signature=self.signature,
        )
        packet._set_digest(digest)
        if prefix is not None and payload_sha256 is not None:
            object.__setattr__(packet, "_prefix", prefix)
        return packet


def _check_fields(obj: object, date: float, signature: bytes) -> None:
    """The limits every packet (and header) keeps: a finite date, text fields in bounds, a bounded signature."""
    if not math.isfinite(date):
        raise BadPacket("date must be finite")
    for name, limit, may_be_empty in _TEXT_FIELDS:
        value = getattr(obj, name)
        if not isinstance(value, str):
            raise BadPacket(f"{name} must be a str")
        size = len(value.encode("utf-8"))
        if size > limit:
            raise PacketTooLarge(f"{name} is {size} bytes, limit {limit}")
        if not size and not may_be_empty:
            raise BadPacket(f"{name} is empty")
    if len(signature) > MAX_SIGNATURE:
        raise PacketTooLarge(f"signature is {len(signature)} bytes, limit {MAX_SIGNATURE}")


def _verify(creator_id: str, algorithm: str, signed: bytes, signature: bytes,
            resolve_verifier: ResolveVerifier) -> None:
    try:
        verifier = resolve_verifier(creator_id)
    except Exception as exc:  # a broken lookup must not crash the receiver
        raise UnknownSender(f"key lookup for {creator_id!r} failed: {exc!r}") from exc
    if verifier is None:
        raise UnknownSender(f"no key known for {creator_id!r}")
    expected = getattr(verifier, "algorithm", None)
    if expected is not None and expected != algorithm:
        raise BadSignature(f"packet says {algorithm!r}, key of {creator_id!r} is {expected!r}")
    try:
        valid = verifier.verify(signed, signature)
    except Exception as exc:  # a verifier that raises instead of answering False
        raise BadSignature(f"signature check failed: {exc.__class__.__name__}") from exc
    if not valid:
        raise BadSignature(f"bad signature from {creator_id!r}")


def _parse_lengths(view: memoryview, max_payload: int) -> tuple[int, int]:
    """Walk a header's length fields: (header length, payload length).

    Checks the version, flags, every field limit and that the header is
    complete within ``view``; raises :class:`BadPacket` otherwise.
    """
    if len(view) < 1:
        raise BadPacket("empty packet")
    if view[0] != WIRE_VERSION:
        raise BadPacket(f"unsupported wire version {view[0]}")
    if len(view) < _FIXED.size:
        raise BadPacket("truncated header")
    _version, flags, _date, payload_length, _digest = _FIXED.unpack_from(view, 0)
    if flags:
        raise BadPacket(f"unknown flags {flags:#x}")
    if payload_length > max_payload:
        raise PacketTooLarge(f"payload is {payload_length} bytes, limit {max_payload}")
    offset = _FIXED.size
    limits = [(name, limit) for name, limit, _e in _TEXT_FIELDS] + [("signature", MAX_SIGNATURE)]
    for name, limit in limits:
        if len(view) < offset + _U16.size:
            raise BadPacket(f"truncated header at {name}")
        (size,) = _U16.unpack_from(view, offset)
        if size > limit:
            raise PacketTooLarge(f"{name} is {size} bytes, limit {limit}")
        offset += _U16.size + size
        if len(view) < offset:
            raise BadPacket(f"truncated header in {name}")
    return offset, payload_length
