"""Receiving private messages: limits first, then the sender's signature and the decryption, then the history.

For one ``Message`` packet (its signature already checked by the transport, so
``packet.creator_id`` is who sent it), :meth:`Inbox.receive`:

1. asks :class:`~bitnode.chat.inbox_limits.InboxLimits` whether the sender may
   send now at all (friends only, rate) — nothing else is spent on a refused one;
2. checks the sender's quota (and the strangers' quota) with what the history
   already holds, before the costly work; a message already stored (a sender
   retrying after a lost ``Ack``) is not counted twice;
3. verifies and decrypts it (``open_message``: the sealed message must name the
   packet's sender as its sender and me as its recipient);
4. checks the quota again with the message's real size and stores it, one
   message at a time (so two messages racing cannot both slip under a quota);
5. answers ``Ack`` once it is stored (``Fail`` with the reason otherwise) and
   tells ``on_stored`` about a new row.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bitnode.chat import history as hist
from bitnode.chat.history import MessageHistory
from bitnode.chat.inbox_limits import InboxLimits, Usage
from bitnode.chat.message_crypto import peek
from bitnode.errors import BitnodeError
from bitnode.transport.commands import Command

Reply = Callable[[Any, Command, str], Any]


def _content_size(data: Any) -> int:
    """The bytes the history stores for a message's content (its JSON text)."""
    return len(json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8"))


def _usage(history: MessageHistory, since: float, sender: str, friends: list[str] | None,
           message_id: str) -> tuple[Usage, Usage | None, bool]:
    """(sender's usage, strangers' usage or None for a friend, already stored). Worker thread."""
    mine = Usage(*history.incoming_usage(since, sender))
    strangers = Usage(*history.incoming_usage(since, None, friends)) if friends is not None else None
    return mine, strangers, history.has_incoming(sender, message_id)


class Inbox:
    """The receiving side of service_private_messages (see the module docstring).

    :param history: the open history (raises Unavailable when the service stops).
    :param open_message: ``open_message(packet)`` -> Deferred of the opened message (header, data).
    :param friends: my friends' global ids now.
    :param on_stored: ``on_stored(row)`` for each newly stored message.
    :param counts: the service's counters (received, duplicates, rejected).
    """

    log = Logger()

    def __init__(self, run_in_thread: Callable[..., defer.Deferred], limits: InboxLimits,
                 history: Callable[[], MessageHistory], open_message: Callable[[Any], Any],
                 friends: Callable[[], list[str]], on_stored: Callable[[dict], None], counts: dict,
                 now: Callable[[], float]):
        self.run = run_in_thread
        self.limits = limits
        self.history = history
        self.open_message = open_message
        self.friends = friends
        self.on_stored = on_stored
        self.counts = counts
        self.now = now
        self._storing = defer.DeferredLock()

    async def receive(self, packet: Any, reply: Reply) -> None:
        """Handle one ``Message`` packet to its answer."""
        sender = packet.creator_id
        refusal = self.limits.admit(sender)
        if not refusal:
            refusal = await self._quota_refusal(packet, 0)
        if refusal:
            self.log.info("message {id} from {who} refused: {why}", id=packet.packet_id, who=sender, why=refusal)
            await reply(packet, Command.FAIL, refusal)
            return
        try:
            opened = await self.open_message(packet)
        except BitnodeError as err:
            self.counts["rejected"] += 1
            self.log.info("message {id} from {who} refused: {err}", id=packet.packet_id, who=sender, err=err)
            await reply(packet, Command.FAIL, str(err))
            return
        outcome = await self._storing.run(lambda: defer.Deferred.fromCoroutine(self._store(packet, opened)))
        if isinstance(outcome, str):
            await reply(packet, Command.FAIL, outcome)
            return
        row, created = outcome
        await reply(packet, Command.ACK, "")
        if not created:
            self.counts["duplicates"] += 1
            return
        self.counts["received"] += 1
        self.on_stored(row)

    async def _quota_refusal(self, packet: Any, size: int) -> str:
        """"" when the sender's message of ``size`` content bytes fits the quotas (or is already stored)."""
        sender = packet.creator_id
        try:
            message_id = peek(packet.payload).message_id  # not trusted yet: only to spot a repeat
        except BitnodeError:
            message_id = ""
        friends = self.friends()
        stranger = sender not in friends
        mine, strangers, stored = await self.run(_usage, self.history(), self.limits.since(), sender,
                                                 friends if stranger else None, message_id)
        if stored:
            return ""
        return self.limits.over_quota(sender, mine, strangers, size)

    async def _store(self, packet: Any, opened: Any) -> tuple[dict, bool] | str:
        header = opened.header
        refusal = await self._quota_refusal(packet, _content_size(opened.data))
        if refusal:
            return refusal
        return await self.run(
            self.history().add, message_id=header.message_id, conversation_id=header.sender,
            direction=hist.INCOMING, sender=header.sender, recipient=header.recipient,
            message_type=header.message_type, data=opened.data, time=header.time,
            stored_time=self.now(), state=hist.RECEIVED)
