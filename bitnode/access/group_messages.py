"""A member's group messages: sealing and sending one, and taking the log's entries in order.

Functions over :class:`~bitnode.access.groups_service.GroupsService` (its keyring, stores, memberships and the
messages service), kept apart from the service's wiring:

- **send**: the data sealed with the group's current key generation and signed with my master key, published
  through my membership (OK once a majority of the brokers hold it). A broker that refuses the generation (a
  member was removed meanwhile) makes me learn the new roster and seal again, the same message id.
- **take_entry**: one entry of the log, in the log's order: a control entry updates the roster I believe
  (and a removal of me ends my membership), a message is opened and stored in the message history (once:
  the history keeps one copy of a message id) and kept in the recent tail for the catalog backup.
"""

from __future__ import annotations

import secrets
from typing import Any, Optional

from bitnode.access import group_roster
from bitnode.chat import history as hist
from bitnode.chat.message_crypto import GROUP_MESSAGE, SEAL_OVERHEAD, MessageHeader, MessageRejected
from bitnode.errors import BadRequest, Conflict, Forbidden, Unavailable

#: How long message_send_group waits for my own message to take its place in my history.
DELIVERY_WAIT = 10.0


async def send(service: Any, group_key_id: str, data: dict) -> dict:
    """See the module doc; my history row of the message plus ``sequence`` and ``group_key_id``."""
    member = service.members[group_key_id]
    me, keyring = service.me(), service.keyring
    header = MessageHeader(GROUP_MESSAGE, me, group_key_id, secrets.token_hex(16), service.ctx.clock.seconds())
    timeout = service.setting("send-timeout")
    sealed = await keyring.seal(group_key_id, header, data)
    if len(sealed) > service.max_blob():
        raise BadRequest(f"message is larger than {service.max_blob() - SEAL_OVERHEAD} bytes")
    try:
        sequence = await member.publish(sealed, timeout)
    except Conflict as err:
        if "key generation" not in str(err):
            raise
        # someone was removed meanwhile: learn the new roster (subscribe again), seal with the new key
        service.counters["resealed"] += 1
        member.event("moved")
        await member.when_settled(timeout)
        sealed = await keyring.seal(group_key_id, header, data)
        sequence = await member.publish(sealed, timeout)
    row = await member.wait_delivered(sequence, DELIVERY_WAIT)
    if row is None:  # stored already (or not yet): the brokers have it, which is what OK means
        row = {"message_id": header.message_id, "conversation_id": group_key_id, "message_type": GROUP_MESSAGE,
               "direction": hist.OUTGOING, "sender": me, "recipient": group_key_id, "data": data,
               "time": header.time, "state": hist.ACKED, "error": ""}
    return dict(row, sequence=sequence, group_key_id=group_key_id)


async def take_entry(service: Any, group_key_id: str, sequence: int, blob: bytes) -> Optional[dict]:
    """One entry of the log, in order (see the module doc); the history row of a message, None for a control."""
    store, keyring = service.require(), service.keyring
    if group_roster.is_control(blob):
        me = service.me()
        before = keyring.rosters.get(group_key_id)
        after = await keyring.on_entry(group_key_id, service.configs[group_key_id].creator, sequence, blob)
        member = service.members.get(group_key_id)
        if before is not None and before.is_member(me) and not after.is_member(me) and member is not None:
            member.removed(Forbidden(f"{me} was removed from group {group_key_id} (entry {sequence})"))
        return None
    row = await _store_message(service, group_key_id, sequence, blob)
    keep = service.setting_int("backup-history-messages")
    await service.ctx.run_in_thread(store.keep_recent, group_key_id, sequence, blob, keep)
    return row


async def restore_entry(service: Any, group_key_id: str, sequence: int, blob: bytes) -> None:
    """A backed-up entry: a message goes to the history (the roster comes back from the brokers)."""
    if not group_roster.is_control(blob):
        await take_entry(service, group_key_id, sequence, blob)


async def _store_message(service: Any, group_key_id: str, sequence: int, blob: bytes) -> Optional[dict]:
    """Open one message and store it in the message history; its row (or the row stored before)."""
    if len(blob) > service.max_blob():
        raise MessageRejected(f"group message larger than {service.max_blob() - SEAL_OVERHEAD} bytes")
    opened = await service.keyring.open(group_key_id, blob)
    if not isinstance(opened.data, dict):
        raise MessageRejected("group message content must be a JSON object")
    header, me = opened.header, service.me()
    messages = service.message_service()
    history = messages.history if messages is not None else None
    if history is None:
        raise Unavailable(f"service_private_messages is not running: group message {sequence} kept for later")
    mine = header.sender == me
    row, created = await service.ctx.run_in_thread(
        history.add, message_id=header.message_id, conversation_id=group_key_id,
        direction=hist.OUTGOING if mine else hist.INCOMING, sender=header.sender, recipient=group_key_id,
        message_type=GROUP_MESSAGE, data=opened.data, time=header.time, stored_time=service.ctx.clock.seconds(),
        state=hist.ACKED if mine else hist.RECEIVED)
    if not created:
        return row
    row = dict(row, sequence=sequence, group_key_id=group_key_id)
    messages.notify_stored(row)
    service.ctx.events.publish("group-message-sent" if mine else "group-message-received", row)
    return row
