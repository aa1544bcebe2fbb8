"""A fresh challenge for destructive commands: ``CancelService``, ``DeleteBackup``, ``DeleteFile``.

The replay cache forgets everything when a node restarts, and it refuses
packets dated before the start; but a sender whose clock runs ahead dates
its packets up to a minute into our future, so such a packet captured before
a restart would still be accepted after it.  For the commands that destroy
data that is not enough: they must carry a nonce the receiver handed out
*in this process*.

The protocol, all inside the gateway (handlers see the plain payload):

1. A destructive packet without a valid nonce is answered ``Fail`` with
   :func:`challenge_refusal`: ``"forbidden: a fresh challenge is required"``,
   a newline, and a nonce (hex) for this sender.  Nothing else happens.
2. The sender remembers the nonce for that peer and sends the command again,
   once, as a new packet whose payload is :func:`wrap`-ped: ``MAGIC``, the
   16-byte nonce, then the payload as before.  Later destructive packets to
   that peer carry the remembered nonce at once (no extra round trip) until
   a refusal brings a new one.
3. The receiver accepts a wrapped packet whose nonce is the one it issued to
   that sender within ``ttl`` seconds; a replay of the very packet is still
   refused by the replay cache, and after a restart every old nonce is void.

An old-format sender gets the ``Fail`` and its command fails ("forbidden"):
nothing is deleted.  An old-format receiver never sees a wrapped payload (a
sender wraps only for a peer that sent it a nonce).
"""

from __future__ import annotations

import hmac
import os
from collections import Counter, OrderedDict
from typing import Callable, Optional

from twisted.internet.interfaces import IReactorTime

from bitnode.transport.commands import Command

#: The commands that need a fresh challenge.
DESTRUCTIVE = frozenset({Command.CANCEL_SERVICE.value, Command.DELETE_BACKUP.value, Command.DELETE_FILE.value})
#: Starts a wrapped payload (a NUL byte: no path or JSON payload starts like this).
MAGIC = b"\x00bitnode-challenge-1\x00"
NONCE_BYTES = 16
#: The first line of the ``Fail`` that hands out a nonce ("forbidden": an old sender reports it as Forbidden).
REFUSAL = "forbidden: a fresh challenge is required"
DEFAULT_TTL = 300.0


def wrap(nonce: bytes, payload: bytes) -> bytes:
    """A destructive command's payload carrying ``nonce``."""
    return MAGIC + nonce + payload


def unwrap(payload: bytes) -> tuple[Optional[bytes], bytes]:
    """``(nonce, plain payload)`` of a wrapped payload; ``(None, payload)`` for an unwrapped one."""
    if payload[: len(MAGIC)] == MAGIC and len(payload) >= len(MAGIC) + NONCE_BYTES:
        start = len(MAGIC) + NONCE_BYTES
        return bytes(payload[len(MAGIC):start]), payload[start:]
    return None, payload


def challenge_refusal(nonce: bytes) -> bytes:
    """The ``Fail`` payload that refuses a destructive packet and hands out ``nonce``."""
    return f"{REFUSAL}\n{nonce.hex()}".encode("ascii")


def asks_challenge(payload: bytes) -> Optional[bytes]:
    """The nonce in a ``Fail`` payload made by :func:`challenge_refusal`; None for any other."""
    text, _, nonce_hex = bytes(payload[:200]).decode("ascii", errors="replace").partition("\n")
    if text != REFUSAL or len(nonce_hex) != 2 * NONCE_BYTES:
        return None
    try:
        return bytes.fromhex(nonce_hex)
    except ValueError:
        return None


class Challenges:
    """The receiver's side: one nonce per peer, valid ``ttl`` seconds, in this process only.

    :param clock: the time source.
    :param ttl: seconds a nonce stays valid after it was issued.
    :param max_peers: peers remembered (the least recently challenged is forgotten first; it just
        gets a new nonce next time).
    :param random_bytes: source of nonces (``os.urandom``).
    """

    def __init__(self, clock: IReactorTime, ttl: float = DEFAULT_TTL, max_peers: int = 10_000,
                 random_bytes: Callable[[int], bytes] = os.urandom) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._clock = clock
        self.ttl = float(ttl)
        self._max_peers = max_peers
        self._random = random_bytes
        self._issued: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.counts: Counter[str] = Counter()

    def issue(self, peer_id: str) -> bytes:
        """The peer's current nonce, or a new one if it has none or it expired."""
        now = self._clock.seconds()
        current = self._issued.pop(peer_id, None)
        if current is None or now - current[1] >= self.ttl:
            current = (self._random(NONCE_BYTES), now)
            self.counts["issued"] += 1
        self._issued[peer_id] = current
        while len(self._issued) > self._max_peers:
            self._issued.popitem(last=False)
        return current[0]

    def accept(self, peer_id: str, nonce: Optional[bytes]) -> bool:
        """Whether ``nonce`` is the one issued to ``peer_id`` and still valid (counted either way)."""
        current = self._issued.get(peer_id)
        ok = (nonce is not None and current is not None and self._clock.seconds() - current[1] < self.ttl
              and hmac.compare_digest(current[0], nonce))
        self.counts["accepted" if ok else "refused"] += 1
        return ok

    def stats(self) -> dict:
        """Counters for ``packets_stats``: issued, accepted, refused (and answered by us as a sender)."""
        return {"ttl_seconds": self.ttl, "peers": len(self._issued),
                **{what: self.counts[what] for what in ("issued", "accepted", "refused", "answered")}}
