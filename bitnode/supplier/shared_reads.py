"""A supplier serving a customer's shared files to the readers that customer listed.

A storage packet normally acts for its own signer: the owner field must be
the creator. The one exception is a *shared read* (design in
:mod:`bitnode.storage.share_scope`): a ``Retrieve`` of a path, or a
``ListFiles`` of a prefix ending in ``/``, inside the scope of one share of
the owner (first path component ``<share alias>.<...>``), from a sender that
the owner's readers list for that share names. The list is the object
``acl.<alias>/readers`` in the owner's own space: the owner stored it with a
signed ``Data`` packet, nobody else can write there, and it is read from disk
for every shared read, so a revocation (the owner re-stores the list without
that reader) or a deleted share (the list removed) takes effect at once.

Anything else acting for another user is refused as before; a shared read
that is not allowed is answered ``Fail "forbidden: ..."`` (a 403 for the
reader) and counted as ``share_denied``; an allowed one is served from the
owner's space exactly as the owner's own read would be, counted as
``shared_<command>``. Writes and deletes are never shared.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer

from bitnode.errors import BadRequest
from bitnode.storage import share_scope, wire
from bitnode.storage.ports import BlockNotFound
from bitnode.transport.commands import Command

READ_COMMANDS = frozenset({Command.RETRIEVE.value, Command.LIST_FILES.value})
NOT_SHARED = "forbidden: not shared with you"


def is_shared_read(packet: Any) -> bool:
    """Whether a packet acting for someone else could be a shared read (a read command at all)."""
    return packet.command in READ_COMMANDS


def serve(desk: Any, packet: Any, refused: Counter, served: Counter) -> defer.Deferred:
    """The reply ``(command, payload)`` to a read for ``packet.owner_id`` signed by another user."""
    return defer.Deferred.fromCoroutine(_serve(desk, packet, refused, served))


async def _serve(desk: Any, packet: Any, refused: Counter, served: Counter) -> tuple[str, bytes]:
    owner, reader = packet.owner_id, packet.creator_id
    reason = await _refusal(desk, owner, reader, packet.payload)
    if reason:
        refused["share_denied"] += 1
        desk.log.info("refused {command} of {reader} in {owner}'s space: {reason}", command=packet.command,
                      reader=reader, owner=owner, reason=reason)
        return Command.FAIL.value, reason.encode("utf-8")
    served["shared_" + packet.command] += 1
    return await desk.handle(owner, packet.command, packet.payload, renew=False)  # a reader keeps no contract alive


async def _refusal(desk: Any, owner: str, reader: str, payload: bytes) -> str:
    """Why this read may not be served ("" when it may)."""
    if owner not in desk.customers:
        return NOT_SHARED
    try:
        alias = share_scope.shared_alias(wire.decode_list_request(payload)[0])  # a path, or a listing's prefix
    except BadRequest:
        alias = None
    if alias is None:
        return f"{NOT_SHARED} (outside any shared folder)"
    try:
        stored = await desk.store.fetch_block(owner, share_scope.readers_path(alias))
        readers = share_scope.decode_readers(stored, owner, alias)
    except (BlockNotFound, BadRequest):
        return NOT_SHARED
    return "" if reader in readers else NOT_SHARED
