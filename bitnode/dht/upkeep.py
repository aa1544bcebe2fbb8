"""Keeping held records alive: expiry, republish of our own records and replication of others', in small batches.

:class:`StoreKeeper` runs two loops on the injected clock:

* expire — every ``expire_interval`` seconds, drop expired records;
* push — every ``replicate_tick`` seconds, take at most ``replicate_batch``
  records that are due, longest-waiting first: our own not pushed for
  ``republish_interval``, then others' not replicated for ``replicate_interval``
  (the paper's optimisation: an identical STORE from someone else marks a
  record replicated, so only one holder pushes it per interval). They are pushed
  with at most ``replicate_concurrency`` in flight; a tick that finds the
  previous batch still running does nothing.

So however many records a node holds, upkeep traffic comes in bounded batches
spread over time, never as one storm per hour; what does not fit in a tick waits
for the next (the ``replicate_backlog`` counter says how many are waiting).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from bitnode.dht.limits import DHTLimits
from bitnode.dht.storage import RecordStore, StoredRecord

#: pushes one record to the k closest nodes of its layer; its result is ignored, failures are only logged
PublishFn = Callable[[StoredRecord], Deferred]


class StoreKeeper:
    """Periodic expire and push jobs for a :class:`RecordStore` (see the module docstring)."""

    _log = Logger()

    def __init__(
        self,
        store: RecordStore,
        clock: IReactorTime,
        publish: PublishFn,
        republish_interval: float = 3600.0,
        replicate_interval: float = 3600.0,
        expire_interval: float = 60.0,
        limits: DHTLimits = DHTLimits(),
    ) -> None:
        self.store = store
        self._clock = clock
        self._publish = publish
        self.republish_interval = republish_interval
        self.replicate_interval = replicate_interval
        self.expire_interval = expire_interval
        self.limits = limits
        self._loops: list[LoopingCall] = []
        self._batch: Deferred | None = None
        self.counters: Counter[str] = Counter()

    def start(self) -> None:
        """Start both loops (each first runs after one period)."""
        if self._loops:
            return
        for fn, interval in ((self.expire_now, self.expire_interval), (self.push_due, self.limits.replicate_tick)):
            loop = LoopingCall(fn)
            loop.clock = self._clock
            loop.start(interval, now=False).addErrback(lambda f: self._log.failure("DHT store upkeep loop died", f))
            self._loops.append(loop)

    def stop(self) -> None:
        """Stop the loops (a batch in flight finishes on its own)."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []

    def stats(self) -> dict[str, int]:
        """replicate_pushed, replicate_failed, replicate_backlog (due, waiting), replicate_ticks_busy."""
        return {k: self.counters[k] for k in ("replicate_pushed", "replicate_failed", "replicate_backlog",
                                              "replicate_ticks_busy")}

    def expire_now(self) -> int:
        """Drop expired records now."""
        if not self.store.count():
            return 0  # most nodes of a large network hold nothing: no query a minute for them
        return self.store.expire()

    def due(self) -> list[StoredRecord]:
        """The next batch: our own records due for republish first, then others' due for replication."""
        size = self.limits.replicate_batch
        rows = self.store.due_for_replication(self.republish_interval, own=True, limit=size)
        rows += self.store.due_for_replication(self.replicate_interval, own=False, limit=size - len(rows))
        return rows

    def push_due(self) -> Deferred:
        """Push one batch of due records; fires with how many were pushed (0 if a batch is still running)."""
        if self._batch is not None:
            self.counters["replicate_ticks_busy"] += 1
            return succeed(0)
        rows = self.due() if self.store.count() else []
        if len(rows) < self.limits.replicate_batch:
            self.counters["replicate_backlog"] = 0  # a batch that is not full took every due record
        else:
            waiting = (self.store.count_due(self.republish_interval, own=True)
                       + self.store.count_due(self.replicate_interval, own=False))
            self.counters["replicate_backlog"] = max(0, waiting - len(rows))
        if not rows:
            return succeed(0)
        gate = DeferredSemaphore(self.limits.replicate_concurrency)
        pushes = []
        for row in rows:
            self.store.mark_replicated(row.layer, row.key)  # not picked again while it is being pushed
            pushes.append(gate.run(self._push_one, row))
        batch = self._batch = DeferredList(pushes, consumeErrors=True)

        def done(_: Any) -> int:
            self._batch = None
            return len(rows)

        return batch.addCallback(done)

    def _push_one(self, row: StoredRecord) -> Deferred:
        d = self._publish(row)
        d.addCallbacks(lambda _: self.counters.update(["replicate_pushed"]), self._push_failed, errbackArgs=(row,))
        return d

    def _push_failed(self, failure: Any, row: StoredRecord) -> None:
        self.counters["replicate_failed"] += 1
        self._log.info("DHT push of {key} failed: {why}", key=row.key, why=failure.getErrorMessage())
