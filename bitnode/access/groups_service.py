"""service_private_groups: message groups that keep working while their creator (or any one broker) is away.

The design, end to end:

- **A group is a key, a config and a log.** ``group_create`` makes a private
  RSA key ``group_<hex>$me@host`` (the group's name and fingerprint) and a
  signed config naming the group's *brokers* (:mod:`bitnode.access.group_config`):
  the creator's suppliers by position, then the creator itself, up to the
  ``brokers`` setting (3). The brokers host the group's *log*: messages and
  control entries in one order, replicated so that it survives the loss of
  any minority of them (:mod:`bitnode.access.group_replica`: a primary per
  term, fixed by position; a majority holds an entry before anyone is told
  it is there; a backup takes over when the primary is gone). The creator is
  a member like the others: it can be offline, or gone, and the group goes on.
- **Membership is in the log.** The roster (:mod:`bitnode.access.group_roster`)
  is made of control entries signed by the creator or an admin: ``add`` (the
  new member's keys sealed to its master key), ``remove`` (a new message key
  for everyone who stays), ``admin`` (the creator makes admins). Brokers
  admit roster members only; members check every control entry themselves.
- **Joining** (``group_join``, after an admin's ``group_share`` invited this
  node) starts a :class:`~bitnode.access.group_member.GroupMember` machine:
  it subscribes at the primary through a :class:`~bitnode.access.group_links.BrokerChain`
  (redirects followed, dead brokers passed over), learns the roster and its
  keys, fetches every entry after the last one stored here (all of them for
  a new member: a late joiner reads the history, from any broker) and then
  takes pushes. Memberships are kept in ``metadata/groups.sqlite`` and
  rejoined when the node starts.
- **Sending** (``message_send_group``) seals the data with the group's
  current generation key, signs it with my identity key
  (:mod:`bitnode.chat.message_crypto` format 2) and publishes it to the
  primary. OK means "committed on a majority of the brokers"; a primary that
  went away makes the membership subscribe again (a backup takes over) and
  the same message is sent there (kept once); no broker within
  ``send-timeout`` is a 503 (never a silent OK).
- **Receiving**: each member opens the entries in log order (the sender's
  signature, the generation key) and stores them in the message history
  (conversation = the group key id, ``message_type`` ``group_message``), so
  every member's history lists a group's messages in the same order.

Backup: the ``groups`` part of the catalog backup (:mod:`bitnode.access.group_backup`)
holds each group's config, my membership, its message keys and a bounded
tail of its newest entries, so a recovered member (or creator) gets its groups
back and sees their history even if no broker is left; with brokers alive it
fetches the whole history from them.

Wire: group frames in ``Message`` packets (:mod:`bitnode.access.group_protocol`),
routed to this service by the gateway's packet router.

Events on the node's bus: ``group-member-joined`` / ``group-member-left``
(``{"group_key_id", "member_id", "queue"}``; ``queue`` false: this node's own
membership, true: a member subscribed to a log hosted here),
``group-message-received`` (an incoming group message stored, the history
row), ``group-message-sent`` (my own group message stored in its place) and
``group-invited`` (``{"group_key_id", "from"}``: an admin invited this node).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from bitnode.access import group_admin, group_backup, group_config, group_messages, group_roster, group_views
from bitnode.access.group_config import GroupConfig
from bitnode.access.group_frames import answer_request
from bitnode.access.group_keyring import Keyring
from bitnode.access.group_links import BrokerChain, answer_frame, ask_peer
from bitnode.access.group_log import GroupLog
from bitnode.access.group_member import GroupMember
from bitnode.access.group_protocol import (
    decode_frame,
    encode_frame,
    is_group_frame,
    parse_group_key_id,
    refusal,
)
from bitnode.access.group_queue import BrokerLimits, GroupBroker
from bitnode.access.group_store import GroupStore
from bitnode.chat.message_crypto import (
    SEAL_OVERHEAD,
    normalize_data,
)
from bitnode.chat.messages_service import PrivateMessagesService
from bitnode.errors import BadRequest, BitnodeError, Conflict, NotFound, Unavailable
from bitnode.main.options import BOOLEAN, DISK_SPACE, FLOAT, INTEGER, Option
from bitnode.main.sqlitedb import StoreClosed
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.storage.backups_service import BackupsService
from bitnode.storage.ports import SupplierProvider
from bitnode.supplier.supplier_service import SupplierService
from bitnode.transport.commands import Command
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService

PREFIX = "services/private-groups/"


class GroupsService(Service):
    """Groups of one node: its memberships, and the logs it hosts as a broker."""

    name = "service_private_groups"
    requires = {"messages": PrivateMessagesService, "gateway": GatewayService, "identity": IdentityService}
    optional = {"storage": BackupsService, "suppliers": SupplierProvider, "supplier": SupplierService}
    description = "Message groups: an ordered, end-to-end encrypted message log kept by several brokers"
    options = (
        Option(PREFIX + "request-timeout", FLOAT, 20.0,
               "Seconds a node waits for another's answer about a group (a broker, a member) before counting "
               "it unreachable.", minimum=0.1, maximum=600.0),
        Option(PREFIX + "push-timeout", FLOAT, 10.0,
               "Seconds a broker waits for a member to take a pushed message.", minimum=0.1, maximum=600.0),
        Option(PREFIX + "send-timeout", FLOAT, 60.0,
               "Seconds message_send_group keeps trying (through a broker's takeover) before it answers 503.",
               minimum=1.0, maximum=3600.0),
        Option(PREFIX + "brokers", INTEGER, 3,
               "Brokers a new group's log is kept on (this node's suppliers, then itself); a majority of them "
               "must be reachable.", minimum=1, maximum=group_config.MAX_BROKERS),
        Option(PREFIX + "max-groups", INTEGER, 1000,
               "Groups this node keeps invitations for (counter invitations_refused).", minimum=1, maximum=100000),
        Option(PREFIX + "heartbeat-interval", FLOAT, 30.0,
               "Seconds between a primary broker's rounds: entries a backup misses are sent again, entries not "
               "yet on a majority are retried, backups in a newer term are found.", minimum=1.0, maximum=3600.0),
        Option(PREFIX + "broker-customers-only", BOOLEAN, True,
               "Keep group logs only for this node's customers (a group's brokers are its creator's suppliers); "
               "off: for anyone who names this node in a signed group config (counter host_refused)."),
        Option(PREFIX + "broker-max-logs", INTEGER, 500,
               "Group logs this node hosts as a broker, in all (counter host_refused).", minimum=0, maximum=100000),
        Option(PREFIX + "broker-max-logs-per-creator", INTEGER, 20,
               "Group logs this node hosts for one creator (counter host_refused).", minimum=0, maximum=100000),
        Option(PREFIX + "broker-max-messages", INTEGER, 10000,
               "Messages a hosted log keeps; older ones are dropped (counter trimmed).", minimum=10,
               maximum=10_000_000),
        Option(PREFIX + "broker-max-bytes", DISK_SPACE, 64 * 1024 * 1024,
               "Bytes of messages a hosted log keeps; older ones are dropped (counter trimmed).",
               minimum=1024 * 1024),
        Option(PREFIX + "broker-max-members", INTEGER, 200,
               "Members a hosted group may have (counter full).", minimum=1, maximum=10000),
        Option(PREFIX + "broker-publish-rate", FLOAT, 2.0,
               "Entries per second one member may publish to a hosted log on average (counter rate_limited); "
               "0: no limit.", minimum=0.0, maximum=10000.0),
        Option(PREFIX + "broker-publish-burst", FLOAT, 20.0,
               "Entries one member may publish at once before the rate applies.", minimum=1.0, maximum=100000.0),
        Option(PREFIX + "backup-history-messages", INTEGER, 200,
               "Newest entries of each group kept in the catalog backup (0: none).", minimum=0, maximum=100000),
        Option(PREFIX + "backup-history-bytes", DISK_SPACE, 1024 * 1024,
               "Bytes of entries of all groups kept in the catalog backup.", minimum=0),
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.store: Optional[GroupStore] = None
        self.logs: Optional[GroupLog] = None
        self.broker: Optional[GroupBroker] = None
        self.keyring: Optional[Keyring] = None
        self.members: dict[str, GroupMember] = {}
        self.configs: dict[str, GroupConfig] = {}
        self.store_file = os.path.join(ctx.basedir.metadata, "groups.sqlite")
        self.logs_file = os.path.join(ctx.basedir.metadata, "group-logs.sqlite")
        self._gateway: Any = None
        self._messages: Any = None
        self._work: set[Deferred] = set()
        self.counters = {"frames": 0, "refused_frames": 0, "invitations": 0, "invitations_refused": 0,
                         "resealed": 0, "restored_entries": 0}
        self._unregister_part: Any = None
        self._route: Any = None
        self._unsubscribe: Any = None

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Deferred:
        """Open the stores, host the logs, take group frames, rejoin the groups joined before."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        gateway = self.deps.gateway.require_gateway()
        me = self.me()
        store = await self.ctx.run_in_thread(GroupStore, self.store_file)
        try:
            logs = await self.ctx.run_in_thread(GroupLog, self.logs_file)
        except BaseException:
            await self.ctx.run_in_thread(store.close)
            raise
        self._gateway, self._messages = gateway, self.deps.messages
        keyring = Keyring(me, store, self.ctx.run_in_thread, self.keystore, self.public_key)
        broker = GroupBroker(self.ctx.clock, me, logs, self.ctx.run_in_thread, self.ask, self.public_key,
                             self._push, self._tell_moved, self.broker_limits, self.ctx.events.publish,
                             self._may_host)
        try:
            await broker.load()
            known = await self.ctx.run_in_thread(store.groups)
            cursors = await self.ctx.run_in_thread(store.cursors)
        except BaseException:
            broker.stop()
            await self.ctx.run_in_thread(store.close)
            await self.ctx.run_in_thread(logs.close)
            raise
        self.store, self.logs, self.broker, self.keyring = store, logs, broker, keyring
        self.configs = {}
        for group_key_id, row in known.items():
            try:
                self.configs[group_key_id] = group_config.parse(row["config"])
            except BadRequest as err:
                self.log.warn("group {group}: its config is not readable: {err}", group=group_key_id, err=err)
        self._route = gateway.router.add(Command.MESSAGE, self._on_frame, accepts=_carries_group_frame,
                                         owner=self.name)
        for group_key_id, cursor in cursors.items():
            if cursor["active"] and group_key_id in self.configs:
                row = known[group_key_id]
                self._start_member(group_key_id, cursor["last_sequence"], row["leader"] or None, row["term"])
        self._unsubscribe = self.ctx.events.subscribe(self._on_event)
        self.ctx.settings.add_listener(PREFIX + "broker-publish-", self._rate_changed)
        storage = self._storage()
        if storage is not None:  # a part restored before this start is handed over now
            self._unregister_part = storage.add_backup_part(group_backup.PART, self._collect_part, self._restore_part)

    def stop(self) -> Deferred:
        """Stop taking frames, close the memberships (the brokers keep them), stop hosting, close the stores."""
        for undo in (self._unregister_part, self._unsubscribe):
            if undo is not None:
                undo()
        self._unregister_part = self._unsubscribe = None
        if self.broker is not None:
            self.ctx.settings.remove_listener(PREFIX + "broker-publish-", self._rate_changed)
        if self._route is not None:
            self._route.remove()
            self._route = None
        for member in list(self.members.values()):
            member.close()
        self.members.clear()
        if self.broker is not None:
            self.broker.stop()
        stores = [s for s in (self.store, self.logs) if s is not None]
        self.store = self.logs = self.broker = self.keyring = None
        self._gateway = self._messages = None
        work = list(self._work)
        for d in work:
            d.cancel()

        def close(_: Any) -> Deferred:
            return defer.DeferredList([self.ctx.run_in_thread(s.close) for s in stores])

        return defer.DeferredList(work, consumeErrors=True).addCallback(close)

    def status(self) -> dict:
        """Counters for service_info."""
        result = dict(self.counters, memberships=len(self.members))
        if self.broker is not None:
            result["broker"] = dict(self.broker.counters, hosted_logs=len(self.broker.replicas))
        if self.keyring is not None:
            result.update(self.keyring.counters)
        return result

    # -- what the parts of this service share (group_admin, group_views, group_frames use these) -------

    def require(self) -> GroupStore:
        """The member-side store (503 while the service is not running)."""
        if self.store is None or self.broker is None or self.keyring is None:
            raise Unavailable(f"{self.name} is not running")
        return self.store

    def me(self) -> str:
        return self.deps.identity.require_identity().global_id

    def keystore(self) -> Any:
        identity = self.deps.identity
        identity.require_identity()
        return identity.keystore

    def setting(self, name: str) -> float:
        return float(self.ctx.settings.get(PREFIX + name))

    def setting_int(self, name: str) -> int:
        return int(self.ctx.settings.get(PREFIX + name))

    def broker_limits(self) -> BrokerLimits:
        """The broker's limits as the settings say now."""
        return BrokerLimits(
            max_logs=self.setting_int("broker-max-logs"),
            max_logs_per_creator=self.setting_int("broker-max-logs-per-creator"),
            max_messages=self.setting_int("broker-max-messages"), max_bytes=self.setting_int("broker-max-bytes"),
            max_members=self.setting_int("broker-max-members"), publish_rate=self.setting("broker-publish-rate"),
            publish_burst=self.setting("broker-publish-burst"), max_entry_bytes=max(self._max_blob(),
                                                                                    group_roster.MAX_CONTROL_BYTES),
            heartbeat=self.setting("heartbeat-interval"))

    def _may_host(self, creator: str) -> bool:
        """Whether this node keeps logs of ``creator``'s groups: a customer's (or anyone's, if so set)."""
        if not bool(self.ctx.settings.get(PREFIX + "broker-customers-only")):
            return True
        supplier = self.deps.supplier
        desk = supplier.desk if supplier is not None else None
        return desk is not None and creator in desk.customers

    def _rate_changed(self, key: str, old: Any, new: Any) -> None:
        """A publish rate setting changed: the broker applies it from now on."""
        if self.broker is not None:
            self.broker.configure()

    def broker_candidates(self) -> list[str]:
        """Who may host a new group's log, best first: my suppliers by position, then me."""
        provider = self.deps.suppliers
        suppliers = [s for s in (provider.positions() if provider is not None else []) if s]
        me = self.me()
        return list(dict.fromkeys([*suppliers, me]))

    def public_key(self, user: str) -> Deferred:
        """Deferred[RsaPublicKey]: a user's published master key."""
        return self.deps.identity.fetch_identity(user).addCallback(lambda identity: identity.rsa_public_key())

    def config(self, group_key_id: str) -> GroupConfig:
        """A known group's config (NotFound: this node was never invited)."""
        key_id = str(parse_group_key_id(group_key_id))
        config = self.configs.get(key_id)
        if config is None:
            raise NotFound(f"this node does not know group {key_id}: an admin of the group must group_share it")
        return config

    def active_membership(self, group_key_id: str) -> tuple[GroupConfig, GroupMember]:
        """A group's config and my membership of it, which must be joined (Conflict otherwise)."""
        self.require()
        config = self.config(group_key_id)
        member = self.members.get(config.group_key_id)
        if member is None:
            raise Conflict(f"not a member of group {config.group_key_id} now: call group_join first")
        return config, member

    def run_work(self, coroutine: Any) -> Deferred:
        """Run work the service waits for (or cancels) before closing the stores."""
        d = Deferred.fromCoroutine(coroutine)
        if not d.called:
            self._work.add(d)
            d.addBoth(lambda result: (self._work.discard(d), result)[1])
        return d

    def _max_blob(self) -> int:
        return self.deps.messages.max_message_size() + SEAL_OVERHEAD

    # -- talking to other nodes (and to this node's own broker) -------------------------------------

    def ask(self, peer: str, op: str, group_key_id: str, blobs: tuple[bytes, ...] = (), **fields: Any) -> Deferred:
        """One group request to ``peer`` (this node itself included): Deferred[answer Frame]."""
        payload = encode_frame(op, group_key_id, blobs, **fields)
        if peer == self.me():
            return Deferred.fromCoroutine(self._ask_myself(payload))
        gateway = self._gateway
        if gateway is None:
            return defer.fail(Unavailable(f"{self.name} is stopping"))
        return Deferred.fromCoroutine(ask_peer(gateway, peer, payload, self.setting("request-timeout")))

    async def _ask_myself(self, payload: bytes) -> Any:
        me = self.me()
        answer = await answer_request(self, me, decode_frame(payload))
        return answer_frame(decode_frame(answer), me)

    def _push(self, member: str, group_key_id: str, sequence: int, blob: bytes) -> Deferred:
        replica = self.broker.replicas.get(group_key_id) if self.broker is not None else None
        term = replica.term if replica is not None else 0
        if member == self.me():
            local = self.members.get(group_key_id)
            if local is None:
                return defer.fail(NotFound(f"not joined to group {group_key_id}"))
            local.moved(self.me(), term)
            local.event("pushed", sequence, blob)
            return defer.succeed(None)
        gateway = self._gateway
        if gateway is None:
            return defer.fail(Unavailable(f"{self.name} is stopping"))
        payload = encode_frame("push", group_key_id, (blob,), sequence=sequence, term=term)
        return Deferred.fromCoroutine(ask_peer(gateway, member, payload, self.setting("push-timeout")))

    def _tell_moved(self, member: str, group_key_id: str, term: int) -> Deferred:
        return self.ask(member, "moved", group_key_id, (), term=term)

    # -- memberships --------------------------------------------------------------------------

    async def join_member(self, group_key_id: str) -> GroupMember:
        """My membership of a known group, started (or told to try again) and saved as active."""
        store = self.require()
        config = self.config(group_key_id)
        key_id = config.group_key_id
        member = self.members.get(key_id)
        if member is not None:
            member.event("join")  # a disconnected or refused membership tries again now
            return member
        cursor = (await self.ctx.run_in_thread(store.cursors)).get(key_id, {})
        last = cursor.get("last_sequence", 0)
        row = (await self.ctx.run_in_thread(store.groups)).get(key_id, {})
        if key_id in self.members:  # joined by a concurrent call meanwhile
            return self.members[key_id]
        await self.ctx.run_in_thread(store.save_cursor, key_id, True, last, self.ctx.clock.seconds())
        return self._start_member(key_id, last, row.get("leader") or None, row.get("term", 0))

    def _start_member(self, group_key_id: str, last_sequence: int, leader: Optional[str], term: int) -> GroupMember:
        config = self.configs[group_key_id]
        keyring = self.keyring
        assert keyring is not None
        chain = BrokerChain(self.ask, group_key_id, config.brokers, leader, term,
                            on_leader=lambda broker, known: self._remember_leader(group_key_id, broker, known))
        member = GroupMember(self.ctx.clock, group_key_id, last_sequence, chain,
                             lambda controls: Deferred.fromCoroutine(keyring.learn(config, controls)),
                             lambda sequence, blob: self._deliver(group_key_id, sequence, blob),
                             lambda active, last: self._save_cursor(group_key_id, active, last),
                             self._announce, registry=self.ctx.automats)
        self.members[group_key_id] = member
        member.event("join")
        return member

    def start_member(self, group_key_id: str) -> GroupMember:
        """Start my membership of a known group from its first entry (a group restored from a backup)."""
        return self._start_member(group_key_id, 0, None, 0)

    def _remember_leader(self, group_key_id: str, leader: str, term: int) -> None:
        store = self.store
        if store is not None:
            d = self.ctx.run_in_thread(store.set_leader, group_key_id, leader, term)
            d.addErrback(lambda f: f.trap(StoreClosed) and None)

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
                                                             "member_id": self.me(), "queue": False})
        self.log.info("group {group}: {what} ({state}) {reason}", group=facts["group_key_id"], what=what,
                      state=facts["state"], reason=facts["reason"])

    # -- the API ------------------------------------------------------------------------------

    def create_group(self, creator_id: Optional[str] = None, key_size: Optional[int] = None, label: str = "",
                     timeout: float = 20.0) -> Deferred:
        """Make a new group (key, brokers, config) and join it; Deferred[group info]."""
        return self.run_work(group_admin.create_group(self, creator_id, key_size, label, timeout))

    def share(self, group_key_id: str, trusted_user_id: str, timeout: float = 30.0, admin: Optional[bool] = None
              ) -> Deferred:
        """Let a user into the group and invite it (an admin only; ``admin``: the creator also makes it an
        admin or not); Deferred[key_share-like result + ``sequence``]."""
        async def run() -> dict:
            result = await group_admin.share(self, group_key_id, trusted_user_id, timeout)
            if admin is not None:
                made = await group_admin.set_admin(self, group_key_id, trusted_user_id, admin, timeout)
                result["admin"] = made["admin"]
            return result

        return self.run_work(run())

    def remove_member(self, group_key_id: str, member_id: str, timeout: float = 30.0) -> Deferred:
        """Remove a member (an admin only) and rotate the message key; Deferred[dict]."""
        return self.run_work(group_admin.remove_member(self, group_key_id, member_id, timeout))

    def join(self, group_key_id: str) -> Deferred:
        """Become an active member (idempotent): Deferred[group info] once connected and caught up, or
        disconnected (it retries in the background); the brokers' refusal (403 not a member, 404 no such
        group) is an error."""
        async def run() -> dict:
            member = await self.join_member(group_key_id)
            state = await member.when_settled(3 * self.setting("request-timeout"))
            if state == "REFUSED" and member.refusal is not None:
                raise type(member.refusal)(str(member.refusal))
            return await group_views.describe_group(self, member.group_key_id)

        return self.run_work(run())

    def leave(self, group_key_id: str, erase_key: bool = False) -> Deferred:
        """Stop being a member (and with ``erase_key`` forget the group; the creator also deletes its log on
        the brokers)."""
        return self.run_work(self._leave(group_key_id, erase_key))

    async def _leave(self, group_key_id: str, erase_key: bool) -> dict:
        store = self.require()
        key_id = str(parse_group_key_id(group_key_id))
        keystore = self.keystore()
        member = self.members.pop(key_id, None)
        cursors = await self.ctx.run_in_thread(store.cursors)
        if member is None and key_id not in cursors and key_id not in self.configs and not keystore.has(key_id):
            raise NotFound(f"unknown group {key_id}")
        last = member.last_sequence if member is not None else cursors.get(key_id, {}).get("last_sequence", 0)
        if member is not None:
            member.event("leave")
        result = {"group_key_id": key_id, "left": member is not None, "key_erased": False, "queue_deleted": False}
        if not erase_key:
            await self.ctx.run_in_thread(store.save_cursor, key_id, False, last, self.ctx.clock.seconds())
            return result
        config = self.configs.pop(key_id, None)
        await self.ctx.run_in_thread(store.forget_group, key_id)
        self.keyring.forget(key_id)
        if keystore.has(key_id):
            keystore.erase(key_id)
            result["key_erased"] = True
        if config is not None and config.creator == self.me():
            answers = await defer.DeferredList([self.ask(b, "drop", key_id, ()) for b in config.brokers],
                                               consumeErrors=True)
            result["queue_deleted"] = any(ok and answer.fields.get("dropped") for ok, answer in answers)
        return result

    # -- sending and receiving (bitnode.access.group_messages) ------------------------------------

    def send(self, group_key_id: str, data: Any) -> Deferred:
        """Publish a message to the group; Deferred[history row + ``sequence``] once a majority of its brokers
        hold it."""
        try:
            self.require()
            data = normalize_data(data)
            config, _ = self.active_membership(group_key_id)
        except BitnodeError as err:
            return defer.fail(err)
        return self.run_work(group_messages.send(self, config.group_key_id, data))

    def _deliver(self, group_key_id: str, sequence: int, blob: bytes) -> Deferred:
        return self.run_work(group_messages.take_entry(self, group_key_id, sequence, blob))

    async def restore_entry(self, group_key_id: str, sequence: int, blob: bytes) -> None:
        """A backed-up entry: a message goes to the history (the roster comes back from the brokers)."""
        await group_messages.restore_entry(self, group_key_id, sequence, blob)

    def message_service(self) -> Any:
        """service_private_messages while this service runs (its history keeps the group messages), else None."""
        return self._messages

    def max_blob(self) -> int:
        """The largest sealed group message taken (the messages service's size limit + the seal)."""
        return self._max_blob()

    # -- the catalog backup ------------------------------------------------------------------

    def _storage(self) -> Any:
        # Installed is enough: the part stays registered across the storage service's restarts.
        return self.deps.installed("storage")  # None on a node without service_backups: nothing to back up to

    def _collect_part(self) -> dict:
        store = self.store
        if store is None:
            raise Unavailable(f"{self.name} is not running")
        return group_backup.collect(store, self.setting_int("backup-history-bytes"))

    def _on_event(self, event: Any) -> None:
        """Memberships, invitations or the newest entries changed: back the ``groups`` part up (after the
        backup delay)."""
        if event.event_id in ("group-member-joined", "group-member-left", "group-invited"):
            changed = not (isinstance(event.data, dict) and event.data.get("queue"))
        elif event.event_id in ("group-message-sent", "group-message-received"):
            changed = self.setting_int("backup-history-messages") > 0
        else:
            changed = False
        storage = self._storage()
        if changed and storage is not None and self.deps.is_on("storage"):
            storage.backup_needed()

    def _restore_part(self, value: Any) -> None:
        """The ``groups`` part of a restored backup: checked now (a bad one fails the part), applied in the
        background (it needs the stores)."""
        document = group_backup.parse(value)
        self.require()
        d = self.run_work(group_backup.restore(self, document))
        d.addErrback(lambda f: None if f.check(defer.CancelledError, StoreClosed) else
                     self.log.failure("restoring the groups backup failed", f))

    # -- group frames from other nodes ------------------------------------------------------------

    def _on_frame(self, packet: Any, address: Any = None) -> Deferred:
        d = self.run_work(self._answer_frame(packet))
        return d.addErrback(lambda f: f.trap(defer.CancelledError) and None)

    async def _answer_frame(self, packet: Any) -> None:
        gateway = self._gateway
        self.counters["frames"] += 1
        try:
            command, payload = Command.ACK, await answer_request(self, packet.creator_id, decode_frame(packet.payload))
        except BitnodeError as err:
            self.counters["refused_frames"] += 1
            self.log.debug("group frame from {peer} refused: {err}", peer=packet.creator_id, err=err)
            command, payload = Command.FAIL, refusal(err)
        if gateway is None:
            return
        try:
            await gateway.reply(packet, command, payload)
        except BitnodeError as err:
            self.log.info("could not answer {peer}: {err}", peer=packet.creator_id, err=err)

    # -- views -------------------------------------------------------------------------------

    def groups(self, only_active: bool = False, include_mine: bool = True, include_granted: bool = True) -> Deferred:
        """Deferred[list] of the groups this node knows (see :meth:`info`)."""
        return self.run_work(group_views.list_groups(self, only_active, include_mine, include_granted))

    def info(self, group_key_id: str) -> Deferred:
        """Deferred[dict]: the group's key and config, my membership, its roster and, where this node is a
        broker, its log."""
        try:
            key_id = str(parse_group_key_id(group_key_id))
        except BitnodeError as err:
            return defer.fail(err)
        return self.run_work(group_views.describe_group(self, key_id))

    def queues(self) -> Deferred:
        """Deferred[list] of the logs hosted here."""
        self.require()
        return self.broker.queues()

    def consumers(self) -> list[dict]:
        """The consumers of the logs hosted here."""
        self.require()
        return self.broker.consumers()

    def producers(self) -> Deferred:
        """Deferred[list] of the producers of the logs hosted here."""
        self.require()
        return self.broker.producers()


def _carries_group_frame(packet: Any) -> bool:
    """Router predicate: a ``Message`` packet whose payload is a group frame."""
    return is_group_frame(packet.payload)
