"""What the groups API shows of a group: the list of my groups and one group's facts.

Read-only views over :class:`~bitnode.access.groups_service.GroupsService`
(its key store, configs, member automats, the rosters it believes and, where
this node is one of a group's brokers, the log it hosts), kept apart from the
service's sending and receiving.
"""

from __future__ import annotations

from typing import Any

from bitnode.access.group_protocol import creator_of, is_group_key_id
from bitnode.errors import NotFound


def _known_groups(service: Any) -> list[str]:
    keystore = service.keystore()
    held = [info.key_id for info in keystore.list() if is_group_key_id(info.key_id) and info.is_private]
    return sorted(set(held) | set(service.configs))


async def list_groups(service: Any, only_active: bool, include_mine: bool, include_granted: bool) -> list[dict]:
    """The groups this node created, joined or was invited to, each as :func:`describe_group` without the log."""
    service.require()
    me = service.me()
    result = []
    for group_key_id in _known_groups(service):
        mine = creator_of(group_key_id) == me
        if (mine and not include_mine) or (not mine and not include_granted):
            continue
        member = service.members.get(group_key_id)
        if only_active and (member is None or not member.is_active()):
            continue
        result.append(await describe_group(service, group_key_id, with_queue=False))
    return result


async def describe_group(service: Any, group_key_id: str, with_queue: bool = True) -> dict:
    """The group's key and config, my membership, the roster as I know it and, when this node hosts the
    group's log, where the log stands (``queue``, ``log``, ``consumers``)."""
    store = service.require()
    keystore = service.keystore()
    config = service.configs.get(group_key_id)
    key = keystore.get(group_key_id) if keystore.has(group_key_id) else None
    if config is None and key is None:
        raise NotFound(f"unknown group {group_key_id}")
    me = service.me()
    creator = config.creator if config is not None else creator_of(group_key_id)
    brokers = list(config.brokers) if config is not None else []
    result = {"group_key_id": group_key_id, "alias": group_key_id.split("$", 1)[0],
              "label": key.label if key else "", "creator": creator, "mine": creator == me,
              "key_size": key.size if key else None,
              "fingerprint": key.fingerprint if key else (config.key_fingerprint if config else None),
              "created": config.created if config is not None else (key.created if key else None),
              "brokers": brokers, "broker": brokers[0] if brokers else None}
    member = service.members.get(group_key_id)
    if member is not None:
        result.update(member.describe_group())
    else:
        cursor = (await service.ctx.run_in_thread(store.cursors)).get(group_key_id, {})
        state = "LEFT" if cursor else ("INVITED" if config is not None else "NOT_JOINED")
        result.update(state=state, active=False, last_sequence=cursor.get("last_sequence", 0))
    roster = service.keyring.rosters.get(group_key_id)
    if roster is not None:
        result.update(members=sorted(roster.members), admins=roster.admins(), generation=roster.generation,
                      admin=roster.is_admin(me))
    replica = service.broker.replicas.get(group_key_id)
    if with_queue and replica is not None:
        log = replica.describe()
        result["log"] = log
        result["queue"] = {"group_key_id": group_key_id, "head": log["head"], "commit": log["commit"],
                           "role": log["role"], "term": log["term"], "leader": log["leader"],
                           "messages": await _messages(service, group_key_id)}
        result["consumers"] = service.broker.subscribers(group_key_id)
        result.setdefault("members", log["roster"]["members"])
    return result


async def _messages(service: Any, group_key_id: str) -> int:
    for row in await service.ctx.run_in_thread(service.logs.summaries):
        if row["group_key_id"] == group_key_id:
            return row["messages"]
    return 0
