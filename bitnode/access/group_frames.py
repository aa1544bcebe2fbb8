"""What this node answers to a group frame from another node (or from itself): one function per kind of asker.

:func:`answer_request` takes a decoded frame (see :mod:`bitnode.access.group_protocol`
for the operations) and returns the answer frame's bytes, or raises a typed
error the caller turns into a ``Fail``. Members' requests and the brokers'
own go to the :class:`~bitnode.access.group_queue.GroupBroker`; pushes,
``moved`` notices and invitations go to this node's memberships.
"""

from __future__ import annotations

from typing import Any

from bitnode.access import group_admin
from bitnode.access.group_protocol import Frame, FrameError, Redirected, encode_frame

MEMBER_OPS = ("subscribe", "unsubscribe", "fetch", "publish")
BROKER_OPS = ("sync", "prepare", "pull", "status")


async def answer_request(service: Any, peer: str, frame: Frame) -> bytes:
    """The answer frame (bytes) to ``frame`` from ``peer``; typed errors for refusals."""
    service.require()
    try:
        return await _answer(service, peer, frame)
    except Redirected as err:
        return encode_frame("redirect", frame.group_key_id, leader=err.leader or "", term=err.term,
                            reason=str(err)[:300])


async def _answer(service: Any, peer: str, frame: Frame) -> bytes:
    broker, group_key_id, op = service.broker, frame.group_key_id, frame.op
    if op == "subscribe":
        suspects = frame.fields.get("suspects", [])
        if not isinstance(suspects, list) or not all(isinstance(s, str) for s in suspects) or len(suspects) > 16:
            raise FrameError("suspects must be a short list of broker ids")
        answer = await broker.subscribe(group_key_id, peer, frame.integer("after", 0), tuple(suspects))
        controls = answer["controls"]
        return encode_frame("ok", group_key_id, [blob for _, blob in controls], sequences=[s for s, _ in controls],
                            head=answer["head"], term=answer["term"], leader=answer["leader"])
    if op == "unsubscribe":
        answer = await broker.unsubscribe(group_key_id, peer)
        return encode_frame("ok", group_key_id, head=answer["head"])
    if op == "fetch":
        batch = await broker.fetch(group_key_id, peer, frame.integer("after"), frame.integer("limit", 1, 1))
        return encode_frame("ok", group_key_id, [blob for _, blob in batch["entries"]],
                            sequences=[s for s, _ in batch["entries"]], head=batch["head"], more=batch["more"],
                            term=batch["term"], leader=batch["leader"])
    if op == "publish":
        if len(frame.blobs) != 1:
            raise FrameError("publish carries exactly one entry")
        answer = await broker.publish(group_key_id, peer, frame.blobs[0])
        return encode_frame("ok", group_key_id, sequence=answer["sequence"], head=answer["head"])
    if op == "host":
        answer = await broker.host(frame.fields.get("config"), peer)
        return encode_frame("ok", group_key_id, **answer)
    if op == "drop":
        answer = await broker.drop(group_key_id, peer)
        return encode_frame("ok", group_key_id, **answer)
    if op in BROKER_OPS:
        fields, blobs = await broker.broker_request(op, group_key_id, peer, frame.fields, frame.blobs)
        return encode_frame("ok", group_key_id, blobs, **fields)
    if op == "push":
        return _take_push(service, peer, frame)
    if op == "moved":
        member = _membership_served_by(service, peer, group_key_id)
        member.moved(peer, frame.integer("term"))
        return encode_frame("ok", group_key_id)
    if op == "invite":
        await group_admin.accept_invite(service, peer, frame.fields)
        return encode_frame("ok", group_key_id)
    raise FrameError(f"a node does not take {op!r} frames")


def _membership_served_by(service: Any, peer: str, group_key_id: str) -> Any:
    """My membership of ``group_key_id``, which ``peer`` must be a broker of."""
    from bitnode.errors import Forbidden, NotFound

    member = service.members.get(group_key_id)
    if member is None or member.destroyed:
        raise NotFound(f"not joined to group {group_key_id}")
    if peer not in member.link.brokers:
        raise Forbidden(f"{peer} is no broker of group {group_key_id}")
    return member


def _take_push(service: Any, peer: str, frame: Frame) -> bytes:
    member = _membership_served_by(service, peer, frame.group_key_id)
    if len(frame.blobs) != 1 or len(frame.blobs[0]) > service.broker_limits().max_entry_bytes:
        raise FrameError("a push carries exactly one entry of an acceptable size")
    member.moved(peer, frame.integer("term", 0))
    member.event("pushed", frame.integer("sequence", minimum=1), frame.blobs[0])
    return encode_frame("ok", frame.group_key_id)
