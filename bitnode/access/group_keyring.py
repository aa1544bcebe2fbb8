"""A member's view of its groups' rosters and keys: what it believes, and the sealing and opening of messages.

Brokers check the roster before an entry enters a group's log, but a member
believes only what it checks itself (a broker could lie): every control
entry it reads (:mod:`bitnode.access.group_roster`) must be signed by its
author's published identity key and allowed by the roster as the member
folded it so far, else it is skipped. Key bundles addressed to this node
are opened with its master key; the generation keys go into the group store
(``secrets``), the group's private key into the key store (so the group
shows in ``groups_list`` and its key goes into the key backup).

A member seals with the generation of the roster it knows; a broker refuses
a message sealed with an older generation than the log's (a member removed
meanwhile must not read it), and the sender learns the new roster and seals
again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from bitnode.access import group_roster
from bitnode.access.group_config import GroupConfig
from bitnode.access.group_roster import ControlEntry, Roster
from bitnode.chat.message_crypto import (
    MessageHeader,
    MessageRejected,
    OpenedMessage,
    open_with_secret,
    peek,
    seal_with_secret,
    sealed_generation,
)
from bitnode.crypt import keys
from bitnode.errors import BadRequest, BitnodeError, Conflict, Forbidden


@dataclass(eq=False, repr=False)
class Keyring:
    """Rosters (in memory) and generation keys (in the group store) of the groups this node is in.

    :param me: this node's global id.
    :param store: the :class:`~bitnode.access.group_store.GroupStore` (through ``run``).
    :param run: runs a blocking call off the reactor, returns a Deferred.
    :param keystore: ``() -> KeyStore`` (this node's keys: the master key, the group keys).
    :param public_key: ``public_key(user) -> Deferred[RsaPublicKey]``: a user's published master key.
    """

    log = Logger()

    me: str
    store: Any
    run: Callable[..., Deferred]
    keystore: Callable[[], Any]
    public_key: Callable[[str], Deferred]
    rosters: dict[str, Roster] = field(init=False, default_factory=dict)
    _secrets: dict[str, dict[int, bytes]] = field(init=False, default_factory=dict)
    counters: dict[str, int] = field(init=False, default_factory=lambda: {
        "controls_applied": 0, "controls_skipped": 0, "bundles_opened": 0})

    # -- keys --------------------------------------------------------------------------------

    async def secrets(self, group_key_id: str) -> dict[int, bytes]:
        """The generation keys of a group this node holds."""
        if group_key_id not in self._secrets:
            held = await self.run(self.store.secrets, group_key_id)
            self._secrets[group_key_id] = dict(held.get(group_key_id, {}))
        return self._secrets[group_key_id]

    async def add_secrets(self, group_key_id: str, generations: dict[int, bytes]) -> None:
        """Keep generation keys (persisted before they are used)."""
        await self.run(self.store.add_secrets, group_key_id, generations)
        held = await self.secrets(group_key_id)
        for generation, secret in generations.items():
            held.setdefault(generation, secret)

    def forget(self, group_key_id: str) -> None:
        """Forget what is kept in memory about a group."""
        self.rosters.pop(group_key_id, None)
        self._secrets.pop(group_key_id, None)

    def generation(self, group_key_id: str) -> int:
        """The generation new messages are sealed with: the roster's as this node knows it."""
        roster = self.rosters.get(group_key_id)
        return roster.generation if roster is not None else group_roster.FIRST_GENERATION

    # -- the roster ----------------------------------------------------------------------------

    async def learn(self, config: GroupConfig, controls: list[tuple[int, bytes]]) -> Roster:
        """Fold a group's control entries (a subscribe answer: all of them up to the log's commit) into the
        roster this node believes, taking the keys meant for it on the way."""
        group_key_id = config.group_key_id
        if config.creator == self.me and config.creator_keys:
            await self._open_bundle(group_key_id, config.creator_keys)
        roster = Roster.first(config.creator)
        for seq, blob in controls:
            roster = await self._apply(group_key_id, roster, seq, blob)
        known = self.rosters.get(group_key_id)
        if known is None or known.seq <= roster.seq:
            self.rosters[group_key_id] = roster
        return self.rosters[group_key_id]

    async def on_entry(self, group_key_id: str, creator: str, seq: int, blob: bytes) -> Roster:
        """A control entry delivered in the group's order: applied unless the roster is past it already."""
        roster = self.rosters.get(group_key_id) or Roster.first(creator)
        if seq > roster.seq:
            roster = await self._apply(group_key_id, roster, seq, blob)
            self.rosters[group_key_id] = roster
        return roster

    async def _apply(self, group_key_id: str, roster: Roster, seq: int, blob: bytes) -> Roster:
        try:
            entry = group_roster.decode(blob)
            if entry.op == "term":
                skipped = roster.copy()
                skipped.seq = seq
                return skipped
            await self._check_signature(entry)
            group_roster.check(roster, entry, group_key_id)
        except (BadRequest, Forbidden, Conflict) as err:
            self.counters["controls_skipped"] += 1
            self.log.warn("group {group}: control entry {seq} skipped: {err}", group=group_key_id, seq=seq, err=err)
            skipped = roster.copy()
            skipped.seq = seq
            return skipped
        bundle = entry.wraps.get(self.me)
        if bundle is not None:
            await self._open_bundle(group_key_id, bundle)
        self.counters["controls_applied"] += 1
        return group_roster.apply(roster, entry, seq)

    async def _check_signature(self, entry: ControlEntry) -> None:
        key = await self.public_key(entry.by)
        if not await self.run(group_roster.verify, entry, key):
            raise Forbidden(f"a control entry not signed by {entry.by}")

    async def _open_bundle(self, group_key_id: str, bundle: str) -> None:
        keystore = self.keystore()
        master = keystore.private_key(keystore.master_key_id)
        try:
            generations, pem, label = await self.run(group_roster.unwrap_keys, master, group_key_id, self.me, bundle)
        except BadRequest as err:
            self.log.warn("group {group}: a key bundle for me did not open: {err}", group=group_key_id, err=err)
            return
        await self.add_secrets(group_key_id, generations)
        if pem is not None and not (keystore.has(group_key_id) and keystore.get(group_key_id).is_private):
            try:
                keystore.add_private(group_key_id, pem, label)
            except BitnodeError as err:
                self.log.warn("group {group}: its key was not stored: {err}", group=group_key_id, err=err)
        self.counters["bundles_opened"] += 1

    # -- messages --------------------------------------------------------------------------------

    async def seal(self, group_key_id: str, header: MessageHeader, data: Any) -> bytes:
        """``data`` sealed with the group's current generation key and signed with my master key."""
        generation = self.generation(group_key_id)
        secret = (await self.secrets(group_key_id)).get(generation)
        if secret is None:
            raise Conflict(f"this node holds no key of generation {generation} of group {group_key_id} "
                           "(not joined yet?)")
        keystore = self.keystore()
        return await self.run(seal_with_secret, header, data, keystore.private_key(keystore.master_key_id),
                              generation, secret)

    async def open(self, group_key_id: str, blob: bytes, sender: Optional[str] = None) -> OpenedMessage:
        """A message entry verified (its sender's signature) and decrypted (MessageRejected otherwise)."""
        header = peek(blob)
        if sender is not None and header.sender != sender:
            raise MessageRejected(f"a message of {header.sender} published by {sender}")
        generation = sealed_generation(blob)
        secret = (await self.secrets(group_key_id)).get(generation)
        if secret is None:
            raise MessageRejected(f"no key of generation {generation} of group {group_key_id} here")
        key = await self.public_key(header.sender)
        return await self.run(open_with_secret, blob, secret, key, group_key_id)


def key_pem(keystore: Any, group_key_id: str) -> Optional[str]:
    """The group's private key as PEM text, or None when this node holds only its public half."""
    if not keystore.has(group_key_id) or not keystore.get(group_key_id).is_private:
        return None
    return keys.private_to_pem(keystore.private_key(group_key_id)).decode("ascii")
