"""The ``groups`` part of the catalog backup: my groups, their keys, and a bounded tail of each one's history.

service_private_groups registers this part with service_backups
(:meth:`~bitnode.storage.backups_service.BackupsService.add_backup_part`), so an
identity recovered on a new machine (its group keys come back with the key
backup) also gets back the groups it was in, the keys their messages are
sealed with, and their newest messages.

The value, version 2 (plain JSON; the key backup seals it to my master key
and signs it)::

    {"version": 2,
     "groups": [{"group_key_id": str, "config": {<signed group config>},
                 "active": bool, "last_sequence": int,
                 "secrets": {"<generation>": "<hex>"},
                 "recent": [[seq, "<base64 of the sealed entry>"], ...]}, ...]}

Size: the catalog backup is one document rewritten after every change, so
the history in it is bounded: the newest ``backup-history-messages`` entries
of each group (kept by the member as they arrive), and at most
``backup-history-bytes`` for all groups together (shared evenly). The full
history is on the group's brokers (a majority of them keeps every entry up to
their own limits); a recovered member fetches it from them, and the tail in
the backup is what it shows when no broker is left.

Restoring: configs and keys come back as they were; each tail entry is opened
and stored in the message history (once: the history keeps one copy of a
message); an active membership starts again from sequence 0 (the brokers
refill whatever the tail misses). A group this node already knows keeps its
config and history (newer than a backup); a membership the backup has and
this node never started is started. A version-1 part (before groups had several
brokers) holds nothing a node can use now and restores nothing.
"""

from __future__ import annotations

import base64
from typing import Any

from bitnode.access import group_config
from bitnode.errors import BadRequest, BitnodeError

PART = "groups"
VERSION = 2


def collect(store: Any, max_bytes: int) -> dict:
    """The part's value from a :class:`~bitnode.access.group_store.GroupStore` (called in a worker thread)."""
    groups = store.groups()
    cursors = store.cursors()
    secrets = store.secrets()
    budget = max_bytes // max(1, len(groups))
    value = []
    for group_key_id, row in groups.items():
        cursor = cursors.get(group_key_id, {"active": False, "last_sequence": 0})
        recent = store.recent(group_key_id, budget) if budget > 0 else []
        value.append({"group_key_id": group_key_id, "config": group_config.parse(row["config"]).to_dict(),
                      "active": cursor["active"], "last_sequence": cursor["last_sequence"],
                      "secrets": {str(g): s.hex() for g, s in secrets.get(group_key_id, {}).items()},
                      "recent": [[seq, base64.b64encode(blob).decode("ascii")] for seq, blob in recent]})
    return {"version": VERSION, "groups": value}


def parse(value: Any) -> dict:
    """The part's value checked and normalised (BadRequest for an unknown version or a malformed one)."""
    if not isinstance(value, dict):
        raise BadRequest("groups backup must be a JSON object")
    if value.get("version") == 1:
        return {"version": VERSION, "groups": []}
    if value.get("version") != VERSION:
        raise BadRequest(f"groups backup version {value.get('version')!r} is not known (expected {VERSION})")
    groups = value.get("groups")
    if not isinstance(groups, list):
        raise BadRequest("groups backup needs a list of groups")
    result: list[dict] = []
    for entry in groups:
        if not isinstance(entry, dict):
            raise BadRequest("groups backup: a group must be an object")
        config = group_config.parse(entry.get("config"))
        active, last = entry.get("active"), entry.get("last_sequence")
        if not isinstance(active, bool) or isinstance(last, bool) or not isinstance(last, int) or last < 0:
            raise BadRequest("groups backup: active must be true or false, last_sequence a whole number")
        secrets, recent = entry.get("secrets"), entry.get("recent")
        if not isinstance(secrets, dict) or not isinstance(recent, list):
            raise BadRequest("groups backup: a group needs its secrets and its recent entries")
        try:
            keys = {int(g): bytes.fromhex(s) for g, s in secrets.items()}
            tail = [(int(seq), base64.b64decode(blob, validate=True)) for seq, blob in recent]
        except (TypeError, ValueError):
            raise BadRequest("groups backup: malformed secrets or entries") from None
        if any(len(s) != 32 or g < 1 for g, s in keys.items()) or any(seq < 1 for seq, _ in tail):
            raise BadRequest("groups backup: malformed secrets or entries")
        result.append({"group_key_id": config.group_key_id, "config": config, "active": active,
                       "last_sequence": last, "secrets": keys, "recent": tail})
    return {"version": VERSION, "groups": result}


async def restore(service: Any, document: dict) -> None:
    """Apply a parsed part to the running service (see the module doc)."""
    store = service.require()
    restored = 0
    cursors = await service.ctx.run_in_thread(store.cursors)
    for entry in document["groups"]:
        config = entry["config"]
        group_key_id = config.group_key_id
        known = group_key_id in service.configs  # known here (an invitation, a membership): newer than the backup
        if not known:
            await service.ctx.run_in_thread(store.add_group, group_key_id, config.to_json(), config.creator,
                                            service.ctx.clock.seconds())
            service.configs[group_key_id] = config
        await service.keyring.add_secrets(group_key_id, entry["secrets"])  # a generation held keeps its key
        for seq, blob in ([] if known else entry["recent"]):
            try:
                await service.restore_entry(group_key_id, seq, blob)
                restored += 1
            except BitnodeError as err:
                service.log.info("group {group}: backed-up entry {seq} not restored: {err}", group=group_key_id,
                                 seq=seq, err=err)
        joined_here = group_key_id in service.members or group_key_id in cursors
        if entry["active"] and not joined_here and service.store is store:
            await service.ctx.run_in_thread(store.save_cursor, group_key_id, True, 0, service.ctx.clock.seconds())
            service.start_member(group_key_id)
    service.counters["restored_entries"] += restored
    service.log.info("groups restored from the catalog backup: {n} groups, {e} entries", n=len(document["groups"]),
                     e=restored)
