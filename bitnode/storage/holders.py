"""Reading one position from every supplier that may hold it: the current one, then retiring ones.

A replaced supplier is not told to delete anything until backup_monitor has
rebuilt every block it held on its successor (see
:mod:`bitnode.customer.fire_hire`): until then it is a *retiring* holder of
its old position. :class:`PositionReader` is the read side of that promise:
an :class:`IStorageServer` for one position that asks the current supplier
first and, when it has no such block (not rebuilt yet) or does not answer,
each retiring holder of that position in turn. Downloads and the catalog
restore read through it; nothing is ever written through it.
"""

from __future__ import annotations

from twisted.internet import defer
from zope.interface import implementer

from bitnode.errors import BadRequest, BitnodeError
from bitnode.storage.ports import BlockNotFound, IStorageServer


@implementer(IStorageServer)
class PositionReader:
    """Fetches from the first of ``servers`` that has the block (current supplier first)."""

    def __init__(self, servers: list[IStorageServer]):
        if not servers:
            raise BadRequest("a position reader needs at least one server")
        self.servers = list(servers)

    def fetch_block(self, customer_id: str, block_path: str, expected_sha256: str | None = None) -> defer.Deferred:
        """The first good answer; the current supplier's error if nobody has it (``expected_sha256`` passed on)."""
        return defer.Deferred.fromCoroutine(self._first(customer_id, block_path, expected_sha256))

    async def _first(self, customer_id: str, block_path: str, expected_sha256: str | None):
        first_error: BaseException | None = None
        for server in self.servers:
            try:
                return await defer.maybeDeferred(server.fetch_block, customer_id, block_path, expected_sha256)
            except (BlockNotFound, BitnodeError, defer.TimeoutError) as err:
                # Not there (not rebuilt yet), or silent: a retiring holder may still have it.
                first_error = first_error or err
        assert first_error is not None
        raise first_error

    def list_blocks(self, customer_id: str, prefix: str) -> defer.Deferred:
        """The current supplier's listing (a reader is for fetching; listings are per supplier)."""
        return defer.maybeDeferred(self.servers[0].list_blocks, customer_id, prefix)

    def store_block(self, customer_id: str, block_path: str, data: bytes, data_payload=None) -> defer.Deferred:
        """Refused: blocks are stored on the current supplier only, never through a reader."""
        return defer.fail(BadRequest("a position reader is read-only"))

    def delete(self, customer_id: str, path_or_prefix: str) -> defer.Deferred:
        """Refused, like :meth:`store_block`."""
        return defer.fail(BadRequest("a position reader is read-only"))
