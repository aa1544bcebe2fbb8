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

A ``delivery_receipt`` (a recipient saying my queued messages reached it) is
opened the same way but not stored: ``on_receipt(opened)`` records it, then it
is Acked. A message fetched from my suppliers' mailboxes (``queued=True``) goes
the same way without the rate limit, and its sender is owed a receipt (noted
with the message, in one transaction).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bitnode.chat import history as hist
from bitnode.chat.history import MessageHistory
from bitnode.chat.inbox_limits import InboxLimits, Usage
from bitnode.chat.message_crypto import DELIVERY_RECEIPT, peek
from bitnode.errors import BitnodeError, Unavailable
from bitnode.transport.commands import Command

Reply = Callable[[Any, Command, str], Any]
#: How :meth:`Inbox.receive`'s outcome starts for a message that did not verify or decrypt.
REJECTED = "rejected: "
#: How it starts for a message that cannot be judged now (its sender's identity could not be fetched).
LATER = "later: "


class SenderUnknownForNow(Unavailable):
    """The sender's identity (its key) could not be fetched now: the message can be neither opened nor refused.

    A message fetched from a mailbox stays queued there for a later round instead of being dropped as forged.
    """


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
    :param counts: the service's counters (received, duplicates, rejected, deferred).
    :param on_receipt: ``on_receipt(opened)`` -> Deferred, for a delivery receipt.
    """

    log = Logger()

    def __init__(self, run_in_thread: Callable[..., defer.Deferred], limits: InboxLimits,
                 history: Callable[[], MessageHistory], open_message: Callable[[Any], Any],
                 friends: Callable[[], list[str]], on_stored: Callable[[dict], None], counts: dict,
                 now: Callable[[], float], on_receipt: Callable[[Any], Any] = lambda opened: None):
        self.run = run_in_thread
        self.limits = limits
        self.history = history
        self.open_message = open_message
        self.friends = friends
        self.on_stored = on_stored
        self.counts = counts
        self.now = now
        self.on_receipt = on_receipt
        self._storing = defer.DeferredLock()

    async def receive(self, packet: Any, reply: Reply, queued: bool = False) -> str:
        """Handle one ``Message`` packet (``queued``: a message fetched from a mailbox) to its answer.

        The outcome: "stored", "duplicate" (stored before), "receipt", the refusal of a limit the sender was
        told, ``"rejected: <why>"`` when the message did not verify or decrypt, or ``"later: <why>"`` when its
        sender's identity could not be fetched now (:class:`SenderUnknownForNow`).
        """
        sender = packet.creator_id
        refusal = self.limits.admit(sender, rate=not queued)
        if not refusal:
            refusal = await self._quota_refusal(packet, 0)
        if refusal:
            self.log.info("message {id} from {who} refused: {why}", id=packet.packet_id, who=sender, why=refusal)
            await reply(packet, Command.FAIL, refusal)
            return refusal
        try:
            opened = await self.open_message(packet)
        except SenderUnknownForNow as err:
            self.counts["deferred"] += 1
            self.log.info("message {id} from {who} not judged now: {err}", id=packet.packet_id, who=sender, err=err)
            await reply(packet, Command.FAIL, str(err))
            return f"{LATER}{err}"
        except BitnodeError as err:
            self.counts["rejected"] += 1
            self.log.info("message {id} from {who} refused: {err}", id=packet.packet_id, who=sender, err=err)
            await reply(packet, Command.FAIL, str(err))
            return f"{REJECTED}{err}"
        if opened.header.message_type == DELIVERY_RECEIPT:
            await defer.maybeDeferred(self.on_receipt, opened)
            await reply(packet, Command.ACK, "")
            return "receipt"
        outcome = await self._storing.run(lambda: defer.Deferred.fromCoroutine(self._store(packet, opened, queued)))
        if isinstance(outcome, str):
            await reply(packet, Command.FAIL, outcome)
            return outcome
        row, created = outcome
        await reply(packet, Command.ACK, "")
        if not created:
            self.counts["duplicates"] += 1
            return "duplicate"
        self.counts["received"] += 1
        self.on_stored(row)
        return "stored"

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

    async def _store(self, packet: Any, opened: Any, queued: bool) -> tuple[dict, bool] | str:
        header = opened.header
        refusal = await self._quota_refusal(packet, _content_size(opened.data))
        if refusal:
            return refusal
        return await self.run(
            self.history().add, message_id=header.message_id, conversation_id=header.sender,
            direction=hist.INCOMING, sender=header.sender, recipient=header.recipient,
            message_type=header.message_type, data=opened.data, time=header.time,
            stored_time=self.now(), state=hist.RECEIVED, receipt_owed=queued)
