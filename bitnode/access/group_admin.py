"""What the creator and the admins of a group do: create it, invite, remove members, make admins.

Functions over :class:`~bitnode.access.groups_service.GroupsService` (its
keys, stores, broker and memberships), kept apart from the service's wiring:

- **create**: a new group key; brokers picked (this node's suppliers by
  position, then this node itself, up to the ``brokers`` setting; a node
  without suppliers is its group's only broker); a first generation key; the
  config signed and sent to every broker (``host``); a majority must take it
  (the others get it later from the primary); then this node joins.
- **share** (an admin): an ``add`` control entry with the new member's key
  bundle (the group key and every generation key, sealed to the member's
  master key) goes into the log, then the member is told (``invite``, with
  the config) so it can ``group_join``. Sharing again with a member re-sends
  the invitation.
- **remove** (an admin; an admin's removal needs the creator): a ``remove``
  entry with a new generation key sealed to every member that stays. From
  that point of the log on, messages are sealed with the new key: the
  removed member keeps what it could read before, nothing after.
- **admin** (the creator): an ``admin`` entry makes or unmakes an admin.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer

from bitnode import globalid
from bitnode.access import group_config, group_roster, group_views
from bitnode.access.group_config import GroupConfig, quorum
from bitnode.access.group_keyring import key_pem
from bitnode.access.group_protocol import new_group_alias
from bitnode.access.key_packets import check_timeout
from bitnode.crypt import keys
from bitnode.errors import BadRequest, BitnodeError, Conflict, Forbidden, NotFound, Unavailable


async def create_group(service: Any, creator_id: Optional[str], key_size: Optional[int], label: str,
                       timeout: float) -> dict:
    """See the module doc; the group's info once this node is connected to it."""
    service.require()
    me = service.me()
    if creator_id not in (None, "") and str(globalid.to_global_id(creator_id)) != me:
        raise Forbidden(f"a group can only be created by this node's own identity {me}")
    check_timeout(timeout)
    size = keys.check_key_size(int(service.ctx.settings.get("personal/private-key-size")) if key_size is None
                               else key_size)
    keystore = service.keystore()
    info = await keystore.create(new_group_alias(), size, label or "")
    group_key_id = info.key_id
    master = keystore.private_key(keystore.master_key_id)
    secret = group_roster.new_secret()
    creator_keys = await service.ctx.run_in_thread(group_roster.wrap_keys, master.public_key(), group_key_id, me,
                                                   {group_roster.FIRST_GENERATION: secret})
    await service.keyring.add_secrets(group_key_id, {group_roster.FIRST_GENERATION: secret})
    config = await _hosted_config(service, group_key_id, info.fingerprint, creator_keys, master)
    await service.ctx.run_in_thread(service.store.add_group, group_key_id, config.to_json(), me,
                                    service.ctx.clock.seconds())
    service.configs[group_key_id] = config
    member = await service.join_member(group_key_id)
    await member.when_settled(timeout)
    service.log.info("group {group} created, brokers {brokers}", group=group_key_id, brokers=list(config.brokers))
    return await group_views.describe_group(service, group_key_id)


async def _hosted_config(service: Any, group_key_id: str, fingerprint: str, creator_keys: str,
                         master: keys.RsaPrivateKey) -> GroupConfig:
    """A signed config whose brokers took it (a majority of them); fewer candidates on each refusal."""
    me = service.me()
    candidates = service.broker_candidates()
    wanted = service.setting_int("brokers")
    while True:
        brokers = candidates[:wanted] if candidates else [me]
        config = group_config.new_config(group_key_id, me, fingerprint, brokers, service.ctx.clock.seconds(),
                                         creator_keys)
        config = await service.ctx.run_in_thread(group_config.sign, config, master)
        results = await defer.DeferredList([service.ask(b, "host", group_key_id, (), config=config.to_dict())
                                            for b in brokers], consumeErrors=True)
        refused = [b for b, (ok, _) in zip(brokers, results, strict=True) if not ok]
        for broker, (ok, failure) in zip(brokers, results, strict=True):
            if not ok:
                service.log.info("{broker} does not host group {group}: {err}", broker=broker, group=group_key_id,
                                 err=failure.getErrorMessage())
        if len(brokers) - len(refused) >= quorum(config):
            return config
        if brokers == [me]:
            raise Unavailable(f"this node could not host group {group_key_id} itself: "
                              f"{results[0][1].getErrorMessage()}")
        for broker in brokers:  # not enough of them: leave nothing behind, try the others
            if broker not in refused:
                service.ask(broker, "drop", group_key_id, ()).addErrback(lambda f: None)
        candidates = [c for c in candidates if c not in refused]


async def share(service: Any, group_key_id: str, user: str, timeout: float) -> dict:
    """Let ``user`` into the group (an admin only) and invite it; key_share-like result + ``sequence``."""
    member_id = str(globalid.to_global_id(user))
    check_timeout(timeout)
    config, member = service.active_membership(group_key_id)
    me = service.me()
    if member_id == me:
        raise BadRequest("that is this node's own user id")
    roster = service.keyring.rosters.get(group_key_id)
    if roster is None or not roster.is_admin(me):
        raise Forbidden(f"only an admin of group {group_key_id} lets others in (the creator makes admins)")
    sequence = None
    if not roster.is_member(member_id):
        keystore = service.keystore()
        target = await service.public_key(member_id)
        held = await service.keyring.secrets(group_key_id)
        label = keystore.get(group_key_id).label if keystore.has(group_key_id) else ""
        bundle = await service.ctx.run_in_thread(group_roster.wrap_keys, target, group_key_id, member_id, dict(held),
                                                 key_pem(keystore, group_key_id), label)
        sequence = await _publish_control(service, member, "add", timeout, member=member_id, wraps={member_id: bundle})
    try:
        await service.ask(member_id, "invite", group_key_id, (), config=config.to_dict())
    except BitnodeError as err:
        raise Unavailable(f"{member_id} is a member of group {group_key_id} now but did not take the invitation "
                          f"({err}): share again when it is online") from None
    keystore = service.keystore()
    info = keystore.get(group_key_id) if keystore.has(group_key_id) else None
    return {"key_id": group_key_id, "group_key_id": group_key_id, "trusted_user_id": member_id,
            "include_private": True, "fingerprint": config.key_fingerprint, "label": info.label if info else "",
            "shared": True, "sequence": sequence}


async def remove_member(service: Any, group_key_id: str, user: str, timeout: float) -> dict:
    """Remove ``user`` and rotate the message key; ``{"group_key_id", "member_id", "removed", "generation",
    "sequence"}``."""
    member_id = str(globalid.to_global_id(user))
    check_timeout(timeout)
    _, member = service.active_membership(group_key_id)
    me = service.me()
    roster = service.keyring.rosters.get(group_key_id)
    if roster is None or not roster.is_admin(me):
        raise Forbidden(f"only an admin of group {group_key_id} removes members")
    if not roster.is_member(member_id):
        raise NotFound(f"{member_id} is not a member of group {group_key_id}")
    generation = roster.generation + 1
    secret = group_roster.new_secret()
    stay = sorted(m for m in roster.members if m != member_id)
    public_keys = await defer.gatherResults([service.public_key(m) for m in stay], consumeErrors=True)
    wraps = {}
    for stayer, public in zip(stay, public_keys, strict=True):
        wraps[stayer] = await service.ctx.run_in_thread(group_roster.wrap_keys, public, group_key_id, stayer,
                                                        {generation: secret})
    # The new key becomes mine the way it becomes everyone's: from the entry, once the log has it
    # (_publish_control waits for that). Kept before, a refused removal would leave a key nobody else has.
    sequence = await _publish_control(service, member, "remove", timeout, member=member_id, generation=generation,
                                      wraps=wraps)
    return {"group_key_id": group_key_id, "member_id": member_id, "removed": True, "generation": generation,
            "sequence": sequence}


async def set_admin(service: Any, group_key_id: str, user: str, admin: bool, timeout: float) -> dict:
    """The creator makes ``user`` an admin (or not); ``{"group_key_id", "member_id", "admin", "sequence"}``."""
    member_id = str(globalid.to_global_id(user))
    check_timeout(timeout)
    config, member = service.active_membership(group_key_id)
    if config.creator != service.me():
        raise Forbidden(f"only the creator of group {group_key_id} makes admins")
    roster = service.keyring.rosters.get(group_key_id)
    if roster is None or not roster.is_member(member_id):
        raise NotFound(f"{member_id} is not a member of group {group_key_id}: group_share first")
    if roster.is_admin(member_id) == admin:
        return {"group_key_id": group_key_id, "member_id": member_id, "admin": admin, "sequence": None}
    sequence = await _publish_control(service, member, "admin", timeout, member=member_id, admin=bool(admin))
    return {"group_key_id": group_key_id, "member_id": member_id, "admin": admin, "sequence": sequence}


async def _publish_control(service: Any, membership: Any, op: str, timeout: float, **fields: Any) -> int:
    """Sign a control entry, publish it through my membership and wait until I applied it; its sequence."""
    keystore = service.keystore()
    master = keystore.private_key(keystore.master_key_id)
    blob = await service.ctx.run_in_thread(group_roster.encode, op, membership.group_key_id, service.me(),
                                           service.ctx.clock.seconds(), master, **fields)
    sequence = await membership.publish(blob, timeout)
    await membership.wait_delivered(sequence, timeout)
    return sequence


async def accept_invite(service: Any, inviter: str, fields: dict) -> dict:
    """An admin tells this node it may join a group: keep its config (checked against the creator's key)."""
    config = group_config.parse(fields.get("config"))
    store = service.require()
    known = (await service.ctx.run_in_thread(store.groups)).get(config.group_key_id)
    if known is None:
        if len(await service.ctx.run_in_thread(store.groups)) >= service.setting_int("max-groups"):
            service.counters["invitations_refused"] += 1
            raise Conflict("this node knows as many groups as it keeps: leave some first")
        creator_key = await service.public_key(config.creator)
        if not await service.ctx.run_in_thread(group_config.verify, config, creator_key):
            service.counters["invitations_refused"] += 1
            raise Forbidden(f"the config of group {config.group_key_id} is not signed by {config.creator}")
        await service.ctx.run_in_thread(store.add_group, config.group_key_id, config.to_json(), inviter,
                                        service.ctx.clock.seconds())
        service.configs[config.group_key_id] = config
        service.counters["invitations"] += 1
        service.ctx.events.publish("group-invited", {"group_key_id": config.group_key_id, "from": inviter})
        service.log.info("invited to group {group} by {inviter}", group=config.group_key_id, inviter=inviter)
    elif group_config.parse(known["config"]) != config:
        raise Conflict(f"group {config.group_key_id} is known here with another config")
    return {"group_key_id": config.group_key_id}
