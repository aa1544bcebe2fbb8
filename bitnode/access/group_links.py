"""How a member reaches its group's brokers, and how one node asks another anything about a group.

- :func:`ask_peer`: one request (a group frame in a ``Message`` packet) to another node and its answer
  frame. The peer answers ``Ack`` with an ``ok`` frame (or a ``redirect`` frame: :class:`Redirected`),
  or ``Fail`` with a coded reason that becomes the same typed error here. Anything that keeps the
  answer from coming (offline, unknown address, timeout, a node that is stopping) is
  :class:`~bitnode.access.group_member.BrokerUnreachable`.
- :class:`BrokerChain`: a member's link to a group's brokers. Requests that need the primary
  (subscribe, publish) go to the broker believed to lead, follow redirects, and when a broker does not
  answer move on to the next one by position, telling it which brokers could not be reached
  (``suspects``): that is what lets a backup take over (:mod:`bitnode.access.group_replica`). Fetches go
  to any broker that answers. Every method returns a Deferred of a dict: ``subscribe`` ->
  ``{"head", "term", "leader", "controls": [(seq, blob)]}``, ``fetch`` -> ``{"entries": [(seq, blob)],
  "head", "more", "term", "leader"}``, ``publish`` -> ``{"sequence", "head"}``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred

from bitnode.access.group_member import BrokerUnreachable
from bitnode.access.group_protocol import (
    Frame,
    FrameError,
    Redirected,
    decode_frame,
    refused_error,
)
from bitnode.errors import BitnodeError, NotFound, Unavailable
from bitnode.transport.commands import Command
from bitnode.transport.packet_out import PeerRefused


def answer_frame(frame: Frame, peer: str) -> Frame:
    """An answer frame as it is: ``ok``; a ``redirect`` becomes :class:`Redirected`."""
    if frame.op == "redirect":
        leader = frame.fields.get("leader")
        term = frame.fields.get("term")
        raise Redirected(f"{peer} does not lead the group: {frame.fields.get('reason', '')}",
                         leader if isinstance(leader, str) and leader else None,
                         term if isinstance(term, int) and not isinstance(term, bool) else 0)
    if frame.op != "ok":
        raise FrameError(f"{peer} answered {frame.op!r} instead of ok")
    return frame


async def ask_peer(gateway: Any, peer: str, payload: bytes, timeout: float) -> Frame:
    """Send one frame to ``peer`` and return its answer frame (typed errors otherwise)."""
    try:
        response = await gateway.request(Command.MESSAGE, peer, payload, timeout=timeout)
    except PeerRefused as err:
        refused = refused_error(err.reason, peer)
        if refused is None:  # not answered as group traffic: its groups service is not running
            raise BrokerUnreachable(f"{peer} does not serve groups now: {err.reason}") from None
        if isinstance(refused, Unavailable) and not isinstance(refused, Redirected):
            raise BrokerUnreachable(str(refused)) from None
        raise refused from None
    except BitnodeError as err:
        raise BrokerUnreachable(f"{peer} did not answer: {err}") from None
    return answer_frame(decode_frame(response.payload), peer)


def entries_of(frame: Frame) -> list[tuple[int, bytes]]:
    """``[(seq, blob)]`` of an answer that lists ``sequences`` (one per blob, increasing)."""
    sequences = frame.fields.get("sequences")
    if not isinstance(sequences, list) or len(sequences) != len(frame.blobs) \
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sequences) \
            or sequences != sorted(set(sequences)):
        raise FrameError("an answer must list one increasing sequence number per entry")
    return list(zip(sequences, frame.blobs, strict=True))


def _leader_of(frame: Frame) -> tuple[str, int]:
    leader = frame.fields.get("leader")
    return (leader if isinstance(leader, str) else ""), frame.integer("term", 0)


class BrokerChain:
    """A member's requests to the brokers of one group (see the module doc).

    :param ask: ``ask(peer, op, group_key_id, blobs, **fields) -> Deferred[Frame]`` (an answer frame:
        :func:`ask_peer`, or this node's own broker).
    :param brokers: the group's brokers by position (from its config).
    :param leader: the broker believed to lead (None: position 0).
    :param on_leader: ``on_leader(leader, term)``: a broker said it leads (remember where to ask first).
    """

    def __init__(self, ask: Callable[..., Deferred], group_key_id: str, brokers: tuple[str, ...],
                 leader: Optional[str] = None, term: int = 0,
                 on_leader: Optional[Callable[[str, int], Any]] = None) -> None:
        self.ask = ask
        self.group_key_id = group_key_id
        self.brokers = tuple(brokers)
        self.leader = leader if leader in self.brokers else self.brokers[0]
        self.term = term
        self.suspects: set[str] = set()
        self.on_leader = on_leader
        self.hops = 0

    @property
    def broker(self) -> str:
        """The broker asked first now."""
        return self.leader

    def _after(self, broker: str, skip: set[str]) -> Optional[str]:
        """The next broker by position after ``broker`` that is not in ``skip``."""
        start = self.brokers.index(broker) if broker in self.brokers else -1
        for step in range(1, len(self.brokers) + 1):
            candidate = self.brokers[(start + step) % len(self.brokers)]
            if candidate not in skip:
                return candidate
        return None

    def _found(self, leader: str, term: int) -> None:
        if leader in self.brokers and (leader != self.leader or term > self.term):
            self.leader, self.term = leader, max(term, self.term)
            if self.on_leader is not None:
                self.on_leader(leader, self.term)
        self.suspects.clear()

    def moved(self, leader: str, term: int) -> bool:
        """A broker says it leads from ``term`` on; whether that is news."""
        if leader not in self.brokers or term < self.term or (leader == self.leader and term == self.term):
            return False
        self._found(leader, term)
        return True

    def suspect(self, broker: str) -> None:
        """``broker`` did not answer: the next subscribe starts after it."""
        self.suspects.add(broker)
        if broker == self.leader:
            following = self._after(broker, self.suspects)
            if following is not None:
                self.leader = following

    async def _to_primary(self, op: str, blobs: tuple[bytes, ...] = (), **fields: Any) -> Frame:
        """Ask whoever leads: follow redirects, pass over brokers that do not answer."""
        if all(b in self.suspects for b in self.brokers):
            self.suspects.clear()  # every one failed once: a suspicion orders the tries, it bans nobody
        target: Optional[str] = self.leader if self.leader not in self.suspects else self._after(self.leader,
                                                                                                 self.suspects)
        last_error: Optional[BitnodeError] = None
        lost: set[str] = set()
        for _ in range(3 * len(self.brokers)):
            if target is None:
                break
            self.hops += 1
            extra = {"suspects": sorted(self.suspects)} if op == "subscribe" else {}
            try:
                frame = await self.ask(target, op, self.group_key_id, blobs, **fields, **extra)
            except Redirected as err:
                last_error = err
                if err.leader and err.leader != target and err.leader in self.brokers \
                        and err.leader not in self.suspects:
                    target = err.leader
                elif op == "subscribe":
                    target = self._after(target, self.suspects | {target})
                else:
                    raise  # a publish to a broker that knows no leader: subscribe again first
                continue
            except BrokerUnreachable as err:
                last_error = err
                self.suspect(target)
                target = self._after(target, self.suspects | lost)
                continue
            except NotFound as err:
                # this broker lost the log (a new machine) or never got it: another one has it, unless none does
                last_error = err
                lost.add(target)
                if lost >= set(self.brokers):
                    raise
                target = self._after(target, self.suspects | lost)
                continue
            leader, term = _leader_of(frame)
            self._found(target if op in ("subscribe", "publish") else leader, term)
            return frame
        if isinstance(last_error, Redirected):
            raise last_error
        raise BrokerUnreachable(f"no broker of group {self.group_key_id} answered ({len(self.brokers)} tried): "
                                f"{last_error}")

    def subscribe(self, after: int) -> Deferred:
        """Subscribe at the primary: Deferred[{"head", "term", "leader", "controls"}]."""
        async def run() -> dict:
            frame = await self._to_primary("subscribe", after=after)
            return {"head": frame.integer("head"), "term": frame.integer("term", 0), "leader": self.leader,
                    "controls": entries_of(frame)}

        return Deferred.fromCoroutine(run())

    def publish(self, blob: bytes) -> Deferred:
        """Deferred[{"sequence", "head"}] from the primary."""
        async def run() -> dict:
            frame = await self._to_primary("publish", (blob,))
            return {"sequence": frame.integer("sequence", minimum=1), "head": frame.integer("head")}

        return Deferred.fromCoroutine(run())

    def fetch(self, after: int, limit: int) -> Deferred:
        """Committed entries from the first broker that answers (the leader first):
        Deferred[{"entries", "head", "more", "term", "leader"}]."""
        async def run() -> dict:
            order = [self.leader] + [b for b in self.brokers if b != self.leader]
            last_error: Optional[BitnodeError] = None
            lost = 0
            for broker in order:
                try:
                    frame = await self.ask(broker, "fetch", self.group_key_id, (), after=after, limit=limit)
                except BrokerUnreachable as err:
                    last_error = err
                    self.suspect(broker)
                    continue
                except NotFound as err:  # this broker lost the log or never got it: ask the others
                    last_error, lost = err, lost + 1
                    continue
                leader, term = _leader_of(frame)
                return {"entries": entries_of(frame), "head": frame.integer("head"),
                        "more": bool(frame.fields.get("more")), "term": term, "leader": leader, "from": broker}
            if lost == len(order) and last_error is not None:
                raise last_error  # no broker has the log: the group is gone
            raise BrokerUnreachable(f"no broker of group {self.group_key_id} answered a fetch: {last_error}")

        return Deferred.fromCoroutine(run())

    def unsubscribe(self) -> Deferred:
        """Deferred[{"head"}] (best effort, to the leader)."""
        return self.ask(self.leader, "unsubscribe", self.group_key_id, ()).addCallback(
            lambda frame: {"head": frame.integer("head", 0)})
