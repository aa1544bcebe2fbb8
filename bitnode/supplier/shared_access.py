"""A supplier serving a customer's shares to the members that customer listed: their reads and writers' writes.

A storage packet normally acts for its own signer: the owner field must be
the creator. The exceptions are the *shared* packets (design in
:mod:`bitnode.storage.share_scope`), each judged against lists the owner
stored in its own space with signed ``Data`` packets, where nobody else can
write, read from disk for every packet (so a revocation, the owner storing a
list without that member, or a deleted share takes effect at once):

- a **shared read**: ``Retrieve`` of a path, or ``ListFiles`` of a prefix
  ending in ``/``, inside the scope of one share of the owner (first path
  component ``<share alias>.<...>``), from a sender that the share's readers
  list (``acl.<alias>/readers``) or writers list (``acl.<alias>/writers``)
  names;
- a **shared write**: ``Data``, ``DeleteFile`` or ``DeleteBackup`` from a
  sender the writers list names, inside that writer's own part of the share
  (:func:`~bitnode.storage.share_scope.writable_by`: its own versions and its
  own entries). It is stored in the owner's space exactly as the owner's own
  write would be: the owner's quota, file count and path scheme apply, so a
  writer can fill at most what the owner was granted, and cannot touch the
  owner's files, other writers' files, the index or the lists.

A shared packet that is not allowed is answered ``Fail "forbidden: ..."`` (a
403 for the member) and counted as ``share_denied`` (reads) or
``share_write_denied`` (writes; a write outside every shared folder is
counted ``foreign_owner``, like any packet acting for someone else); an allowed one is counted as
``shared_<command>``. Members' packets never renew the owner's contract: only
the owner's own traffic shows the owner is alive.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer

from bitnode.errors import BadRequest
from bitnode.storage import share_scope, wire
from bitnode.storage.ports import BlockNotFound, version_prefix
from bitnode.transport.commands import Command

READ_COMMANDS = frozenset({Command.RETRIEVE.value, Command.LIST_FILES.value})
WRITE_COMMANDS = frozenset({Command.DATA.value, Command.DELETE_FILE.value, Command.DELETE_BACKUP.value})
NOT_SHARED = "forbidden: not shared with you"
NOT_WRITABLE = "forbidden: not writable by you"
OUTSIDE = "(outside any shared folder)"


def is_shared(packet: Any) -> bool:
    """Whether a packet acting for someone else could be a shared read or write (its command at all)."""
    return packet.command in READ_COMMANDS or packet.command in WRITE_COMMANDS


def serve(desk: Any, packet: Any, refused: Counter, served: Counter) -> defer.Deferred:
    """The reply ``(command, payload)`` to a read or write for ``packet.owner_id`` signed by another user."""
    return defer.Deferred.fromCoroutine(_serve(desk, packet, refused, served))


async def _serve(desk: Any, packet: Any, refused: Counter, served: Counter) -> tuple[str, bytes]:
    owner, member = packet.owner_id, packet.creator_id
    writing = packet.command in WRITE_COMMANDS
    if writing:
        reason = await _write_refusal(desk, owner, member, packet.command, packet.payload)
    else:
        reason = await _read_refusal(desk, owner, member, packet.payload)
    if reason:
        # A write outside every shared folder is the plain case of acting for someone else.
        refused[("foreign_owner" if reason.endswith(OUTSIDE) else "share_write_denied") if writing
                else "share_denied"] += 1
        desk.log.info("refused {command} of {member} in {owner}'s space: {reason}", command=packet.command,
                      member=member, owner=owner, reason=reason)
        return Command.FAIL.value, reason.encode("utf-8")
    served["shared_" + packet.command] += 1
    return await desk.handle(owner, packet.command, packet.payload, renew=False)  # a member keeps no contract alive


async def _read_refusal(desk: Any, owner: str, reader: str, payload: bytes) -> str:
    """Why this read may not be served ("" when it may)."""
    if owner not in desk.customers:
        return NOT_SHARED
    try:
        alias = share_scope.shared_alias(wire.decode_list_request(payload)[0])  # a path, or a listing's prefix
    except BadRequest:
        alias = None
    if alias is None:
        return f"{NOT_SHARED} (outside any shared folder)"
    if reader in await _members(desk, owner, alias, share_scope.readers_path(alias), share_scope.decode_readers):
        return ""
    if reader in await _members(desk, owner, alias, share_scope.writers_path(alias), share_scope.decode_writers):
        return ""
    return NOT_SHARED


async def _write_refusal(desk: Any, owner: str, writer: str, command: str, payload: bytes) -> str:
    """Why this write or delete may not be done ("" when it may)."""
    if owner not in desk.customers:
        return f"{NOT_WRITABLE} {OUTSIDE}"  # nothing of that owner is kept here, shared or not
    try:
        if command == Command.DATA.value:
            path = wire.decode_data(payload, copy=False)[0]
        else:
            path = wire.decode_path(payload)
            if command == Command.DELETE_BACKUP.value:
                path = version_prefix(path.rstrip("/"))
    except BadRequest:
        return f"{NOT_WRITABLE} (not a valid path) {OUTSIDE}"
    alias = share_scope.shared_alias(path)
    if alias is None:
        return f"{NOT_WRITABLE} {OUTSIDE}"
    if not share_scope.writable_by(path, alias, writer):
        return f"{NOT_WRITABLE} (outside your part of a shared folder)"
    if writer not in await _members(desk, owner, alias, share_scope.writers_path(alias), share_scope.decode_writers):
        return NOT_WRITABLE
    return ""


async def _members(desk: Any, owner: str, alias: str, path: str, decode: Any) -> frozenset[str]:
    """The members one of the owner's lists names (nobody when it is missing or unreadable)."""
    try:
        return decode(await desk.store.fetch_block(owner, path), owner, alias)
    except (BlockNotFound, BadRequest):
        return frozenset()
