"""An in-process storage grid: in-memory suppliers and a fault-injecting wrapper.

:class:`MemoryStorageServer` implements :class:`IStorageServer` with a dict, and
answers synchronously (already-fired Deferreds). :class:`FaultyServer` wraps any
:class:`IStorageServer` and can be told to go offline, hang, answer slowly,
drop calls, or corrupt what it returns, while counting every call. Together
they make the no-network grid used for k-of-n, rebuild and timeout tests.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from bitnode.errors import InsufficientStorage, Unavailable
from bitnode.storage.ports import BlockNotFound, IStorageServer, validate_customer_id, validate_path

OPERATIONS = ("store_block", "fetch_block", "list_blocks", "delete")


@implementer(IStorageServer)
class MemoryStorageServer:
    """A supplier that keeps blocks in memory, per customer, with an optional quota."""

    def __init__(self, quota_bytes: int | None = None):
        self.quota_bytes = quota_bytes
        self._spaces: dict[str, dict[str, bytes]] = {}

    def used_bytes(self, customer_id: str) -> int:
        """Bytes stored for one customer."""
        return sum(len(v) for v in self._spaces.get(customer_id, {}).values())

    def store_block(self, customer_id: str, block_path: str, data: bytes, data_payload=None) -> defer.Deferred:
        """Store (or replace) one block (``data_payload`` is for servers on the wire: unused here)."""
        return defer.maybeDeferred(self._store, customer_id, block_path, data)

    def fetch_block(self, customer_id: str, block_path: str, expected_sha256: str | None = None) -> defer.Deferred:
        """Return the stored bytes or fail with BlockNotFound (the caller checks them: ``expected_sha256`` unused)."""
        return defer.maybeDeferred(self._fetch, customer_id, block_path)

    def list_blocks(self, customer_id: str, prefix: str) -> defer.Deferred:
        """Map every path under ``prefix`` to (size, sha256 hex)."""
        return defer.maybeDeferred(self._list, customer_id, prefix)

    def delete(self, customer_id: str, path_or_prefix: str) -> defer.Deferred:
        """Delete a path or a prefix; fires with how many blocks went."""
        return defer.maybeDeferred(self._delete, customer_id, path_or_prefix)

    def _store(self, customer_id: str, block_path: str, data: bytes) -> None:
        validate_customer_id(customer_id)
        validate_path(block_path)
        space = self._spaces.setdefault(customer_id, {})
        if self.quota_bytes is not None:
            after = self.used_bytes(customer_id) - len(space.get(block_path, b"")) + len(data)
            if after > self.quota_bytes:
                raise InsufficientStorage(f"quota of {self.quota_bytes} bytes exceeded for {customer_id}")
        space[block_path] = bytes(data)

    def _fetch(self, customer_id: str, block_path: str) -> bytes:
        validate_customer_id(customer_id)
        validate_path(block_path)
        try:
            return self._spaces[customer_id][block_path]
        except KeyError:
            raise BlockNotFound(f"no block {block_path} for {customer_id}") from None

    def _list(self, customer_id: str, prefix: str) -> dict[str, tuple[int, str]]:
        validate_customer_id(customer_id)
        validate_path(prefix, allow_prefix=True)
        space = self._spaces.get(customer_id, {})
        return {
            p: (len(v), hashlib.sha256(v).hexdigest()) for p, v in sorted(space.items()) if _under(p, prefix)
        }

    def _delete(self, customer_id: str, path_or_prefix: str) -> int:
        validate_customer_id(customer_id)
        validate_path(path_or_prefix, allow_prefix=True)
        space = self._spaces.get(customer_id, {})
        doomed = [p for p in space if _under(p, path_or_prefix)]
        for p in doomed:
            del space[p]
        return len(doomed)


def _under(path: str, path_or_prefix: str) -> bool:
    if path_or_prefix == "" or path_or_prefix.endswith("/"):
        return path.startswith(path_or_prefix)
    return path == path_or_prefix


@dataclass(frozen=True)
class Call:
    """One call a :class:`FaultyServer` received."""

    operation: str
    customer_id: str
    path: str


@implementer(IStorageServer)
class FaultyServer:
    """Wrap a supplier and misbehave on demand; counts every call.

    Faults (they combine; checked in this order):

    * :meth:`go_offline` -- every call fails at once with ``Unavailable``.
    * :meth:`hang` -- calls return Deferreds that never fire until
      :meth:`release` (then they are served) or the caller cancels them.
    * :meth:`drop` -- the next ``count`` calls (or all) of one operation fail
      with ``Unavailable``, as if the request was lost.
    * :meth:`slow` -- answers are delivered ``delay`` seconds late via the clock.
    * :meth:`corrupt` -- fetched bytes come back with one byte flipped.

    ``calls`` counts calls per operation (even failed ones); ``log`` keeps each.
    """

    def __init__(self, wrapped: IStorageServer, clock: IReactorTime, name: str = "faulty"):
        self.wrapped = wrapped
        self.clock = clock
        self.name = name
        self.calls: Counter[str] = Counter()
        self.log: list[Call] = []
        self.offline = False
        self.hanging = False
        self.delay = 0.0
        self._drops: dict[str, int | None] = {}
        self._corrupt_paths: set[str] | None = set()
        self._hung: list[tuple[defer.Deferred, str, tuple]] = []

    # -- controls ------------------------------------------------------------

    def go_offline(self) -> None:
        """Fail every following call immediately."""
        self.offline = True

    def go_online(self) -> None:
        """Stop failing because of :meth:`go_offline`."""
        self.offline = False

    def hang(self) -> None:
        """Leave following calls unanswered until :meth:`release`."""
        self.hanging = True

    def release(self) -> None:
        """Stop hanging and serve every call still waiting."""
        self.hanging = False
        waiting, self._hung = self._hung, []
        for d, operation, args in waiting:
            if not d.called:
                self._forward(operation, args).chainDeferred(d)

    def slow(self, delay: float) -> None:
        """Deliver every following answer ``delay`` seconds late (0 turns it off)."""
        self.delay = delay

    def drop(self, operation: str, count: int | None = None) -> None:
        """Fail the next ``count`` calls of ``operation`` (all of them if None)."""
        if operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}")
        self._drops[operation] = count

    def corrupt(self, path: str | None = None) -> None:
        """Flip a byte in fetched data: for ``path`` only, or every path if None."""
        if path is None:
            self._corrupt_paths = None
        elif self._corrupt_paths is not None:
            self._corrupt_paths.add(path)

    def heal(self) -> None:
        """Clear every fault (hung calls are released)."""
        self.offline = False
        self.delay = 0.0
        self._drops.clear()
        self._corrupt_paths = set()
        self.release()

    @property
    def hung_calls(self) -> int:
        """How many calls are waiting because of :meth:`hang`."""
        return sum(1 for d, _, _ in self._hung if not d.called)

    # -- IStorageServer ----------------------------------------------------------

    def store_block(self, customer_id: str, block_path: str, data: bytes, data_payload=None) -> defer.Deferred:
        """See :class:`IStorageServer` (``data_payload`` unused: blocks stay in memory)."""
        return self._call("store_block", customer_id, block_path, (customer_id, block_path, data))

    def fetch_block(self, customer_id: str, block_path: str, expected_sha256: str | None = None) -> defer.Deferred:
        """See :class:`IStorageServer` (``expected_sha256`` unused: a corrupted answer must reach the caller)."""
        return self._call("fetch_block", customer_id, block_path, (customer_id, block_path))

    def list_blocks(self, customer_id: str, prefix: str) -> defer.Deferred:
        """See :class:`IStorageServer`."""
        return self._call("list_blocks", customer_id, prefix, (customer_id, prefix))

    def delete(self, customer_id: str, path_or_prefix: str) -> defer.Deferred:
        """See :class:`IStorageServer`."""
        return self._call("delete", customer_id, path_or_prefix, (customer_id, path_or_prefix))

    # -- machinery ---------------------------------------------------------------

    def _call(self, operation: str, customer_id: str, path: str, args: tuple) -> defer.Deferred:
        self.calls[operation] += 1
        self.log.append(Call(operation, customer_id, path))
        if self.offline:
            return defer.fail(Unavailable(f"supplier {self.name} is offline"))
        if self.hanging:
            d: defer.Deferred = defer.Deferred(self._forget_hung)
            self._hung.append((d, operation, args))
            return d
        if operation in self._drops:
            left = self._drops[operation]
            if left is not None:
                if left <= 1:
                    del self._drops[operation]
                else:
                    self._drops[operation] = left - 1
            return defer.fail(Unavailable(f"supplier {self.name} dropped {operation}"))
        result = self._forward(operation, args)
        if self.delay > 0:
            return self._delayed(result, self.delay)
        return result

    def _forward(self, operation: str, args: tuple) -> defer.Deferred:
        d = getattr(self.wrapped, operation)(*args)
        if operation == "fetch_block":
            path = args[1]
            if self._corrupt_paths is None or path in self._corrupt_paths:
                d.addCallback(_flip_byte)
        return d

    def _delayed(self, inner: defer.Deferred, delay: float) -> defer.Deferred:
        def deliver() -> None:
            inner.chainDeferred(late)

        def cancel(_: defer.Deferred) -> None:
            if call.active():
                call.cancel()
                inner.addErrback(lambda _failure: None)

        late: defer.Deferred = defer.Deferred(cancel)
        call = self.clock.callLater(delay, deliver)
        return late

    def _forget_hung(self, d: defer.Deferred) -> None:
        self._hung = [entry for entry in self._hung if entry[0] is not d]


def _flip_byte(data: bytes) -> bytes:
    if not data:
        return b"\x01"
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
