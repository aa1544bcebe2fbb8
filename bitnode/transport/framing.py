"""Length-prefixed frames on a byte stream, with a small head and a raw body.

Wire layout of one frame (big-endian)::

    u32  length   bytes that follow: 2 + len(head) + len(body)
    u16  head length
    ...  head     (small: a packet header)
    ...  body     (raw, possibly many MiB: a packet payload)

Splitting head from body in the frame lets a receiver collect a large body as
a list of received chunks and join it exactly once, hashing it as it streams
in, and lets a sender hand ``[prefix, head, body]`` to ``writeSequence`` so the
body is never concatenated with anything.  It also lets the receiver judge
the head before a byte of the body is kept (:meth:`FrameProtocol.headReceived`):
a body it does not want is read past without being stored, and one it wants
is first reserved in a buffer budget shared by all connections.

A frame over ``max_frame`` bytes (head + body), a head over ``max_head``, a
malformed prefix or more than ``max_frames_per_second`` frames in one second
closes the connection: the stream cannot be resynchronised after a bad
length, and a flooding peer is not worth reading.  Each such event is reported
once to :meth:`FrameProtocol.frameRejected`.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from bitnode.errors import BadRequest
from bitnode.transport.limits import BufferBudget

PREFIX = struct.Struct(">IH")
#: Largest frame the u32 length can describe.
MAX_FRAME_LIMIT = 0xFFFFFFFF - 2
#: Default upper bound of a frame head.
DEFAULT_MAX_HEAD = 0xFFFF

_PREFIX, _HEAD, _BODY = range(3)
#: Verdicts of :meth:`FrameProtocol.headReceived`.
KEEP = "keep"
SKIP = "skip"


class FrameTooLarge(BadRequest):
    """A frame we were asked to send is over the size limit."""


def encode_frame(head: bytes, body: bytes = b"") -> bytes:
    """One frame as a single buffer (copies; for tests and small frames)."""
    return PREFIX.pack(2 + len(head) + len(body), len(head)) + head + body


class FrameProtocol(Protocol):
    """A protocol that exchanges ``(head, body)`` frames.

    Subclasses implement :meth:`frameReceived` and may override
    :meth:`frameRejected`; they send with :meth:`sendFrame`.

    :param clock: time source for flood control.
    :param max_frame: largest accepted ``len(head) + len(body)``.
    :param max_head: largest accepted head.
    :param max_frames_per_second: more frames than this within one second
        closes the connection (``None``: no limit).
    :param digest_bodies: compute SHA-256 of each body while it streams in and
        pass it to :meth:`frameReceived`.
    :param digest_hold: with ``digest_bodies``, the last ``digest_hold`` bytes
        of each body are hashed only once it is complete, and the hash state
        of the body without them is passed on too (``body_prefix``), so a
        receiver gets the hash of any leading part that ends in that tail (a
        block inside a payload) without hashing the body a second time.
    :param budget: a :class:`~bitnode.transport.limits.BufferBudget` shared
        by the connections: a kept body is reserved there before it is read,
        and reading pauses while it does not fit.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        max_frame: int,
        max_head: int = DEFAULT_MAX_HEAD,
        max_frames_per_second: int | None = None,
        digest_bodies: bool = False,
        budget: Optional[BufferBudget] = None,
        digest_hold: int = 0,
    ) -> None:
        if not 0 < max_frame <= MAX_FRAME_LIMIT:
            raise ValueError(f"max_frame must be in 1..{MAX_FRAME_LIMIT}")
        self._clock = clock
        self.max_frame = max_frame
        self.max_head = min(max_head, DEFAULT_MAX_HEAD)
        self.max_frames_per_second = max_frames_per_second
        self._digest_bodies = digest_bodies
        self._digest_hold = max(0, digest_hold)
        self._hash_limit = 0  # body bytes hashed while streaming (the rest is the held tail)
        self._hashed = 0
        self._state = _PREFIX
        self._buf = bytearray()  # prefix or head being collected
        self._head = b""
        self._head_length = 0
        self._body_left = 0
        self._body_parts: list[Any] = []
        self._hasher: Any = None
        self._budget = budget
        self._verdict: Optional[str] = None
        self._keep_body = False
        self._reserved = 0
        self._stash: Optional[bytearray] = None
        self.budget_waits = 0
        self._rate_window_start = float("-inf")
        self._rate_count = 0
        self._closing = False
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0

    # -- hooks for subclasses ---------------------------------------------

    def frameReceived(self, head: bytes, body: bytes, body_sha256: bytes | None) -> None:
        """One complete frame arrived.  ``body_sha256`` is set when digesting bodies.

        With ``digest_hold`` a fourth argument follows: ``(state, length)``, a
        hashlib state over ``body[:length]`` (``copy()`` it before use).
        """
        raise NotImplementedError

    def frameRejected(self, reason: str) -> None:
        """The stream was rejected for ``reason`` (oversize, malformed, flood); closing."""

    def headReceived(self, head: bytes, body_length: int) -> str:
        """A frame's head arrived, its body (``body_length`` bytes) not yet: :data:`KEEP` or :data:`SKIP` it.

        A skipped body is read past without being kept (no memory, no
        budget), then :meth:`frameSkipped` is called instead of
        :meth:`frameReceived`.  The default keeps every body.
        """
        return KEEP

    def frameSkipped(self, head: bytes) -> None:
        """The body of a frame whose head was answered :data:`SKIP` has been read past."""

    # -- sending ----------------------------------------------------------

    def sendFrame(self, head: bytes, body: bytes = b"") -> int:
        """Write one frame without joining ``body`` to anything; return its wire size."""
        size = len(head) + len(body)
        if size > self.max_frame or len(head) > self.max_head:
            raise FrameTooLarge(f"frame of {size} bytes (head {len(head)}) is over the limit")
        pieces = [PREFIX.pack(2 + size, len(head)), head]
        if body:
            pieces.append(body)
        self.transport.writeSequence(pieces)
        self.frames_out += 1
        self.bytes_out += PREFIX.size + size
        return PREFIX.size + size

    # -- receiving --------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Cut the stream into frames; many per chunk or many chunks per frame."""
        if self._closing:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        self.bytes_in += len(data)
        if self._stash is not None:
            # paused for the buffer budget: a last chunk may still arrive; keep it in order
            self._stash += data
            return
        self._consume(memoryview(data))

    def _consume(self, view: memoryview) -> None:
        pos, end = 0, len(view)
        while pos < end and not self._closing:
            if self._state == _PREFIX:
                take = min(PREFIX.size - len(self._buf), end - pos)
                self._buf += view[pos : pos + take]
                pos += take
                if len(self._buf) < PREFIX.size:
                    break
                length, head_length = PREFIX.unpack(self._buf)
                self._buf.clear()
                if not self._start_frame(length, head_length):
                    return
            if self._state == _HEAD:
                take = min(self._head_length - len(self._buf), end - pos)
                self._buf += view[pos : pos + take]
                pos += take
                if len(self._buf) < self._head_length:
                    break
                self._head = bytes(self._buf)
                self._buf.clear()
                if not self._head_done():
                    if not self._closing:
                        self._pause(view[pos:end])
                    return
            if self._state == _BODY:
                take = min(self._body_left, end - pos)
                if take:
                    piece = view[pos : pos + take]
                    if self._keep_body:
                        self._body_parts.append(piece)
                        if self._hasher is not None and self._hashed < self._hash_limit:
                            hash_now = min(take, self._hash_limit - self._hashed)
                            self._hasher.update(piece[:hash_now] if hash_now < take else piece)
                            self._hashed += hash_now
                    self._body_left -= take
                    pos += take
                if self._body_left:
                    break
                self._finish_frame()

    def _start_frame(self, length: int, head_length: int) -> bool:
        """Check a prefix and set up for its frame; False if the stream is rejected."""
        if length < 2 or head_length > length - 2:
            self._reject("malformed")
            return False
        if length - 2 > self.max_frame or head_length > self.max_head:
            self._reject("oversize")
            return False
        if self.max_frames_per_second is not None:
            now = self._clock.seconds()
            if now - self._rate_window_start >= 1.0:
                self._rate_window_start = now
                self._rate_count = 0
            self._rate_count += 1
            if self._rate_count > self.max_frames_per_second:
                self._reject("flood")
                return False
        self._head_length = head_length
        self._body_left = length - 2 - head_length
        self._state = _HEAD
        return True

    def _head_done(self) -> bool:
        """Ask the subclass about the head; reserve the body's bytes if kept. False: wait (or closed)."""
        if self._verdict is None:
            verdict = self.headReceived(self._head, self._body_left)
            if self._closing:
                return False
            self._verdict = verdict
            self._keep_body = verdict == KEEP
        if self._keep_body and self._budget is not None and self._body_left and not self._reserved:
            if not self._budget.try_reserve(self._budget_key(), self._body_left):
                return False
            self._reserved = self._body_left
        self._hasher = hashlib.sha256() if self._digest_bodies and self._keep_body else None
        self._hash_limit = max(0, self._body_left - self._digest_hold)
        self._hashed = 0
        self._state = _BODY
        return True

    def _pause(self, rest: memoryview) -> None:
        """No room in the buffer budget for this body yet: stop reading until some is released."""
        self._stash = bytearray(rest)
        self.budget_waits += 1
        if self.transport is not None:
            self.transport.pauseProducing()
        self._budget.wait(self, self._budget_released)

    def _budget_released(self) -> None:
        if self._closing:
            return
        if not self._head_done():
            self._budget.wait(self, self._budget_released)
            return
        stash, self._stash = self._stash, None
        if self.transport is not None:
            self.transport.resumeProducing()
        if stash:
            self._consume(memoryview(bytes(stash)))

    def _budget_key(self) -> str:
        try:
            return str(self.transport.getPeer().host)
        except Exception:
            return "?"

    def _finish_frame(self) -> None:
        parts, self._body_parts = self._body_parts, []
        keep, self._keep_body, self._verdict = self._keep_body, False, None
        reserved, self._reserved = self._reserved, 0
        head, self._head = self._head, b""
        self._state = _PREFIX
        self.frames_in += 1
        if not keep:
            self._hasher = None
            self._call(self.frameSkipped, head)
        else:
            body = b"".join(parts) if parts else b""
            del parts
            hasher, self._hasher = self._hasher, None
            if hasher is None:
                digest, prefix = None, None
            else:
                prefix = (hasher, self._hashed)  # the state of the body without its held tail
                whole = hasher.copy()
                whole.update(memoryview(body)[self._hashed :])
                digest = whole.digest()
            if reserved:
                self._budget.release(self._budget_key(), reserved)
            if self._digest_hold and digest is not None:
                self._call(self.frameReceived, head, body, digest, prefix)
            else:
                self._call(self.frameReceived, head, body, digest)

    def _call(self, hook: Any, *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            self.log.failure("{hook} raised; frame dropped", hook=hook.__name__)

    def _reject(self, reason: str) -> None:
        self.log.info("closing {peer}: {reason}", peer=self._peer_text(), reason=reason)
        self.frameRejected(reason)
        self.closeConnection()

    def closeConnection(self) -> None:
        """Stop reading frames and close the connection."""
        if self._closing:
            return
        self._forget_partial_frame()
        if self.transport is not None:
            self.transport.loseConnection()

    def _forget_partial_frame(self) -> None:
        """Drop whatever part of a frame is held, and give back its budget."""
        self._closing = True
        self._body_parts = []
        self._buf.clear()
        self._stash = None
        if self._budget is not None:
            self._budget.cancel(self)
            if self._reserved:
                reserved, self._reserved = self._reserved, 0
                self._budget.release(self._budget_key(), reserved)

    @property
    def closing(self) -> bool:
        """Whether this connection is being (or has been) closed."""
        return self._closing

    def connectionLost(self, reason: Any = None) -> None:
        """Forget any partial frame."""
        self._forget_partial_frame()

    @property
    def receiving(self) -> Optional[tuple[int, int]]:
        """(body bytes received, body size) of a frame being read and kept, or None between frames."""
        if self._state != _BODY or not self._keep_body or not self._body_left:
            return None
        done = sum(len(part) for part in self._body_parts)
        return done, done + self._body_left

    def _peer_text(self) -> str:
        try:
            peer = self.transport.getPeer()
            return f"{peer.host}:{peer.port}"
        except Exception:
            return "?"
