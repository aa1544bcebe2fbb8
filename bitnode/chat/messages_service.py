"""service_private_messages: end-to-end encrypted private messages, their history and their stream.

Sending (:meth:`PrivateMessagesService.send`, the API's ``message_send``):

1. the recipient may be a global id, an IDURL, a key id (its owner is meant)
   or a nickname (looked up in the DHT through ``service_nicknames``, which
   must be running for that);
2. their identity is fetched (cached, else from their identity server) and
   the data (a JSON object; a plain string is sent as ``{"message": text}``)
   is sealed for their RSA key and signed with my master key
   (:mod:`bitnode.chat.message_crypto`);
3. the message is stored in the history in state ``sent`` *before* anything
   goes out;
4. unless a packet came from the recipient within the online window, they
   are pinged first (an ``Identity`` packet, which also introduces me to a
   peer that does not know me yet), waiting up to ``ping_timeout`` seconds
   (0: never ping);
5. a ``Message`` packet is sent and the recipient's ``Ack`` awaited for up to
   ``message_ack_timeout`` seconds. The recipient Acks only after it stored
   the message.

**Offline recipients: queued on their suppliers.** If the ping or the
``Ack`` does not come in time, the sealed message goes to the recipient's
suppliers, found in its signed ``suppliers:`` DHT record
(:mod:`bitnode.chat.offline_delivery`, :mod:`bitnode.supplier.mailbox`): the
row becomes ``queued`` and the API answers OK with it. The recipient fetches
its queue when it is back and stores each message once, in order; its
receipt makes the row ``delivered`` (``message-delivered``), or ``failed``
when it refused the message (a limit), or ``failed`` when no receipt came
within ``queued-expiry`` (15 days; the suppliers drop what waits longer), so
a message is never ``queued`` for ever. Only when no supplier takes the
message is the row ``failed`` at once and the answer 503 ``recipient ... is
offline, message not delivered``. A ``Fail`` from the recipient (it could not
verify or decrypt the message) is a 409 and also ``failed``; an ``Ack``
makes the row ``acked``. A send still waiting when the node stopped is marked
``failed`` when the service starts again.

Receiving (a ``Message`` packet, :mod:`bitnode.chat.inbox`): first the
limits on what others may make me store (:mod:`bitnode.chat.inbox_limits`:
friends only, a rate and a quota per sender, a quota for all strangers; the
settings below, refusals counted in ``inbox_refused``); then the sealed
message must name the packet's sender as its sender and me as its recipient,
verify with the sender's RSA key and decrypt with mine; otherwise the sender
gets a ``Fail`` with the reason and nothing is stored. A good message is
stored (once: a repeated message id from the same sender is only Acked
again), then Acked, then published.

Publishing: ``message-received`` (incoming, stored) and ``message-sent``
(outgoing, Acked) go on the node's event bus with the message as data; the
WebSocket pushes them to every client twice, as the usual ``event`` frame and
as ``{"type": "stream_message", "seq": N, "payload": <message>}`` (N is the
event's sequence id, so ``?since=N`` resumes the stream). A failed outgoing
message is published as ``message-failed`` (an event only).

Long-poll (:meth:`PrivateMessagesService.receive`, the API's
``message_receive``): each consumer id has a cursor in the history; a new
consumer starts at the end (older messages are in ``message_history``). A
poll answers at once with messages after the cursor that match its
direction and types (up to 100), or waits up to ``polling_timeout`` seconds
for one; a new poll by the same consumer answers the older one empty.
Outgoing messages enter the stream when they are stored (state ``sent``).

History files: ``metadata/messages.sqlite`` (:mod:`bitnode.chat.history`).
"""

from __future__ import annotations

import json
import os
import secrets
from types import SimpleNamespace
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from bitnode import globalid
from bitnode.chat import history as hist
from bitnode.chat.history import MessageHistory
from bitnode.chat.inbox import LATER, REJECTED, Inbox, SenderUnknownForNow
from bitnode.chat.inbox_limits import InboxLimits, InboxSettings
from bitnode.chat.message_crypto import (
    DELIVERY_RECEIPT,
    PRIVATE_MESSAGE,
    SEAL_OVERHEAD,
    MessageHeader,
    MessageRejected,
    normalize_data,
    open_message,
    peek,
    seal,
)
from bitnode.chat.message_stream import MAX_POLLING_TIMEOUT, POLL_LIMIT, MessageStream, normalize_types
from bitnode.chat.nickname_holder import validate_nickname
from bitnode.chat.nickname_service import NicknameService
from bitnode.chat.offline_delivery import (
    MailboxClient,
    OfflineDelivery,
    QueuedExpiry,
    Receipts,
    parse_receipt,
)
from bitnode.chat.ports import FriendsDirectory
from bitnode.customer.suppliers_record import lookup_suppliers
from bitnode.dht.dht_service import DHTService
from bitnode.errors import BadRequest, BitnodeError, Conflict, NotFound, Unavailable
from bitnode.main.options import BOOLEAN, DISK_SPACE, FLOAT, INTEGER, Option
from bitnode.p2p.network_service import NetworkService
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.storage.ports import SupplierProvider
from bitnode.supplier.mailbox_wire import QueuedMessage, is_notify
from bitnode.transport.commands import Command
from bitnode.transport.gateway_service import GatewayService
from bitnode.transport.packet_out import PeerRefused
from bitnode.userid.id_service import IdentityService

PREFIX = "services/private-messages/"
#: Seconds a delivery receipt waits for the ping and for the Ack before it is queued instead.
RECEIPT_PING, RECEIPT_ACK = 10.0, 15.0


class PrivateMessagesService(Service):
    """Private messages of one node: send, receive, history, stream."""

    name = "service_private_messages"
    requires = {"gateway": GatewayService, "network": NetworkService, "identity": IdentityService}
    optional = {"nicknames": NicknameService, "friends": FriendsDirectory, "dht": DHTService,
                "suppliers": SupplierProvider}
    description = "End-to-end encrypted private messages with history (sqlite) and a message stream"
    options = (
        Option(PREFIX + "max-message-size", DISK_SPACE, 256 * 1024,
               "Largest message content (its JSON text) sent or accepted.", minimum=1024, maximum=8 * 1024 ** 2),
        Option(PREFIX + "friends-only", BOOLEAN, False, "Take private messages from my friends only."),
        Option(PREFIX + "sender-rate", FLOAT, 2.0,
               "Messages per second one user may send me on average (0: no limit).", minimum=0),
        Option(PREFIX + "sender-burst", INTEGER, 30, "Messages one user may send me at once.", minimum=1),
        Option(PREFIX + "sender-max-messages", INTEGER, 2000,
               "Messages kept from one user per quota period (0: no limit).", minimum=0),
        Option(PREFIX + "sender-max-bytes", DISK_SPACE, 32 * 1024 ** 2,
               "Bytes of messages kept from one user per quota period (0: no limit).", minimum=0),
        Option(PREFIX + "strangers-max-messages", INTEGER, 10_000,
               "Messages kept from all users who are not my friends together per quota period (0: no limit).",
               minimum=0),
        Option(PREFIX + "strangers-max-bytes", DISK_SPACE, 128 * 1024 ** 2,
               "Bytes of messages kept from all users who are not my friends per quota period (0: no limit).",
               minimum=0),
        Option(PREFIX + "quota-period", FLOAT, 86400.0, "Seconds the message quotas count over.",
               minimum=60.0, maximum=365 * 86400.0),
        Option(PREFIX + "mailbox-check-interval", FLOAT, 300.0,
               "Seconds between looks for messages queued on my suppliers while I was offline (also at start, "
               "on reconnect and when my suppliers change); owed delivery receipts are retried as often.",
               minimum=5.0, maximum=86400.0),
        Option(PREFIX + "queued-expiry", FLOAT, 15 * 86400.0,
               "Seconds a message I queued on an offline recipient's suppliers waits for its delivery receipt "
               "before it is marked failed (suppliers drop queued messages after their mailbox expiry, 14 days "
               "by default; a receipt that still comes later marks it delivered).", minimum=60.0,
               maximum=365 * 86400.0),
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.history: Optional[MessageHistory] = None
        self.history_file = os.path.join(ctx.basedir.metadata, "messages.sqlite")
        self._gateway: Any = None
        self.stream = MessageStream(ctx.clock, self._query, lambda: self.history)
        self._work: set[Deferred] = set()
        self._queries: set[Deferred] = set()
        self._counts = {"sent": 0, "acked": 0, "failed": 0, "received": 0, "duplicates": 0, "rejected": 0,
                        "queued": 0, "delivered": 0, "deferred": 0, "expired": 0}
        self._route: Any = None
        self._notices: Any = None
        self._unsubscribe: Any = None
        self.limits = InboxLimits(ctx.clock, self._inbox_settings(), self._is_friend)
        self.inbox = Inbox(ctx.run_in_thread, self.limits, self._require, self._open, self._friends,
                           self._stored_incoming, self._counts, ctx.clock.seconds, self._receipt)
        self.receipts = Receipts(lambda limit: self._query(self._require().receipts_owed, limit),
                                 lambda sender, ids: ctx.run_in_thread(self._require().receipts_sent, sender, ids),
                                 self._send_receipt)
        self.expiry = QueuedExpiry(ctx.clock, ctx.run_in_thread, lambda: self.history,
                                   lambda: ctx.settings.get(PREFIX + "queued-expiry"), self._expired)
        self.offline = OfflineDelivery(MailboxClient(lambda: self._gateway), self._their_suppliers,
                                       self._my_suppliers, self._take_queued, self.receipts)

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> Deferred:
        """Open the history (off the reactor) and take the ``Message`` packets of the gateway."""
        gateway = self.deps.gateway.require_gateway()
        d = self.ctx.run_in_thread(_open_history, self.history_file)

        def opened(result: tuple[MessageHistory, int]) -> None:
            self.history, self.stream.last_seq = result
            self._gateway = gateway
            self.limits.configure(self._inbox_settings())
            self.ctx.settings.add_listener(PREFIX, self._settings_changed)
            self._route = gateway.router.add(Command.MESSAGE, self._on_message, owner=self.name)
            self._notices = gateway.router.add(Command.CORRESPONDENT, self._on_notice, owner=self.name,
                                               accepts=lambda packet: is_notify(packet.payload))
            self._unsubscribe = self.ctx.events.subscribe(self._event)
            self._start_timers()

        return d.addCallback(opened)

    def _start_timers(self) -> None:
        # my mailbox rounds and the expiry of what I queued on others' run on the same interval
        interval = self.ctx.settings.get(PREFIX + "mailbox-check-interval")
        self.offline.start(self.ctx.clock, interval)
        self.expiry.start(interval)

    def stop(self) -> Deferred:
        """Release the ``Message`` command, end sends and polls in progress, close the history."""
        self.ctx.settings.remove_listener(PREFIX, self._settings_changed)
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.offline.stop()
        self.expiry.stop()
        for route in (self._route, self._notices):
            if route is not None:
                route.remove()
        self._route = self._notices = None
        self._gateway = None
        self.stream.close()
        work = list(self._work)
        for d in work:
            d.cancel()
        history, self.history = self.history, None

        def close(_: Any) -> Optional[Deferred]:
            return self.ctx.run_in_thread(history.close) if history is not None else None

        # reads in progress finish first: the history is closed only when nobody uses it
        pending = work + list(self._queries)
        return defer.DeferredList(pending, consumeErrors=True).addCallback(close)

    def status(self) -> dict:
        """Counters for service_info."""
        return dict(self._counts, history_last_seq=self.stream.last_seq, consumers=len(self.stream.consumers),
                    inbox_refused=dict(self.limits.refused), offline_delivery=self.offline.status(),
                    receipts=dict(self.receipts.counts))

    def _require(self) -> MessageHistory:
        if self.history is None or self._gateway is None:
            raise Unavailable(f"{self.name} is not running")
        return self.history

    def _my_id(self) -> str:
        return self.deps.identity.require_global_id()

    def _my_key(self) -> Any:
        return self.deps.identity.master_private_key()

    # -- the inbox's limits (bitnode.chat.inbox_limits) ------------------------------------

    def _inbox_settings(self) -> InboxSettings:
        get = self.ctx.settings.get
        return InboxSettings(
            friends_only=get(PREFIX + "friends-only"), sender_rate=get(PREFIX + "sender-rate"),
            sender_burst=get(PREFIX + "sender-burst"), sender_max_messages=get(PREFIX + "sender-max-messages"),
            sender_max_bytes=get(PREFIX + "sender-max-bytes"),
            strangers_max_messages=get(PREFIX + "strangers-max-messages"),
            strangers_max_bytes=get(PREFIX + "strangers-max-bytes"), period=get(PREFIX + "quota-period"))

    def _settings_changed(self, key: str, old: Any, new: Any) -> None:
        self.limits.configure(self._inbox_settings())
        if key == PREFIX + "mailbox-check-interval" and self._gateway is not None:
            self._start_timers()

    def _on_notice(self, packet: Any, address: Any) -> None:
        # one of my suppliers says messages wait there (anyone else's notice costs nothing)
        provider = self.deps.suppliers
        if provider is not None and packet.creator_id in provider.positions() and self._gateway is not None:
            self.offline.poke()

    def _event(self, event: Any) -> None:
        # back online, or other suppliers: messages may wait for me there
        if event.event_id in ("network-connected", "suppliers-changed") and self._gateway is not None:
            self.offline.poke()

    def _friends(self) -> list[str]:
        """My friends' global ids (none while service_friends is off: everyone is then a stranger)."""
        friends = self.deps.friends
        return friends.friend_ids() if friends is not None else []

    def _is_friend(self, global_id: str) -> bool:
        friends = self.deps.friends
        return friends is not None and friends.is_friend(global_id)

    def _stored_incoming(self, row: dict) -> None:
        self.notify_stored(row)
        self.ctx.events.publish("message-received", row)

    def max_message_size(self) -> int:
        """The largest message data (bytes of JSON) sent or accepted: ``max-message-size``; groups use it too."""
        return int(self.ctx.settings.get(PREFIX + "max-message-size"))

    def _query(self, fn: Any, *args: Any) -> Deferred:
        """Read the history in the thread pool; the service waits for reads in progress before closing it."""
        return _tracked(self.ctx.run_in_thread(fn, *args), self._queries)

    def _run(self, coroutine: Any) -> Deferred:
        """Run work the service must see finished (or cancel) before it closes the history."""
        return _tracked(Deferred.fromCoroutine(coroutine), self._work)

    # -- names -----------------------------------------------------------------------

    def resolve_user(self, user_id: str) -> Deferred:
        """Deferred[str]: the global id of a global id, IDURL, key id (its owner) or nickname."""
        return Deferred.fromCoroutine(self._resolve_user(user_id))

    async def _resolve_user(self, user_id: str) -> str:
        if not isinstance(user_id, str) or not user_id.strip():
            raise BadRequest("recipient_id must be a nickname, a global id or an IDURL")
        text = user_id.strip()
        if "://" in text or "@" in text:
            if "$" in text and "://" not in text:
                return str(globalid.parse_key_id(text).owner)
            return str(globalid.to_global_id(text))
        validate_nickname(text)
        nicknames = self.deps.nicknames
        if nicknames is None:
            raise Unavailable(f"cannot look up the nickname {text!r}: {NicknameService.name} is not running")
        holders = await nicknames.observe(text, 1)
        found = [h["global_id"] for h in holders if h.get("global_id")]
        if not found:
            raise NotFound(f"nobody holds the nickname {text!r}")
        return found[0]

    # -- sending ---------------------------------------------------------------------

    def send(self, recipient_id: str, data: Any, ping_timeout: float = 30.0,
             message_ack_timeout: float = 15.0) -> Deferred:
        """Deliver one private message; Deferred[dict] of its history row once Acked (see the module doc).

        The delivery runs to its end even if the caller stops waiting, so the
        history always gets its outcome.
        """
        try:
            self._require()
            data = normalize_data(data)
            size = len(json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        except (BitnodeError, TypeError, ValueError) as err:
            return defer.fail(err if isinstance(err, BitnodeError) else BadRequest(f"message data: {err}"))
        if size > self.max_message_size():
            return defer.fail(BadRequest(f"message is {size} bytes; the limit is {self.max_message_size()}"))
        if not 0 <= ping_timeout <= MAX_POLLING_TIMEOUT:
            return defer.fail(BadRequest("ping_timeout must be between 0 and 3600 seconds"))
        if not 0 < message_ack_timeout <= MAX_POLLING_TIMEOUT:
            return defer.fail(BadRequest("message_ack_timeout must be more than 0 and at most 3600 seconds"))
        work = self._run(self._send(recipient_id, data, float(ping_timeout), float(message_ack_timeout)))
        return _detached(work)

    async def _send(self, recipient_id: str, data: dict, ping_timeout: float, ack_timeout: float) -> dict:
        me = self._my_id()
        recipient = await self._resolve_user(recipient_id)
        if recipient == me:
            raise BadRequest("cannot send a private message to yourself")
        identity = await self.deps.identity.fetch_identity(recipient)
        header = MessageHeader(PRIVATE_MESSAGE, me, recipient, secrets.token_hex(16), self.ctx.clock.seconds())
        sealed = await self.ctx.run_in_thread(seal, header, data, self._my_key(), identity.rsa_public_key())
        row, _ = await self.ctx.run_in_thread(
            self._require().add, message_id=header.message_id, conversation_id=recipient,
            direction=hist.OUTGOING, sender=me, recipient=recipient, message_type=PRIVATE_MESSAGE, data=data,
            time=header.time, stored_time=self.ctx.clock.seconds(), state=hist.SENT)
        self._counts["sent"] += 1
        self.notify_stored(row)
        try:
            await self._deliver(recipient, sealed, header.message_id, ping_timeout, ack_timeout)
        except PeerRefused as err:
            await self._failed(row, f"refused by the recipient: {err.reason}")
            raise Conflict(f"{recipient} refused the message: {err.reason}") from None
        except defer.CancelledError:
            await self._failed(row, "the service stopped before the recipient acknowledged the message")
            raise Unavailable(f"message to {recipient} not delivered: {self.name} is stopping") from None
        except BitnodeError as err:
            return await self._queue(row, recipient, sealed, str(err))
        row = await self.ctx.run_in_thread(self._require().set_state, row["seq"], hist.ACKED)
        self._counts["acked"] += 1
        self.ctx.events.publish("message-sent", row)
        return row

    async def _queue(self, row: dict, recipient: str, sealed: bytes, why: str) -> dict:
        """The recipient did not answer: queue the message on its suppliers (``queued``) or fail (503)."""
        try:
            holders = await self.offline.queue(recipient, row["message_id"], sealed)
        except defer.CancelledError:
            await self._failed(row, "the service stopped before the message was queued")
            raise Unavailable(f"message to {recipient} not delivered: {self.name} is stopping") from None
        except BitnodeError as err:
            await self._failed(row, f"{why}; not queued: {err}")
            raise Unavailable(f"recipient {recipient} is offline, message not delivered: {why}; "
                              f"and not queued: {err}") from None
        self.log.info("message {id} to {who} queued on {n} of its suppliers", id=row["message_id"], who=recipient,
                      n=len(holders))
        row = await self.ctx.run_in_thread(self._require().set_state, row["seq"], hist.QUEUED)
        self._counts["queued"] += 1
        self.ctx.events.publish("message-queued", row)
        return row

    def broadcast(self, data: Any, ping_timeout: float = 10.0, message_ack_timeout: float = 15.0) -> Deferred:
        """Send ``data`` as a private message to every user this node knows (its identity cache).

        There is no network-wide broadcast channel: "all peers" are the users
        whose identities this node holds. Each gets its own encrypted, Acked
        message (and its own history row). Deferred[dict]:
        ``{"recipients": N, "delivered": [global ids], "failed": {global id: reason}}``;
        Unavailable when nobody is known or nobody got the message; BadRequest
        (before anything is sent) when ``data`` is not message content.
        """
        try:
            normalize_data(data)  # bad content is the caller's error, not every peer's failure (a 503)
            me = self._my_id()
            cache = self.deps.identity.cache
            known = sorted({ident.global_id for ident in cache.list()} - {me}) if cache is not None else []
        except BitnodeError as err:
            return defer.fail(err)
        if not known:
            return defer.fail(Unavailable("no known peers to broadcast to"))
        sends = [self.send(user, data, ping_timeout, message_ack_timeout) for user in known]

        def summarize(outcomes: list) -> dict:
            delivered = [user for user, (ok, _) in zip(known, outcomes, strict=True) if ok]
            failed = {user: (str(value.value) if isinstance(value, Failure) else str(value))
                      for user, (ok, value) in zip(known, outcomes, strict=True) if not ok}
            if not delivered:
                reasons = "; ".join(f"{user}: {why}" for user, why in failed.items())
                raise Unavailable(f"the broadcast reached none of {len(known)} known peers: {reasons}")
            return {"recipients": len(known), "delivered": delivered, "failed": failed}

        return defer.DeferredList(sends, consumeErrors=True).addCallback(summarize)

    async def _deliver(self, recipient: str, sealed: bytes, message_id: str, ping_timeout: float,
                       ack_timeout: float) -> None:
        gateway = self._gateway
        if gateway is None:
            raise Unavailable(f"{self.name} is stopping")
        online = self.deps.network.require_online()
        if ping_timeout > 0 and not online.status(recipient)["online"]:
            await online.ping(recipient, ping_timeout, 0)
        packet = gateway.build(Command.MESSAGE, recipient, sealed, packet_id=message_id)
        await gateway.send(packet, wait_response=True, timeout=ack_timeout)

    def _expired(self, rows: list[dict]) -> None:
        self._counts["expired"] += len(rows)
        self._counts["failed"] += len(rows)
        for row in rows:
            self.ctx.events.publish("message-failed", row)

    async def _failed(self, row: dict, reason: str) -> None:
        self._counts["failed"] += 1
        history = self.history
        if history is None:
            return
        failed = await self.ctx.run_in_thread(history.set_state, row["seq"], hist.FAILED, reason)
        self.ctx.events.publish("message-failed", failed)

    # -- receiving -------------------------------------------------------------------

    def _on_message(self, packet: Any, address: Any) -> Deferred:
        # Other traffic in Message packets (group frames) has its own routes on the gateway's router.
        # cancelled only when the service stops: the sender gets no Ack, which is the truth
        receiving = self.inbox.receive(packet, lambda p, command, text: _reply(self._gateway, p, command, text))
        return self._run(receiving).addErrback(lambda f: f.trap(defer.CancelledError) and None)

    async def _open(self, packet: Any) -> Any:
        me = self._my_id()
        if len(packet.payload) > self.max_message_size() + SEAL_OVERHEAD:
            raise MessageRejected(f"message larger than {self.max_message_size()} bytes")
        header = peek(packet.payload)
        identity = self.deps.identity
        # a user who moved to another identity server has several names: the sender's may be an old one, and
        # a message may be addressed to any of mine (a peer that knew me before I moved)
        if header.sender != packet.creator_id and not identity.same_user(header.sender, packet.creator_id):
            raise MessageRejected(f"message of {header.sender} sent by {packet.creator_id}")
        if header.message_type not in (PRIVATE_MESSAGE, DELIVERY_RECEIPT):
            raise MessageRejected(f"{header.message_type} is not accepted as a private message")
        if header.recipient != me and not identity.is_me(header.recipient):
            raise MessageRejected(f"message is addressed to {header.recipient}, not to {me}")
        try:
            sender = await identity.fetch_identity(header.sender)
        except (NotFound, Unavailable) as err:  # not a forgery: its key is not at hand now
            raise SenderUnknownForNow(f"cannot fetch the identity of {header.sender} now: {err}") from None
        opened = await self.ctx.run_in_thread(open_message, packet.payload, self._my_key(),
                                               sender.rsa_public_key(), header.recipient)
        if not isinstance(opened.data, dict):
            raise MessageRejected("message content must be a JSON object")
        return opened

    # -- offline delivery (bitnode.chat.offline_delivery) ---------------------------------

    def _their_suppliers(self, user: str) -> Deferred:
        d = lookup_suppliers(self.deps.dht, self.deps.identity, user)
        return d.addCallback(lambda record: record["suppliers"])

    async def _my_suppliers(self) -> list[str]:
        provider = self.deps.suppliers
        if provider is not None:
            return [s for s in provider.positions() if s]
        if self.deps.dht is None:
            return []
        try:
            return await self._their_suppliers(self._my_id())  # my own record (no customer side running here)
        except NotFound:
            return []

    async def _take_queued(self, entry: QueuedMessage) -> str:
        """A message fetched from a mailbox goes through the inbox like one sent to me now (no rate limit)."""
        # shaped like the Message packet it would have come in (the mailbox checked who handed it over)
        packet = SimpleNamespace(creator_id=entry.sender, payload=entry.sealed, packet_id=entry.message_id)

        async def no_answer(packet: Any, command: Command, text: str) -> None:
            return None  # the mailbox entry is removed instead

        outcome = await self.inbox.receive(packet, no_answer, queued=True)
        if outcome not in ("stored", "duplicate", "receipt") and not outcome.startswith((REJECTED, LATER)):
            # refused by a limit: the sender (the supplier saw who handed it over) is told in a receipt
            await self.ctx.run_in_thread(self._require().owe_refusal, entry.sender, entry.message_id, outcome,
                                         self.ctx.clock.seconds())
        return outcome

    async def _receipt(self, opened: Any) -> None:
        """A recipient's delivery receipt: my messages it names become ``delivered``."""
        ids, refused = parse_receipt(opened.data)
        history = self._require()
        rows = await self.ctx.run_in_thread(history.mark_delivered, opened.header.sender, ids)
        failed = await self.ctx.run_in_thread(history.mark_refused, opened.header.sender, refused)
        self._counts["delivered"] += len(rows)
        self._counts["failed"] += len(failed)
        for row in rows:
            self.ctx.events.publish("message-delivered", row)
        for row in failed:
            self.ctx.events.publish("message-failed", row)

    async def _send_receipt(self, user: str, data: dict, message_id: str) -> None:
        """Send a delivery receipt to ``user``: directly, else queued on its suppliers (an error if neither)."""
        header = MessageHeader(DELIVERY_RECEIPT, self._my_id(), user, message_id, self.ctx.clock.seconds())
        identity = await self.deps.identity.fetch_identity(user)
        sealed = await self.ctx.run_in_thread(seal, header, data, self._my_key(), identity.rsa_public_key())
        try:
            await self._deliver(user, sealed, message_id, RECEIPT_PING, RECEIPT_ACK)
        except PeerRefused as err:
            if "rate limited" in err.reason:
                raise
            self.log.info("{who} refused a delivery receipt: {why}", who=user, why=err.reason)  # not owed any more
        except BitnodeError:
            await self.offline.queue(user, message_id, sealed)

    # -- the stream (long-poll consumers: bitnode.chat.message_stream) ---------------------

    def receive(self, consumer_id: str, direction: str = "incoming", message_types: Any = (),
                polling_timeout: float = 60.0, limit: int = POLL_LIMIT) -> Deferred:
        """Long-poll: Deferred[list] of messages after the consumer's cursor (see the module doc)."""
        self._require()
        return self.stream.receive(consumer_id, direction, message_types, polling_timeout, limit)

    def notify_stored(self, row: dict) -> None:
        """A row was committed to the history: move the end of the stream, wake the consumers that want it."""
        self.stream.notify_stored(row)

    # -- history queries (for the API) ---------------------------------------------------

    def message_history(self, conversation_id: Optional[str] = None, sender: Optional[str] = None,
                        recipient: Optional[str] = None, message_type: Optional[str] = None,
                        offset: int = 0, limit: int = 100) -> Deferred:
        """Deferred[(rows, total)] of :meth:`MessageHistory.history`."""
        history = self._require()
        hist.check_page(offset, limit)
        return self._query(history.history, conversation_id, sender, recipient, message_type, offset, limit)

    def conversations(self, message_types: Any = (), offset: int = 0, limit: int = 100) -> Deferred:
        """Deferred[(rows, total)] of :meth:`MessageHistory.conversations`."""
        history = self._require()
        types = normalize_types(message_types)
        hist.check_page(offset, limit)
        return self._query(history.conversations, types, offset, limit)


def _open_history(path: str) -> tuple[MessageHistory, int]:
    history = MessageHistory(path)
    # a send still waiting for its Ack when the node stopped has no outcome: it was not confirmed
    history.fail_unfinished("the node stopped before the recipient acknowledged the message")
    return history, history.last_seq()


def _tracked(d: Deferred, pending: set[Deferred]) -> Deferred:
    """Keep ``d`` in ``pending`` until it fires."""
    if d.called:
        return d
    pending.add(d)

    def done(result: Any) -> Any:
        pending.discard(d)
        return result

    return d.addBoth(done)


def _detached(work: Deferred) -> Deferred:
    """A Deferred with ``work``'s result; cancelling it does not cancel ``work``."""
    result: Deferred = Deferred()

    def forward(outcome: Any) -> None:
        if result.called:
            return None  # the caller stopped waiting; the outcome is in the history
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)
        return None

    work.addBoth(forward)
    return result


async def _reply(gateway: Any, packet: Any, command: Command, text: str) -> None:
    if gateway is None:
        return
    try:
        await gateway.reply(packet, command, text.encode("utf-8")[:300])
    except BitnodeError as err:
        Logger().info("could not answer {who}: {err}", who=packet.creator_id, err=err)
