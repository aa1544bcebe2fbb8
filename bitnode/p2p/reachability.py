"""Can peers connect to this node?  STUN says what is likely, a dial-back through a router confirms.

Two witnesses, asked in this order by :meth:`Reachability.check`:

1. **STUN** (``stun()``): the address a STUN server sees our packets come
   from.  If it is one of this machine's own addresses (``local_addresses()``),
   nothing translates our address: we are probably reachable (``public``).
   If it differs from every one of them, a NAT rewrote it: we are probably
   not (``nat``).  No server configured or none answered: ``unknown``.
2. **Dial-back** (``dial_back()``): a router we ask connects to our listening
   port (see :mod:`bitnode.p2p.proxy_transport_service`).  ``reachable``: it
   got in, whatever STUN thought (a forwarded port); ``unreachable``: it could
   not; ``unknown``: no router could test (none found, none answered).

Each witness has ``timeout`` seconds to answer (no answer: ``unknown``), so a
check takes at most twice that.

The verdict, with the rule in one expression (:func:`decide`): a dial-back
that got an answer decides; otherwise STUN does, and when STUN could not say
either, we assume we are reachable (a node with a public address needs no
router, and there is no router to use anyway).  So a node behind NAT needs no
router to find out it is behind NAT: STUN tells it at once, and a slow or
missing dial-back costs at most ``timeout`` seconds.

The last verdict (:class:`Verdict`: reachable, reason, who decided, what STUN
saw) and the counters are in :meth:`Reachability.status`, shown by
``network_status``.  :meth:`Reachability.external_seen` is told each address
STUN sees later on (the network connector's checks): a different one means
the network changed under us, and the owner checks again.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from bitnode.errors import BitnodeError

PUBLIC, NAT, UNKNOWN = "public", "nat", "unknown"
REACHABLE, UNREACHABLE = "reachable", "unreachable"
#: Default seconds each witness (STUN, the dial-back) may take.
WITNESS_TIMEOUT = 10.0


@dataclass(frozen=True)
class Verdict:
    """A reachability decision: the answer, why, and who gave it."""

    reachable: bool
    reason: str
    decided_by: str  # stun+dial-back, dial-back, stun, assumed, setting, router, not-listening
    stun: str = UNKNOWN  # what STUN suggested: public, nat, unknown
    external_ip: Optional[str] = None
    dial_back: str = UNKNOWN  # reachable, unreachable, unknown (not asked or no answer)
    at: float = 0.0

    def as_dict(self) -> dict:
        """The API shape."""
        return asdict(self)


def normalised(address: str) -> str:
    """An IP address in its canonical text (``::ffff:1.2.3.4`` as ``1.2.3.4``, scope ids dropped)."""
    text = str(address).split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return text
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def stun_says(external_ip: Optional[str], local_addresses: set[str]) -> str:
    """``public`` when STUN saw one of our own addresses, ``nat`` when it saw another, ``unknown`` without one."""
    if not external_ip:
        return UNKNOWN
    return PUBLIC if normalised(external_ip) in {normalised(a) for a in local_addresses} else NAT


def decide(stun: str, dial_back: str) -> tuple[bool, str]:
    """(reachable, decided_by): a dial-back that answered decides, else STUN, else we assume reachable."""
    if dial_back in (REACHABLE, UNREACHABLE):
        return dial_back == REACHABLE, "stun+dial-back" if stun != UNKNOWN else "dial-back"
    if stun != UNKNOWN:
        return stun == PUBLIC, "stun"
    return True, "assumed"


def local_ip_addresses() -> set[str]:
    """Every address of this machine's network interfaces (psutil)."""
    import psutil

    found = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                found.add(normalised(address.address))
    return found


class Reachability:
    """Decides whether peers can connect to us (see the module docstring).

    :param clock: time source (the dial-back deadline, the verdict's time).
    :param stun: ``() -> Deferred[dict]`` with ``ip`` (what a STUN server saw); fails when none answered.
    :param local_addresses: ``() -> set[str]``: this machine's addresses.
    :param dial_back: ``() -> Deferred[(verdict, why)]``, verdict ``reachable``/``unreachable``/``unknown``.
    :param timeout: ``() -> float``: seconds each witness may take.
    """

    def __init__(self, clock: IReactorTime, stun: Callable[[], Deferred], local_addresses: Callable[[], set[str]],
                 dial_back: Callable[[], Deferred], timeout: Callable[[], float] = lambda: WITNESS_TIMEOUT) -> None:
        self.clock = clock
        self._stun = stun
        self._local_addresses = local_addresses
        self._dial_back = dial_back
        self._timeout = timeout
        self.last: Optional[Verdict] = None
        self.counters: Counter[str] = Counter()

    def check(self) -> Deferred:
        """Deferred[(reachable, reason)]: ask STUN, then a router; the verdict is kept in :attr:`last`."""
        return Deferred.fromCoroutine(self._check())

    async def _check(self) -> tuple[bool, str]:
        self.counters["checks"] += 1
        external_ip, stun_note = await self._ask_stun()
        stun = stun_says(external_ip, self._local_addresses())
        self.counters[f"stun_{stun}"] += 1
        dial_back, dial_note = await self._ask_dial_back()
        self.counters[f"dialback_{dial_back}"] += 1
        reachable, decided_by = decide(stun, dial_back)
        if stun == PUBLIC:
            stun_note = f"STUN sees our own address {external_ip}"
        elif stun == NAT:
            stun_note = f"STUN sees us at {external_ip}, an address of none of our interfaces (NAT)"
        reason = f"{'reachable' if reachable else 'not reachable'} ({decided_by}): {stun_note}; {dial_note}"
        return self.record(reachable, reason, decided_by, stun=stun, external_ip=external_ip, dial_back=dial_back)

    def record(self, reachable: bool, reason: str, decided_by: str, **facts: Any) -> tuple[bool, str]:
        """Keep a verdict (also one reached without asking anyone: a setting, a router); (reachable, reason)."""
        previous = self.last
        self.last = Verdict(bool(reachable), reason, decided_by, at=self.clock.seconds(), **facts)
        if previous is not None and previous.reachable != self.last.reachable:
            self.counters["changes"] += 1
        return self.last.reachable, reason

    def external_seen(self, ip: str) -> bool:
        """STUN saw us at ``ip`` (a later check): True when that is news since the last verdict (check again)."""
        last = self.last
        if last is None or last.decided_by not in ("stun+dial-back", "stun", "dial-back", "assumed"):
            return False  # not decided from the network (a setting, a router, no port): nothing to redo
        if last.external_ip is not None and normalised(ip) == normalised(last.external_ip):
            return False
        if last.external_ip is None and stun_says(ip, self._local_addresses()) == (PUBLIC if last.reachable else NAT):
            return False  # STUN could not say then; now it agrees with what we decided
        self.counters["network_changes"] += 1
        return True

    def status(self) -> dict:
        """The last verdict and the counters."""
        counters = ("checks", "stun_public", "stun_nat", "stun_unknown", "dialback_reachable",
                    "dialback_unreachable", "dialback_unknown", "changes", "network_changes")
        return {"last": self.last.as_dict() if self.last is not None else None,
                **{name: self.counters[name] for name in counters}}

    # -- the witnesses --------------------------------------------------------------------

    async def _ask_stun(self) -> tuple[Optional[str], str]:
        try:
            answer = await self._within(self._stun)
        except defer.TimeoutError:
            return None, f"no STUN answer within {self._timeout():g}s"
        except BitnodeError as err:
            return None, f"STUN could not say: {err}"
        return str(answer["ip"]), ""

    async def _ask_dial_back(self) -> tuple[str, str]:
        try:
            verdict, why = await self._within(self._dial_back)
        except defer.TimeoutError:
            return UNKNOWN, f"no dial-back answer within {self._timeout():g}s"
        except BitnodeError as err:
            return UNKNOWN, f"no dial-back: {err}"
        return (verdict if verdict in (REACHABLE, UNREACHABLE) else UNKNOWN), why

    def _within(self, ask: Callable[[], Deferred]) -> Deferred:
        """``ask()``, cancelled (TimeoutError) after ``timeout`` seconds."""
        d = defer.maybeDeferred(ask)
        return d.addTimeout(float(self._timeout()), self.clock)
