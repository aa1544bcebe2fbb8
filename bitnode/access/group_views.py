"""What the groups API shows of a group: the list of my groups and one group's facts.

Read-only views over :class:`~bitnode.access.groups_service.GroupsService`
(its key store, member automats and, for groups I created, the queue I host),
kept apart from the service's sending and receiving.
"""

from __future__ import annotations

from typing import Any

from bitnode.access.group_protocol import broker_of, is_group_key_id
from bitnode.errors import NotFound


async def list_groups(service: Any, only_active: bool, include_mine: bool, include_granted: bool) -> list[dict]:
    """The groups whose private key this node holds, each as :func:`describe_group` without the queue."""
    service._require()
    me = service._me()
    result = []
    for info in service._keystore().list():
        if not is_group_key_id(info.key_id) or not info.is_private:
            continue
        mine = info.creator == me
        if (mine and not include_mine) or (not mine and not include_granted):
            continue
        member = service.members.get(info.key_id)
        if only_active and (member is None or not member.is_active()):
            continue
        result.append(await describe_group(service, info.key_id, with_queue=False))
    return result


async def describe_group(service: Any, group_key_id: str, with_queue: bool = True) -> dict:
    """The group's key facts, my membership and, for its creator, its queue, members and consumers."""
    store, broker = service._require()
    keystore = service._keystore()
    if not keystore.has(group_key_id):
        raise NotFound(f"unknown group {group_key_id}")
    key = keystore.get(group_key_id)
    member = service.members.get(group_key_id)
    result = {"group_key_id": group_key_id, "alias": key.alias, "label": key.label, "creator": key.creator,
              "broker": broker_of(group_key_id), "mine": key.creator == service._me(), "key_size": key.size,
              "fingerprint": key.fingerprint, "created": key.created}
    if member is not None:
        result.update(member.describe_group())
    else:
        cursor = (await service.ctx.run_in_thread(store.cursors)).get(group_key_id, {})
        result.update(state="LEFT" if cursor else "NOT_JOINED", active=False,
                      last_sequence=cursor.get("last_sequence", 0))
    if with_queue and result["mine"]:
        try:
            result["queue"] = await service.ctx.run_in_thread(store.queue, group_key_id)
        except NotFound:
            result["queue"] = None
        if result["queue"] is not None:
            members = await service.ctx.run_in_thread(store.members, group_key_id)
            result["members"] = [m["member_id"] for m in members if m["verified"] or m["member_id"] == service._me()]
            result["consumers"] = broker.subscribers(group_key_id)
    return result

