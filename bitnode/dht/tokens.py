"""Address tokens: a peer proves it receives datagrams at its source IP before it gets big answers.

UDP source addresses can be forged. Answering a forged FIND_VALUE with a 6 KiB
record would make this node a traffic amplifier against the forged address
(the victim). So, as BitTorrent's DHT does with its store tokens, every
answer carries a token for the requester's IP — an HMAC under a secret only
this node knows, valid for one to two ``lifetime`` periods — and a request that
presents a valid token comes from an address that really received our earlier
answer. Requests without one get answers at most a few times their own size
and cannot STORE (see :class:`bitnode.dht.protocol.RPCEngine`).

:class:`AddressTokens` issues and checks tokens (no per-peer state: the
secret for a period is derived from one random master key);
:class:`PeerTokens` remembers, on the asking side, the last token each peer
gave us (a bounded map).
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

from bitnode.dht.messages import TOKEN_LEN


class AddressTokens:
    """Issues and checks tokens bound to an IP address and a time period.

    :param clock: ``IReactorTime``; periods are ``floor(now / lifetime)``.
    :param rng: source of the master secret.
    :param lifetime: seconds per period; a token is accepted in its period and the next.
    """

    def __init__(self, clock: IReactorTime, rng: random.Random, lifetime: float = 600.0) -> None:
        self._clock = clock
        self._master = rng.getrandbits(256).to_bytes(32, "big")
        self.lifetime = lifetime
        self._secrets: OrderedDict[int, bytes] = OrderedDict()

    def _period(self) -> int:
        return int(self._clock.seconds() // self.lifetime)

    def _secret(self, period: int) -> bytes:
        secret = self._secrets.get(period)
        if secret is None:
            secret = self._secrets[period] = hmac.new(self._master, str(period).encode(), hashlib.sha256).digest()
            while len(self._secrets) > 3:
                self._secrets.popitem(last=False)
        return secret

    def _token(self, ip: str, period: int) -> str:
        digest = hmac.new(self._secret(period), ip.encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[:TOKEN_LEN]

    def issue(self, ip: str) -> str:
        """The current token for ``ip``."""
        return self._token(ip, self._period())

    def check(self, ip: str, token: str) -> bool:
        """True if ``token`` was issued for ``ip`` in this period or the previous one."""
        if len(token) != TOKEN_LEN:
            return False
        period = self._period()
        return any(hmac.compare_digest(token, self._token(ip, p)) for p in (period, period - 1))


class PeerTokens:
    """The last token each peer address gave us, and when, for at most ``max_peers`` peers (least recent forgotten).

    An entry is also proof of a round trip: the address answered a request of ours.
    """

    def __init__(self, max_peers: int = 4096) -> None:
        self.max_peers = max_peers
        self._tokens: OrderedDict[tuple[str, int], tuple[str, float]] = OrderedDict()

    def get(self, address: tuple[str, int]) -> str:
        """The token to present to ``address`` ("" if we have none)."""
        return self._tokens.get(address, ("", 0.0))[0]

    def answered_since(self, address: tuple[str, int], since: float) -> bool:
        """True if ``address`` answered one of our requests at or after ``since``."""
        entry = self._tokens.get(address)
        return entry is not None and entry[1] >= since

    def remember(self, address: tuple[str, int], token: str, now: float) -> None:
        """Keep the token ``address`` just gave us (an empty one only refreshes the time)."""
        token = token or self.get(address)
        if token:
            self._tokens[address] = (token, now)
            self._tokens.move_to_end(address)
        while len(self._tokens) > self.max_peers:
            self._tokens.popitem(last=False)

    def __len__(self) -> int:
        return len(self._tokens)
