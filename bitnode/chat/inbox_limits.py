"""What other users may make this node store: the limits on the messages they send us, in one place.

A stranger could send private messages as fast as the network carries them,
and each was decrypted (an RSA private-key operation) and kept in the history
forever. :class:`InboxLimits` decides, for each incoming message, *before* the
costly work (fetching the sender's identity, decrypting) and again with its
real size just before it is stored:

1. **friends only** (``friends-only``, off by default): a sender who is not in
   my friends list is refused;
2. **a rate per sender**: ``sender-rate`` messages per second on average,
   ``sender-burst`` at once;
3. **a quota per sender**: at most ``sender-max-messages`` messages and
   ``sender-max-bytes`` bytes of message content stored from one sender within
   the last ``quota-period`` seconds;
4. **a quota for all strangers together** (senders not in my friends list):
   ``strangers-max-messages`` / ``strangers-max-bytes`` per period, so a crowd
   of fresh identities cannot fill the disk either.

The quotas are counted from the history itself (:class:`Usage` comes from
:meth:`bitnode.chat.history.MessageHistory.incoming_usage`), so a restart does
not reset them. A refusal is the reason text the sender gets in its ``Fail``
("friends only: ...", "rate limited: ...", "quota: ..."), counted by kind in
:attr:`InboxLimits.refused`. Issue 17's queued offline delivery is meant to
asks the same object about what it fetches from its suppliers' mailboxes
(friends only and the quotas; not the rate: the suppliers' mailbox limits
bound how many a sender queued, and we fetch them at once).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, NamedTuple

from bitnode.main.ratelimit import KeyedRateLimiter

MIB = 1024 * 1024


@dataclass(frozen=True)
class InboxSettings:
    """The limits (settings under ``services/private-messages/``); 0 turns a rate or quota off."""

    friends_only: bool = False
    sender_rate: float = 2.0
    sender_burst: float = 30.0
    sender_max_messages: int = 2000
    sender_max_bytes: int = 32 * MIB
    strangers_max_messages: int = 10_000
    strangers_max_bytes: int = 128 * MIB
    period: float = 86400.0


class Usage(NamedTuple):
    """Messages stored within the quota period, and the bytes of their content."""

    messages: int
    bytes: int


class InboxLimits:
    """The decisions of the module docstring; ``is_friend(global_id)`` says who my friends are."""

    def __init__(self, clock, settings: InboxSettings, is_friend: Callable[[str], bool]):
        self.clock = clock
        self.is_friend = is_friend
        self.settings = settings
        self.rates = KeyedRateLimiter(clock, settings.sender_rate, settings.sender_burst)
        #: Refusals by kind: friends_only, rate_limited, sender_quota, strangers_quota.
        self.refused: Counter[str] = Counter()

    def configure(self, settings: InboxSettings) -> None:
        """New limits from now on."""
        if (settings.sender_rate, settings.sender_burst) != (self.settings.sender_rate, self.settings.sender_burst):
            self.rates.configure(settings.sender_rate, settings.sender_burst)
        self.settings = settings

    def since(self) -> float:
        """The start of the quota period (messages stored after it count)."""
        return self.clock.seconds() - self.settings.period

    def admit(self, sender: str, rate: bool = True) -> str:
        """The cheap checks, before anything is done for a message of ``sender``: "" or the refusal.

        ``rate=False``: a message fetched from a mailbox (not sent to me now) is not rate limited.
        """
        friend = self.is_friend(sender)
        if self.settings.friends_only and not friend:
            return self._refuse("friends_only", "friends only: this user takes messages from friends only")
        if rate and not self.rates.allow(sender):
            wait = self.rates.retry_after(sender)
            return self._refuse("rate_limited", f"rate limited: more than {self.rates.rate:g} messages per second; "
                                                f"retry in {wait:.1f} s")
        return ""

    def over_quota(self, sender: str, mine: Usage, strangers: Usage | None, size: int = 0) -> str:
        """"" when one more message of ``size`` content bytes from ``sender`` may be stored, else the refusal.

        ``mine``: what ``sender`` stored within the period; ``strangers``: what every
        sender who is not a friend stored (None when ``sender`` is a friend).
        """
        s = self.settings
        if _over(mine, size, s.sender_max_messages, s.sender_max_bytes):
            return self._refuse("sender_quota", f"quota: you sent {mine.messages} messages ({mine.bytes} bytes) "
                                                f"in the last {s.period:g} s; the limit is {s.sender_max_messages} "
                                                f"messages and {s.sender_max_bytes} bytes")
        if strangers is not None and _over(strangers, size, s.strangers_max_messages, s.strangers_max_bytes):
            return self._refuse("strangers_quota", "quota: this user takes no more messages from strangers "
                                                   f"for now (limit {s.strangers_max_messages} messages and "
                                                   f"{s.strangers_max_bytes} bytes per {s.period:g} s)")
        return ""

    def _refuse(self, kind: str, reason: str) -> str:
        self.refused[kind] += 1
        return reason


def _over(usage: Usage, size: int, max_messages: int, max_bytes: int) -> bool:
    return bool((max_messages and usage.messages + 1 > max_messages)
                or (max_bytes and usage.bytes + size > max_bytes))
