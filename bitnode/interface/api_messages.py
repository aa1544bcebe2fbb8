"""API methods of private messages: message_send, message_history, message_conversations_list,
message_receive, and the legacy receive_one_message and broadcast_send_message (send_message is an
alias of message_send).

A message, as these methods answer it (one row of the history)::

    {"seq": 12, "message_id": "9f0c...", "conversation_id": "bob@id.net_8084",
     "message_type": "private_message", "direction": "outgoing" | "incoming",
     "sender": "alice@id.net_8084", "recipient": "bob@id.net_8084", "data": {...},
     "time": 1700000000.1, "stored_time": 1700000000.1,
     "state": "sent" | "acked" | "failed" | "received", "error": ""}

``message_send`` answers OK only once the recipient stored the message and
Acked it; an offline recipient is a 503 and the history keeps the message as
``failed`` (see :mod:`bitnode.chat.messages_service`).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer

from bitnode import globalid
from bitnode.chat.messages_service import PrivateMessagesService, normalize_types
from bitnode.errors import BadRequest
from bitnode.userid.id_service import IdentityService

#: The legacy receive_one_message is one long-poll consumer of its own.
LEGACY_CONSUMER = "legacy-receive-one-message"
LEGACY_TIMEOUT = 60.0


def _party(user_id: Optional[str]) -> Optional[str]:
    """A history filter value: a global id (from a global id, an IDURL or ``master$`` key id) or a group key id."""
    if user_id is None or user_id == "":
        return None
    if not isinstance(user_id, str):
        raise BadRequest("expected a global id, an IDURL or a key id")
    text = user_id.strip()
    if "$" in text and "://" not in text:
        key = globalid.parse_key_id(text)
        return str(key.owner) if key.alias == "master" else str(key)
    return str(globalid.to_global_id(text))


class MessageMethods:
    """Mixin of :class:`bitnode.interface.api.API`."""

    node: Any

    def _messages(self) -> Any:
        return self.node.service_driver.running(PrivateMessagesService)

    def _my_global_id(self) -> Optional[str]:
        identity = self.node.service_driver.installed(IdentityService)
        return identity.my_global_id() if identity is not None else None

    def message_send(self, recipient_id: str, data: Any, ping_timeout: float = 30.0,
                     message_ack_timeout: float = 15.0) -> defer.Deferred:
        """Send an encrypted private message; answers its history row once the recipient or its suppliers have it.

        Online recipient: the row is ``acked`` (the recipient stored it). When
        it cannot be reached (offline, unknown address) or does not acknowledge
        within ``message_ack_timeout``, the sealed message (end-to-end encrypted
        to the recipient, signed by me) is queued on the recipient's suppliers,
        found through its signed ``suppliers:`` DHT record: the row is
        ``queued``. The recipient fetches it when it comes online, stores it
        once, in order, and sends a receipt: the row becomes ``delivered``
        (``message-delivered`` event), also if I was offline then. Suppliers keep
        a queued message up to their ``mailbox-expiry`` (14 days by default) and
        bound what one sender may queue. 503 (row ``failed``) only when no
        supplier of the recipient took it; 409 when the recipient refused it.
        """
        return self._messages().send(recipient_id, data, ping_timeout, message_ack_timeout)

    def broadcast_send_message(self, payload: Any) -> defer.Deferred:
        """Legacy: send ``payload`` to every user this node knows; who got it and who did not."""
        return self._messages().broadcast(payload)

    def message_history(self, recipient_id: Optional[str] = None, sender_id: Optional[str] = None,
                        message_type: Optional[str] = None, offset: int = 0, limit: int = 100) -> defer.Deferred:
        """Stored messages, newest first: ``{"messages": [...], "total": N, "offset": O, "limit": L}``.

        With only ``recipient_id`` (someone other than me) the whole conversation with
        them, both directions; otherwise every id given filters exactly (sender_id=me
        is everything I sent). Nothing given: the whole history.
        """
        service = self._messages()
        recipient, sender = _party(recipient_id), _party(sender_id)
        if message_type is not None:
            message_type = normalize_types([message_type])[0]
        conversation = None
        if recipient is not None and sender is None and recipient != self._my_global_id():
            conversation, recipient = recipient, None
        d = service.message_history(conversation, sender, recipient, message_type, offset, limit)
        return d.addCallback(lambda found: {"messages": found[0], "total": found[1], "offset": offset,
                                            "limit": limit})

    def message_conversations_list(self, message_types: Any = (), offset: int = 0,
                                   limit: int = 100) -> defer.Deferred:
        """Conversations, most recent first: ``{"conversations": [...], "total": N, "offset": O, "limit": L}``."""
        d = self._messages().conversations(message_types or (), offset, limit)
        return d.addCallback(lambda found: {"conversations": found[0], "total": found[1], "offset": offset,
                                            "limit": limit})

    def message_receive(self, consumer_callback_id: str, direction: str = "incoming",
                        message_types: Any = ("private_message", "group_message"),
                        polling_timeout: float = 60.0) -> defer.Deferred:
        """Long-poll: the messages after this consumer's cursor (a list, empty after ``polling_timeout``)."""
        return self._messages().receive(consumer_callback_id, direction, message_types or (), polling_timeout)

    def receive_one_message(self) -> defer.Deferred:
        """Legacy: wait up to 60 s for the next incoming message; a list of at most one."""
        return self._messages().receive(LEGACY_CONSUMER, "incoming", (), LEGACY_TIMEOUT, limit=1)
