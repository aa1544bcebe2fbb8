"""service_private_groups: message groups — a shared key, an ordered message stream, a broker.

The design, end to end:

- **A group is a key.** ``group_create`` makes a private RSA key
  ``group_<hex>$me@host`` in the key store and starts hosting the group's
  queue here (this node is the group's *broker*, :mod:`bitnode.access.group_queue`).
  ``group_share`` sends the private key to a user (``Key`` packet,
  :mod:`bitnode.access.key_exchange`, ``include_private``); only the creator
  can share it (the key exchange accepts keys only from their owner's namespace).
- **Joining** (``group_join``, needs the private key) starts a
  :class:`~bitnode.access.group_member.GroupMember` machine: it subscribes to
  the broker (which audits the member's key the first time: no key, 403),
  fetches every entry after the last one stored here (all of them for a new
  member: a late joiner sees the whole history) and then takes pushes. The
  creator's own membership talks to the local broker directly. Memberships
  are kept in ``metadata/groups.sqlite`` and rejoined when the node starts.
- **Sending** (``message_send_group``) seals the data for the group key and
  signs it with my identity key (:mod:`bitnode.chat.message_crypto`, type
  ``group_message``) and publishes it to the broker, which checks it, gives it
  the next sequence number, stores it, answers, and pushes it to the other
  members. OK means "stored by the broker"; an unreachable broker is a 503
  (never a silent OK) and the membership goes DISCONNECTED and retries.
- **Receiving**: each member opens the entries in sequence order (verifies
  the sender's signature, decrypts with the group key) and stores them in the
  message history (``bitnode.chat.history``: conversation = the group key id,
  ``message_type`` ``group_message``, ``incoming``/``received`` or, for my own,
  ``outgoing``/``acked``), in the broker's order, so every member's history
  lists a group's messages in the same order. They then show in
  ``message_history``, ``message_conversations_list``, ``message_receive`` and
  the WebSocket stream like private messages.

Backup: memberships and hosted queues (members, numbers; not the message
stream) go into the catalog backup as the part ``groups`` when
service_backups is in the node (:mod:`bitnode.access.group_backup`); a
recovered identity rejoins its groups and hosts its queues again.

Wire: group frames in ``Message`` packets (:mod:`bitnode.access.group_protocol`),
routed to this service by the gateway's packet router (group frames are told apart
by their first bytes, :func:`~bitnode.access.group_protocol.is_group_frame`).

Events on the node's bus: ``group-member-joined`` / ``group-member-left``
(``{"group_key_id", "member_id", "queue"}``; ``queue`` false: this node's own
membership, true: a member of a queue hosted here), ``group-message-received``
(an incoming group message stored, the history row) and ``group-message-sent``
(my own group message stored in its place in the group's order).
"""

from __future__ import annotations

import os
import secrets
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from bitnode import globalid
from bitnode.access import group_backup, group_views
from bitnode.access.group_links import LocalBrokerLink, RemoteBrokerLink, push_to_member
from bitnode.access.group_member import GroupMember
from bitnode.access.group_protocol import (
    Frame,
    FrameError,
    broker_of,
    decode_frame,
    encode_frame,
    is_group_frame,
    new_group_alias,
    parse_group_key_id,
    refusal,
)
from bitnode.access.group_queue import GroupBroker
from bitnode.access.group_store import GroupStore
from bitnode.access.key_exchange_service import KeyExchangeService
from bitnode.access.key_packets import check_timeout
from bitnode.chat import history as hist
from bitnode.chat.message_crypto import (
    GROUP_MESSAGE,
    SEAL_OVERHEAD,
    MessageHeader,
    MessageRejected,
    normalize_data,
    open_message,
    peek,
    seal,
)
from bitnode.chat.messages_service import PrivateMessagesService
from bitnode.crypt import keys
from bitnode.errors import BadRequest, BitnodeError, Conflict, Forbidden, NotFound, Unavailable
from bitnode.main.options import FLOAT, Option
from bitnode.main.sqlitedb import StoreClosed
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.storage.backups_service import BackupsService
from bitnode.transport.commands import Command
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService

PREFIX = "services/private-groups/"
#: How long message_send_group waits for my own message to take its place in my history.
DELIVERY_WAIT = 10.0


class GroupsService(Service):
    """Groups of one node: its memberships, and the queues of the groups it created."""

    name = "service_private_groups"
    requires = {"messages": PrivateMessagesService, "key_exchange": KeyExchangeService, "gateway": GatewayService,
                "identity": IdentityService}
    optional = {"storage": BackupsService}
    description = "Message groups: a shared key and an ordered, end-to-end encrypted message stream"
    options = (
        Option(PREFIX + "request-timeout", FLOAT, 20.0,
               "Seconds a member waits for the group broker's answer before counting it unreachable.",
               minimum=0.1, maximum=600.0),
        Option(PREFIX + "push-timeout", FLOAT, 10.0,
               "Seconds a broker waits for a member to take a pushed message.", minimum=0.1, maximum=600.0),
        Option(PREFIX + "audit-timeout", FLOAT, 20.0,
               "Seconds a broker waits for a new member to prove it holds the group key.",
               minimum=0.1, maximum=600.0),
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.store: Optional[GroupStore] = None
        self.broker: Optional[GroupBroker] = None
        self.members: dict[str, GroupMember] = {}
        self.store_file = os.path.join(ctx.basedir.metadata, "groups.sqlite")
        self._gateway: Any = None
        self._messages: Any = None
        self._work: set[Deferred] = set()
        self._counts = {"frames": 0, "refused_frames": 0}
        self._unregister_part: Any = None
        self._route: Any = None
        self._unsubscribe: Any = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Deferred:
        """Open the store, take group frames, load the hosted queues, rejoin the groups joined before."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        gateway = self.deps.gateway.require_gateway()
        messages = self.deps.messages
        me = self._me()
        store = await self.ctx.run_in_thread(GroupStore, self.store_file)
        broker = GroupBroker(self.ctx.clock, me, store, self.ctx.run_in_thread, self._audit,
                             self._check, self._push, self.ctx.events.publish)
        try:
            await broker.load()
            cursors = await self.ctx.run_in_thread(store.cursors)
        except BaseException:
            await self.ctx.run_in_thread(store.close)
            raise
        self.store, self.broker, self._gateway, self._messages = store, broker, gateway, messages
        self._route = gateway.router.add(Command.MESSAGE, self._on_frame, accepts=_carries_group_frame,
                                         owner=self.name)
        keystore = self._keystore()
        for group_key_id, cursor in cursors.items():
            if cursor["active"] and self._holds_key(keystore, group_key_id):
                self._start_member(group_key_id, cursor["last_sequence"])
        self._unsubscribe = self.ctx.events.subscribe(self._on_event)
        storage = self._storage()
        if storage is not None:  # a part restored before this start is handed over now
            self._unregister_part = storage.add_backup_part(group_backup.PART, lambda: group_backup.collect(store),
                                                            self._restore_part)

    def stop(self) -> Deferred:
        """Stop taking frames, close the memberships (the brokers keep them), close the store."""
        for undo in (self._unregister_part, self._unsubscribe):
            if undo is not None:
                undo()
        self._unregister_part = self._unsubscribe = None
        if self._route is not None:
            self._route.remove()
            self._route = None
        for member in list(self.members.values()):
            member.close()
        self.members.clear()
        if self.broker is not None:
            self.broker.stop()
        store, self.store, self.broker, self._gateway, self._messages = self.store, None, None, None, None
        work = list(self._work)
        for d in work:
            d.cancel()

        def close(_: Any) -> Optional[Deferred]:
            return self.ctx.run_in_thread(store.close) if store is not None else None

        return defer.DeferredList(work, consumeErrors=True).addCallback(close)

    def status(self) -> dict:
        """Counters for service_info."""
        result = dict(self._counts, memberships=len(self.members))
        if self.broker is not None:
            result.update(self.broker.counters)
        return result

    # -- helpers --------------------------------------------------------------------------

    def _require(self) -> tuple[GroupStore, GroupBroker]:
        if self.store is None or self.broker is None:
            raise Unavailable(f"{self.name} is not running")
        return self.store, self.broker

    def _identity(self) -> Any:
        return self.deps.identity

    def _me(self) -> str:
        return self._identity().require_identity().global_id

    def _keystore(self) -> Any:
        identity = self._identity()
        identity.require_identity()
        return identity.keystore

    @staticmethod
    def _holds_key(keystore: Any, group_key_id: str) -> bool:
        return keystore.has(group_key_id) and keystore.get(group_key_id).is_private

    def _group_key(self, group_key_id: str) -> str:
        """A canonical group key id whose private key this node holds (NotFound otherwise)."""
        key_id = str(parse_group_key_id(group_key_id))
        if not self._holds_key(self._keystore(), key_id):
            raise NotFound(f"this node does not hold the key of group {key_id}: its creator must group_share it")
        return key_id

    def _setting(self, name: str) -> float:
        return float(self.ctx.settings.get(PREFIX + name))

    def _run(self, coroutine: Any) -> Deferred:
        """Run work the service waits for (or cancels) before closing the store."""
        d = Deferred.fromCoroutine(coroutine)
        if not d.called:
            self._work.add(d)
            d.addBoth(lambda result: (self._work.discard(d), result)[1])
        return d

    def _max_blob(self) -> int:
        return self.deps.messages.max_message_size() + SEAL_OVERHEAD

    # -- groups --------------------------------------------------------------------------

    def create_group(self, creator_id: Optional[str] = None, key_size: Optional[int] = None, label: str = "",
                     timeout: float = 20.0) -> Deferred:
        """Make a new group key, host its queue here and join it; Deferred[group info].

        ``timeout`` is checked but not waited on: creating a group talks to nobody.
        """
        return self._run(self._create(creator_id, key_size, label, timeout))

    async def _create(self, creator_id: Optional[str], key_size: Optional[int], label: str, timeout: float) -> dict:
        store, broker = self._require()
        me = self._me()
        if creator_id not in (None, "") and str(globalid.to_global_id(creator_id)) != me:
            raise Forbidden(f"a group can only be created by this node's own identity {me}")
        check_timeout(timeout)
        size = keys.check_key_size(int(self.ctx.settings.get("personal/private-key-size")) if key_size is None
                                   else key_size)
        info = await self._keystore().create(new_group_alias(), size, label or "")
        await broker.host(info.key_id)
        member = await self._join(info.key_id)
        await member.when_settled(timeout)  # my own broker: connected at once
        self.log.info("group {group} created", group=info.key_id)
        return await group_views.describe_group(self, info.key_id)

    def share(self, group_key_id: str, trusted_user_id: str, timeout: float = 30.0) -> Deferred:
        """Send the group's private key to a user so they can join; Deferred[key_share's result]."""
        try:
            key_id = self._group_key(group_key_id)
            check_timeout(timeout)
            exchange = self.deps.key_exchange.require_exchange()
        except BitnodeError as err:
            return defer.fail(err)
        d = exchange.share(key_id, trusted_user_id, True, timeout)
        return d.addCallback(lambda result: dict(result, group_key_id=key_id))

    def join(self, group_key_id: str) -> Deferred:
        """Become an active member (idempotent): Deferred[group info] once connected and caught up, or
        disconnected (it retries in the background); the broker's refusal (403 not a member, 404 no such
        group) is an error."""
        return self._run(self._join_and_describe(group_key_id))

    async def _join_and_describe(self, group_key_id: str) -> dict:
        key_id = self._group_key(group_key_id)
        member = await self._join(key_id)
        state = await member.when_settled(3 * self._setting("request-timeout"))
        if state == "REFUSED" and member.refusal is not None:
            raise type(member.refusal)(str(member.refusal))
        return await group_views.describe_group(self, key_id)

    async def _join(self, group_key_id: str) -> GroupMember:
        store, broker = self._require()
        member = self.members.get(group_key_id)
        if member is not None:
            member.event("join")  # a disconnected or refused membership tries again now
            return member
        if broker_of(group_key_id) == self._me():
            await broker.host(group_key_id)  # e.g. a key restored from a backup: host its queue again
        cursor = (await self.ctx.run_in_thread(store.cursors)).get(group_key_id, {})
        last = cursor.get("last_sequence", 0)
        if group_key_id in self.members:  # joined by a concurrent call meanwhile
            return self.members[group_key_id]
        await self.ctx.run_in_thread(store.save_cursor, group_key_id, True, last, self.ctx.clock.seconds())
        return self._start_member(group_key_id, last)

    def _start_member(self, group_key_id: str, last_sequence: int) -> GroupMember:
        me, broker_id = self._me(), broker_of(group_key_id)
        if broker_id == me:
            link: Any = LocalBrokerLink(self.broker, group_key_id, me)
        else:
            link = RemoteBrokerLink(self._gateway, group_key_id, broker_id, lambda: self._setting("request-timeout"))
        member = GroupMember(self.ctx.clock, group_key_id, broker_id, last_sequence, link,
                             lambda sequence, blob: self._deliver(group_key_id, sequence, blob),
                             lambda active, last: self._save_cursor(group_key_id, active, last),
                             self._announce, registry=self.ctx.automats)
        self.members[group_key_id] = member
        member.event("join")
        return member

    def leave(self, group_key_id: str, erase_key: bool = False) -> Deferred:
        """Stop being a member (and with ``erase_key`` forget the key; for the creator also the queue)."""
        return self._run(self._leave(group_key_id, erase_key))

    async def _leave(self, group_key_id: str, erase_key: bool) -> dict:
        store, broker = self._require()
        key_id = str(parse_group_key_id(group_key_id))
        keystore = self._keystore()
        member = self.members.pop(key_id, None)
        cursors = await self.ctx.run_in_thread(store.cursors)
        if member is None and key_id not in cursors and not keystore.has(key_id):
            raise NotFound(f"unknown group {key_id}")
        last = member.last_sequence if member is not None else cursors.get(key_id, {}).get("last_sequence", 0)
        if member is not None:
            member.event("leave")
        result = {"group_key_id": key_id, "left": member is not None, "key_erased": False, "queue_deleted": False}
        if not erase_key:
            await self.ctx.run_in_thread(store.save_cursor, key_id, False, last, self.ctx.clock.seconds())
            return result
        await self.ctx.run_in_thread(store.drop_cursor, key_id)
        if keystore.has(key_id):
            keystore.erase(key_id)
            result["key_erased"] = True
        if broker_of(key_id) == self._me():
            result["queue_deleted"] = await broker.drop(key_id)
        return result

    # -- sending and receiving ---------------------------------------------------------------

    def send(self, group_key_id: str, data: Any) -> Deferred:
        """Publish a message to the group; Deferred[history row + ``sequence``] once the broker stored it."""
        try:
            self._require()
            key_id = self._group_key(group_key_id)
            data = normalize_data(data)
        except BitnodeError as err:
            return defer.fail(err)
        return self._run(self._send(key_id, data))

    async def _send(self, group_key_id: str, data: dict) -> dict:
        member = self.members.get(group_key_id)
        if member is None:
            raise Conflict(f"not a member of group {group_key_id} now: call group_join first")
        me = self._me()
        header = MessageHeader(GROUP_MESSAGE, me, group_key_id, secrets.token_hex(16), self.ctx.clock.seconds())
        keystore = self._keystore()
        sealed = await self.ctx.run_in_thread(seal, header, data, keystore.private_key(keystore.master_key_id),
                                               keystore.public_key(group_key_id))
        if len(sealed) > self._max_blob():
            raise BadRequest(f"message is larger than {self._max_blob() - SEAL_OVERHEAD} bytes")
        sequence = await member.publish(sealed)
        row = await member.wait_delivered(sequence, DELIVERY_WAIT)
        if row is None:  # stored already (or not yet): the broker has it, which is what OK means
            row = {"message_id": header.message_id, "conversation_id": group_key_id, "message_type": GROUP_MESSAGE,
                   "direction": hist.OUTGOING, "sender": me, "recipient": group_key_id, "data": data,
                   "time": header.time, "state": hist.ACKED, "error": ""}
        return dict(row, sequence=sequence, group_key_id=group_key_id)

    async def _open(self, group_key_id: str, blob: bytes, sender: Optional[str] = None) -> Any:
        """The verified, decrypted message of a sealed group entry (MessageRejected otherwise)."""
        if len(blob) > self._max_blob():
            raise MessageRejected(f"group message larger than {self._max_blob() - SEAL_OVERHEAD} bytes")
        header = peek(blob)
        if header.message_type != GROUP_MESSAGE or header.recipient != group_key_id:
            raise MessageRejected(f"not a group message of {group_key_id}")
        if sender is not None and header.sender != sender:
            raise MessageRejected(f"a message of {header.sender} published by {sender}")
        identity = await self._identity().fetch_identity(header.sender)
        opened = await self.ctx.run_in_thread(open_message, blob, self._keystore().private_key(group_key_id),
                                               identity.rsa_public_key(), group_key_id)
        if not isinstance(opened.data, dict):
            raise MessageRejected("group message content must be a JSON object")
        return opened

    def _deliver(self, group_key_id: str, sequence: int, blob: bytes) -> Deferred:
        return self._run(self._store_entry(group_key_id, sequence, blob))

    async def _store_entry(self, group_key_id: str, sequence: int, blob: bytes) -> Optional[dict]:
        """Open one entry and store it in the message history; its row (None if it was there already)."""
        opened = await self._open(group_key_id, blob)
        header, me = opened.header, self._me()
        messages = self._messages
        history = messages.history if messages is not None else None
        if history is None:
            raise Unavailable(f"{PrivateMessagesService.name} is not running: group message {sequence} kept for later")
        mine = header.sender == me
        row, created = await self.ctx.run_in_thread(
            history.add, message_id=header.message_id, conversation_id=group_key_id,
            direction=hist.OUTGOING if mine else hist.INCOMING, sender=header.sender, recipient=group_key_id,
            message_type=GROUP_MESSAGE, data=opened.data, time=header.time, stored_time=self.ctx.clock.seconds(),
            state=hist.ACKED if mine else hist.RECEIVED)
        if not created:
            return row
        row = dict(row, sequence=sequence, group_key_id=group_key_id)
        messages.notify_stored(row)
        self.ctx.events.publish("group-message-sent" if mine else "group-message-received", row)
        return row

    def _save_cursor(self, group_key_id: str, active: bool, last_sequence: int) -> Deferred:
        store = self.store
        if store is None:
            return defer.succeed(None)
        d = self.ctx.run_in_thread(store.save_cursor, group_key_id, active, last_sequence, self.ctx.clock.seconds())
        # Stopping: the store closed while this save waited for a thread. The next start fetches from the
        # cursor saved before, and the history keeps one copy of a message: nothing is lost.
        return d.addErrback(lambda f: f.trap(StoreClosed) and None)

    def _announce(self, what: str, facts: dict) -> None:
        if what in ("joined", "left"):
            self.ctx.events.publish(f"group-member-{what}", {"group_key_id": facts["group_key_id"],
                                                             "member_id": self._me(), "queue": False})
        self.log.info("group {group}: {what} ({state}) {reason}", group=facts["group_key_id"], what=what,
                      state=facts["state"], reason=facts["reason"])

    # -- the catalog backup ------------------------------------------------------------------

    def _storage(self) -> Any:
        # Installed is enough: the part stays registered across the storage service's restarts.
        return self.deps.installed("storage")  # None on a node without service_backups: nothing to back up to

    def _on_event(self, event: Any) -> None:
        """Memberships or a hosted queue changed: back the ``groups`` part up (after the backup delay)."""
        data = event.data if isinstance(event.data, dict) else {}
        if event.event_id in ("group-member-joined", "group-member-left"):
            changed = True
        elif event.event_id in ("group-message-sent", "group-message-received"):
            # a new head of a queue I host (my own membership sees each entry): keep its number in the backup
            changed = broker_of(data.get("group_key_id", "")) == self._me()
        else:
            changed = False
        storage = self._storage()
        if changed and storage is not None and self.deps.is_on("storage"):
            storage.backup_needed()

    def _restore_part(self, value: Any) -> None:
        """The ``groups`` part of a restored backup: checked now (a bad one fails the part), applied in the
        background (it needs the store)."""
        document = group_backup.parse(value)
        self._require()
        d = self._run(self._restore(document))
        d.addErrback(lambda f: None if f.check(defer.CancelledError, StoreClosed) else
                     self.log.failure("restoring the groups backup failed", f))

    async def _restore(self, document: dict) -> None:
        store, broker = self._require()
        me, keystore = self._me(), self._keystore()
        for queue in document["queues"]:
            if broker_of(queue["group_key_id"]) == me and self._holds_key(keystore, queue["group_key_id"]):
                await broker.restore(queue["group_key_id"], queue["created"], queue["head"], queue["members"])
        cursors = await self.ctx.run_in_thread(store.cursors)
        for entry in document["memberships"]:
            key_id = entry["group_key_id"]
            if key_id in cursors or key_id in self.members or not self._holds_key(keystore, key_id):
                continue  # known here (newer than the backup), or its key did not come back
            # From 0: the message history is not in the backup, the broker refills it.
            await self.ctx.run_in_thread(store.save_cursor, key_id, entry["active"], 0, self.ctx.clock.seconds())
            if entry["active"] and self.store is store and key_id not in self.members:
                if broker_of(key_id) == me:
                    await broker.host(key_id)
                self._start_member(key_id, 0)
        self.log.info("groups restored from the catalog backup: {m} memberships, {q} queues",
                      m=len(document["memberships"]), q=len(document["queues"]))

    # -- the broker's neighbours ---------------------------------------------------------------

    def _audit(self, group_key_id: str, member: str) -> Deferred:
        exchange = self.deps.key_exchange.require_exchange()
        d = exchange.audit(group_key_id, member, True, self._setting("audit-timeout"))
        return d.addCallback(lambda result: result["result"] == "OK")

    def _check(self, group_key_id: str, member: str, blob: bytes) -> Deferred:
        return Deferred.fromCoroutine(self._open(group_key_id, blob, member)).addCallback(lambda opened: opened.header)

    def _push(self, member: str, group_key_id: str, sequence: int, blob: bytes) -> Deferred:
        if member == self._me():
            local = self.members.get(group_key_id)
            if local is None:
                return defer.fail(NotFound(f"not joined to group {group_key_id}"))
            local.event("pushed", sequence, blob)
            return defer.succeed(None)
        if self._gateway is None:
            return defer.fail(Unavailable(f"{self.name} is stopping"))
        return push_to_member(self._gateway, member, group_key_id, sequence, blob, self._setting("push-timeout"))

    # -- group frames from other nodes ------------------------------------------------------------

    def _on_frame(self, packet: Any, address: Any = None) -> Deferred:
        d = self._run(self._answer_frame(packet))
        return d.addErrback(lambda f: f.trap(defer.CancelledError) and None)

    async def _answer_frame(self, packet: Any) -> None:
        gateway = self._gateway
        self._counts["frames"] += 1
        try:
            frame = decode_frame(packet.payload)
            command, payload = Command.ACK, await self._handle(packet.creator_id, frame)
        except BitnodeError as err:
            self._counts["refused_frames"] += 1
            self.log.info("group frame from {peer} refused: {err}", peer=packet.creator_id, err=err)
            command, payload = Command.FAIL, refusal(err)
        if gateway is None:
            return
        try:
            await gateway.reply(packet, command, payload)
        except BitnodeError as err:
            self.log.info("could not answer {peer}: {err}", peer=packet.creator_id, err=err)

    async def _handle(self, peer: str, frame: Frame) -> bytes:
        _, broker = self._require()
        group_key_id = frame.group_key_id
        if frame.op == "push":
            return self._take_push(peer, frame)
        if frame.op == "subscribe":
            answer = await broker.subscribe(group_key_id, peer)
            return encode_frame("ok", group_key_id, head=answer["head"])
        if frame.op == "unsubscribe":
            answer = await broker.unsubscribe(group_key_id, peer)
            return encode_frame("ok", group_key_id, head=answer["head"])
        if frame.op == "fetch":
            batch = await broker.fetch(group_key_id, peer, frame.integer("after"), frame.integer("limit", 1, 1))
            return encode_frame("ok", group_key_id, [blob for _, blob in batch["entries"]],
                                sequences=[s for s, _ in batch["entries"]], head=batch["head"], more=batch["more"])
        if frame.op == "publish":
            if len(frame.blobs) != 1:
                raise FrameError("publish carries exactly one message")
            answer = await broker.publish(group_key_id, peer, frame.blobs[0])
            return encode_frame("ok", group_key_id, sequence=answer["sequence"], head=answer["head"])
        raise FrameError(f"a group broker does not take {frame.op!r} frames")

    def _take_push(self, peer: str, frame: Frame) -> bytes:
        member = self.members.get(frame.group_key_id)
        if member is None or member.destroyed:
            raise NotFound(f"not joined to group {frame.group_key_id}")
        if peer != member.broker:
            raise Forbidden(f"only the broker {member.broker} pushes messages of group {frame.group_key_id}")
        if len(frame.blobs) != 1 or len(frame.blobs[0]) > self._max_blob():
            raise FrameError("a push carries exactly one message of an acceptable size")
        member.event("pushed", frame.integer("sequence", minimum=1), frame.blobs[0])
        return encode_frame("ok", frame.group_key_id)

    # -- views -------------------------------------------------------------------------------

    def groups(self, only_active: bool = False, include_mine: bool = True, include_granted: bool = True) -> Deferred:
        """Deferred[list] of the groups whose key this node holds (see :meth:`info`)."""
        return self._run(group_views.list_groups(self, only_active, include_mine, include_granted))

    def info(self, group_key_id: str) -> Deferred:
        """Deferred[dict]: the group's key facts, my membership and, for its creator, its queue."""
        try:
            key_id = str(parse_group_key_id(group_key_id))
        except BitnodeError as err:
            return defer.fail(err)
        return self._run(group_views.describe_group(self, key_id))

    def queues(self) -> Deferred:
        """Deferred[list] of the queues hosted here."""
        return self._require()[1].queues()

    def consumers(self) -> list[dict]:
        """The consumers of the queues hosted here."""
        return self._require()[1].consumers()

    def producers(self) -> Deferred:
        """Deferred[list] of the producers of the queues hosted here."""
        return self._require()[1].producers()


def _carries_group_frame(packet: Any) -> bool:
    """Router predicate: a ``Message`` packet whose payload is a group frame."""
    return is_group_frame(packet.payload)
