"""The ``groups`` part of the catalog backup: my memberships and the queues I host, without their messages.

service_private_groups registers this part with service_backups
(:meth:`~bitnode.storage.backups_service.BackupsService.add_backup_part`), so an
identity recovered on a new machine (its group keys come back with the key
backup) also gets back the groups it was in and the queues it hosted.

The value, version 1 (plain JSON; the key backup seals it to my master key)::

    {"version": 1,
     "memberships": [{"group_key_id": str, "active": bool, "last_sequence": int}, ...],
     "queues": [{"group_key_id": str, "created": float, "head": int,
                 "members": [{"member_id": str, "verified": bool, "subscribed": bool}, ...]}, ...]}

Decision: **the hosted message stream is not in the backup.** The catalog
backup is one signed document, rewritten after every change (every group
message would make a new one) and bounded
(:data:`bitnode.storage.key_backup.MAX_DOCUMENT`), while a queue keeps every
message for ever; carrying it would make each backup grow with the whole
history of every group I host. So a recovered broker keeps each queue's
*numbers*, not its entries: it starts its stream at the next sequence number
after the backed-up head, so members never see a number used twice, and
members that fetch older numbers get nothing (see
:meth:`bitnode.access.group_queue.GroupBroker.fetch`). A hosted queue's head
changing asks for a backup (after ``catalog-backup-delay``), which narrows,
but cannot close, the window where messages accepted just before the machine
was lost have their numbers reused.

Memberships come back with their ``active`` flag; the backed-up
``last_sequence`` is kept as a record but a restored membership fetches from
the start (sequence 0): the message history is not part of the backup, so a
new machine refills it from the group's broker (the history stores a message
once, so nothing is doubled when it was there). A membership or queue this
node already knows is left as it is: the local state is newer than a backup.
"""

from __future__ import annotations

from typing import Any

from bitnode.access.group_protocol import parse_group_key_id
from bitnode.errors import BadRequest

PART = "groups"
VERSION = 1


def collect(store: Any) -> dict:
    """The part's value from a :class:`~bitnode.access.group_store.GroupStore` (no entries: small)."""
    cursors = store.cursors()
    memberships = [{"group_key_id": key_id, "active": cursor["active"], "last_sequence": cursor["last_sequence"]}
                   for key_id, cursor in cursors.items()]
    members: dict[str, list[dict]] = {}
    for member in store.members():
        members.setdefault(member["group_key_id"], []).append(
            {"member_id": member["member_id"], "verified": member["verified"], "subscribed": member["subscribed"]})
    queues = [{"group_key_id": queue["group_key_id"], "created": queue["created"], "head": queue["head"],
               "members": members.get(queue["group_key_id"], [])} for queue in store.queues()]
    return {"version": VERSION, "memberships": memberships, "queues": queues}


def _count(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"groups backup: {what} must be a whole number, 0 or more")
    return value


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"groups backup: {what} must be true or false")
    return value


def _key(value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest("groups backup: a group key id must be a string")
    return str(parse_group_key_id(value))


def parse(value: Any) -> dict:
    """The part's value checked and normalised (BadRequest for another version or a malformed one)."""
    if not isinstance(value, dict):
        raise BadRequest("groups backup must be a JSON object")
    if value.get("version") != VERSION:
        raise BadRequest(f"groups backup version {value.get('version')!r} is not known (expected {VERSION})")
    memberships, queues = value.get("memberships"), value.get("queues")
    if not isinstance(memberships, list) or not isinstance(queues, list):
        raise BadRequest("groups backup needs lists of memberships and queues")
    result: dict = {"version": VERSION, "memberships": [], "queues": []}
    for entry in memberships:
        if not isinstance(entry, dict):
            raise BadRequest("groups backup: a membership must be an object")
        result["memberships"].append({"group_key_id": _key(entry.get("group_key_id")),
                                      "active": _flag(entry.get("active"), "active"),
                                      "last_sequence": _count(entry.get("last_sequence"), "last_sequence")})
    for entry in queues:
        if not isinstance(entry, dict) or not isinstance(entry.get("members"), list):
            raise BadRequest("groups backup: a queue must be an object with a list of members")
        created = entry.get("created")
        if isinstance(created, bool) or not isinstance(created, (int, float)):
            raise BadRequest("groups backup: a queue's created time must be a number")
        members = []
        for member in entry["members"]:
            if not isinstance(member, dict) or not isinstance(member.get("member_id"), str):
                raise BadRequest("groups backup: a queue member must be an object with a member_id")
            members.append({"member_id": member["member_id"], "verified": _flag(member.get("verified"), "verified"),
                            "subscribed": _flag(member.get("subscribed"), "subscribed")})
        result["queues"].append({"group_key_id": _key(entry.get("group_key_id")), "created": float(created),
                                 "head": _count(entry.get("head"), "head"), "members": members})
    return result
