"""How a member reaches its group's broker, and how a broker pushes to a member.

- :class:`RemoteBrokerLink`: the broker is another node. Each request is a
  group frame (:mod:`bitnode.access.group_protocol`) in a ``Message`` packet;
  the broker answers ``Ack`` with an ``ok`` frame, or ``Fail`` with a coded
  reason that becomes the same typed error here. Anything that keeps the
  answer from coming (offline, unknown address, timeout, a broker that is
  stopping) is :class:`~bitnode.access.group_member.BrokerUnreachable`.
  ``subscribe`` first pings the broker with our identity: a node drops
  packets from senders it does not know yet.
- :class:`LocalBrokerLink`: the broker is this node (the creator's own
  membership): the same calls, straight to the :class:`GroupBroker`.
- :func:`push_to_member`: the broker side of a push to another node.

Every method returns a Deferred; the member only ever sees dicts:
``subscribe`` -> ``{"head"}``, ``fetch`` -> ``{"entries": [(sequence, blob)],
"head", "more"}``, ``publish`` -> ``{"sequence", "head"}``.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred

from bitnode.access.group_member import BrokerUnreachable
from bitnode.access.group_protocol import Frame, FrameError, decode_frame, encode_frame, refused_error
from bitnode.errors import BitnodeError, Unavailable
from bitnode.transport.commands import Command
from bitnode.transport.packet_out import PeerRefused


async def _request(gateway: Any, peer: str, payload: bytes, timeout: float) -> Frame:
    """Send one frame to ``peer`` and return its ``ok`` answer (typed errors otherwise)."""
    try:
        response = await gateway.request(Command.MESSAGE, peer, payload, timeout=timeout)
    except PeerRefused as err:
        refused = refused_error(err.reason, peer)
        if refused is None:  # not answered as group traffic: its groups service is not running
            raise BrokerUnreachable(f"{peer} does not serve groups now: {err.reason}") from None
        if isinstance(refused, Unavailable):
            raise BrokerUnreachable(str(refused)) from None
        raise refused from None
    except BitnodeError as err:
        raise BrokerUnreachable(f"{peer} did not answer: {err}") from None
    frame = decode_frame(response.payload)
    if frame.op != "ok":
        raise FrameError(f"{peer} answered {frame.op!r} instead of ok")
    return frame


def _batch(frame: Frame) -> dict:
    sequences = frame.fields.get("sequences")
    if not isinstance(sequences, list) or len(sequences) != len(frame.blobs) \
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sequences):
        raise FrameError("a fetch answer must list one sequence number per entry")
    return {"entries": list(zip(sequences, frame.blobs, strict=True)), "head": frame.integer("head"),
            "more": bool(frame.fields.get("more"))}


class RemoteBrokerLink:
    """A member's requests to the broker of ``group_key_id`` on node ``broker``, over ``gateway``.

    ``timeout``: seconds to wait for each answer, or a function giving them
    (read at each request, so a changed setting applies at once).
    """

    def __init__(self, gateway: Any, group_key_id: str, broker: str, timeout: float | Callable[[], float]) -> None:
        self.gateway = gateway
        self.group_key_id = group_key_id
        self.broker = broker
        self._timeout = timeout

    @property
    def timeout(self) -> float:
        """Seconds the next request waits for its answer."""
        return float(self._timeout() if callable(self._timeout) else self._timeout)

    def _ask(self, op: str, blobs: tuple[bytes, ...] = (), **fields: Any) -> Deferred:
        payload = encode_frame(op, self.group_key_id, blobs, **fields)
        return Deferred.fromCoroutine(_request(self.gateway, self.broker, payload, self.timeout))

    def subscribe(self, after: int) -> Deferred:
        """Introduce ourselves, then subscribe: Deferred[{"head"}]."""
        async def run() -> dict:
            try:
                await self.gateway.ping(self.broker, timeout=self.timeout)
            except BitnodeError as err:
                raise BrokerUnreachable(f"{self.broker} did not answer a ping: {err}") from None
            frame = await self._ask("subscribe", after=after)
            return {"head": frame.integer("head")}

        return Deferred.fromCoroutine(run())

    def fetch(self, after: int, limit: int) -> Deferred:
        """Deferred[{"entries", "head", "more"}]."""
        return self._ask("fetch", after=after, limit=limit).addCallback(_batch)

    def publish(self, blob: bytes) -> Deferred:
        """Deferred[{"sequence", "head"}]."""
        return self._ask("publish", (blob,)).addCallback(
            lambda frame: {"sequence": frame.integer("sequence", minimum=1), "head": frame.integer("head")})

    def unsubscribe(self) -> Deferred:
        """Deferred[{"head"}]."""
        return self._ask("unsubscribe").addCallback(lambda frame: {"head": frame.integer("head")})


class LocalBrokerLink:
    """The creator's own membership: requests go straight to this node's :class:`GroupBroker`."""

    def __init__(self, broker: Any, group_key_id: str, me: str) -> None:
        self.broker = broker
        self.group_key_id = group_key_id
        self.me = me

    def subscribe(self, after: int) -> Deferred:
        """Deferred[{"head"}]."""
        return self.broker.subscribe(self.group_key_id, self.me)

    def fetch(self, after: int, limit: int) -> Deferred:
        """Deferred[{"entries", "head", "more"}]."""
        return self.broker.fetch(self.group_key_id, self.me, after, limit)

    def publish(self, blob: bytes) -> Deferred:
        """Deferred[{"sequence", "head"}]."""
        return self.broker.publish(self.group_key_id, self.me, blob)

    def unsubscribe(self) -> Deferred:
        """Deferred[{"head"}]."""
        return self.broker.unsubscribe(self.group_key_id, self.me)


def push_to_member(gateway: Any, member: str, group_key_id: str, sequence: int, blob: bytes,
                   timeout: float) -> Deferred:
    """Push one entry to ``member``; fires once it Acked (a refusal is its typed error)."""
    payload = encode_frame("push", group_key_id, (blob,), sequence=sequence)
    return Deferred.fromCoroutine(_request(gateway, member, payload, timeout))
