"""The node's event bus: numbered events, live subscribers and long-poll consumers.

Every event gets a sequence id that only grows. The last N events stay in a
replay buffer so a client can resume from the id it saw last; a client that
fell further behind than the buffer is told how many it missed instead of
silently losing them.

Long-poll consumers are bounded (:data:`MAX_CONSUMERS`): a new consumer
makes room by forgetting the one idle (not polling) the longest; when every
consumer is polling, the new one is refused with TooManyRequests (429, with a
retry delay) rather than cutting off a client that is waiting. TooManyRequests
and not Conflict, because the refusal is temporary: the waiting polls are
answered within their timeout, so the same call works a little later. A
consumer already known may always poll again.

:meth:`EventBus.close` (node shutdown) is final: waiting polls are answered
with what they have, a later :meth:`EventBus.listen` raises Unavailable (503:
the node is stopping; nothing is left waiting with a timer), and a later
subscriber is never called (its unsubscribe function still works).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bitnode.errors import BadRequest, TooManyRequests, Unavailable

MAX_CONSUMERS = 256
MAX_EVENT_ID = 128


def check_since(value: Any) -> int:
    """``value`` if it is a sequence id to resume after: an int, 0 or more (BadRequest otherwise)."""
    if type(value) is not int or value < 0:
        raise BadRequest(f"since must be an event sequence id (an integer, 0 or more), not {value!r:.40}")
    return value


@dataclass(frozen=True)
class Event:
    """One published event."""

    seq: int
    event_id: str
    data: Any
    time: float

    def as_dict(self) -> dict:
        """JSON shape used by the API and the WebSocket."""
        return {"seq": self.seq, "event_id": self.event_id, "data": self.data, "time": self.time}


class _Consumer:
    def __init__(self, cursor: int):
        self.cursor = cursor
        self.waiter: defer.Deferred | None = None
        self.timeout_call = None
        self.last_seen = 0.0


class EventBus:
    """Publish/subscribe with sequence ids, a bounded replay buffer and long-poll consumers."""

    log = Logger()

    def __init__(self, clock: IReactorTime, buffer_size: int = 1000):
        self._clock = clock
        self._buffer: deque[Event] = deque(maxlen=buffer_size)
        self._seq = 0
        self._subscribers: list[Callable[[Event], None]] = []
        self._consumers: dict[str, _Consumer] = {}
        self._closed = False

    @property
    def last_seq(self) -> int:
        """Sequence id of the newest event (0 before the first)."""
        return self._seq

    def publish(self, event_id: str, data: Any = None) -> Event:
        """Number, buffer and deliver an event to subscribers and waiting consumers."""
        if not isinstance(event_id, str) or not event_id or len(event_id) > MAX_EVENT_ID:
            raise BadRequest(f"event_id must be a non-empty string of at most {MAX_EVENT_ID} characters")
        self._seq += 1
        event = Event(self._seq, event_id, data, self._clock.seconds())
        self._buffer.append(event)
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                self.log.failure("event subscriber failed on {event_id}", event_id=event_id)
        for consumer in list(self._consumers.values()):
            # A consumer resuming after an id not reached yet keeps waiting rather than hearing nothing.
            if consumer.waiter is not None and consumer.cursor < event.seq:
                self._deliver(consumer)
        return event

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every new event; returns the function that unsubscribes.

        After :meth:`close` the callback is not kept (no event will come), and
        no error is raised: a client connecting while the node stops is closed
        with its connection.
        """
        if not self._closed:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def since(self, seq: int) -> tuple[list[Event], int]:
        """Buffered events newer than ``seq``, and how many newer ones were already dropped."""
        events = [event for event in self._buffer if event.seq > seq]
        oldest = events[0].seq if events else self._seq + 1
        missed = max(0, oldest - seq - 1)
        return events, missed

    def listen(self, consumer_id: str, since: int | None = None, timeout: float = 60.0) -> defer.Deferred:
        """Long-poll: fire with the consumer's pending events, waiting up to ``timeout`` for one.

        A new consumer starts at the current end of the stream unless ``since``
        is given; ``since`` also rewinds an existing consumer. The result is a
        dict ``{"events": [...], "last_seq": N, "missed": M}``. Raises
        BadRequest for a ``since`` that is not an integer 0 or more,
        TooManyRequests for a new consumer when :data:`MAX_CONSUMERS` are all
        waiting, and Unavailable after :meth:`close`.
        """
        if since is not None:
            check_since(since)
        if self._closed:
            raise Unavailable("the event bus is closed: the node is stopping")
        consumer = self._consumers.get(consumer_id)
        if consumer is None:
            if len(self._consumers) >= MAX_CONSUMERS and not self._forget_idlest():
                raise TooManyRequests(f"{MAX_CONSUMERS} event consumers are already waiting; try again later",
                                      retry_after=1.0)
            consumer = self._consumers[consumer_id] = _Consumer(self._seq)
        if since is not None:
            consumer.cursor = since
        if consumer.waiter is not None:
            # One outstanding poll per consumer: the older one is answered empty.
            self._answer(consumer, [], 0)
        consumer.last_seen = self._clock.seconds()
        waiter = consumer.waiter = defer.Deferred(lambda d: self._cancel(consumer, d))
        pending, _ = self.since(consumer.cursor)
        if pending or timeout <= 0:
            self._deliver(consumer)
        else:
            consumer.timeout_call = self._clock.callLater(timeout, self._answer, consumer, [], 0)
        return waiter

    def consumers(self) -> list[str]:
        """Ids of the known long-poll consumers."""
        return sorted(self._consumers)

    def close(self) -> None:
        """Answer every waiting consumer with what it has, drop subscribers (node shutdown).

        Final: later polls raise Unavailable, later subscribers are not kept.
        """
        self._closed = True
        for consumer in list(self._consumers.values()):
            if consumer.waiter is not None:
                self._deliver(consumer)
        self._subscribers.clear()

    def _deliver(self, consumer: _Consumer) -> None:
        events, missed = self.since(consumer.cursor)
        self._answer(consumer, events, missed)

    def _answer(self, consumer: _Consumer, events: list[Event], missed: int) -> None:
        waiter, consumer.waiter = consumer.waiter, None
        if consumer.timeout_call is not None and consumer.timeout_call.active():
            consumer.timeout_call.cancel()
        consumer.timeout_call = None
        if events:
            consumer.cursor = events[-1].seq
        if waiter is not None:
            waiter.callback({"events": [e.as_dict() for e in events], "last_seq": self._seq, "missed": missed})

    def _cancel(self, consumer: _Consumer, waiter: defer.Deferred) -> None:
        if consumer.waiter is waiter:
            consumer.waiter = None
            if consumer.timeout_call is not None and consumer.timeout_call.active():
                consumer.timeout_call.cancel()
            consumer.timeout_call = None

    def _forget_idlest(self) -> bool:
        """Forget the consumer idle the longest; False when every consumer is waiting."""
        idle = [(c.last_seen, cid) for cid, c in self._consumers.items() if c.waiter is None]
        if not idle:
            return False
        del self._consumers[min(idle)[1]]
        return True
