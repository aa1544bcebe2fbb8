"""The message stream: long-poll consumers of the history (``message_receive``).

Each consumer id has a cursor in the history; a new consumer starts at the end
(older messages are in ``message_history``). A poll answers at once with
messages after the cursor that match its direction and types (up to
``limit``), or waits up to ``polling_timeout`` seconds for one; a new poll by
the same consumer answers the older one empty. :meth:`MessageStream.notify_stored`
is told of every committed row (sent or received) and wakes the consumers
that want it. At most :data:`MAX_CONSUMERS` consumers are remembered (the
idlest is forgotten).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from bitnode.chat import history as hist
from bitnode.chat.history import MessageHistory
from bitnode.errors import BadRequest

MAX_CONSUMERS = 256
MAX_CONSUMER_ID = 128
POLL_LIMIT = 100
MAX_POLLING_TIMEOUT = 3600.0
DIRECTION_CHOICES = {
    "incoming": (hist.INCOMING,),
    "outgoing": (hist.OUTGOING,),
    "both": hist.DIRECTIONS,
    "all": hist.DIRECTIONS,
}
#: Accepted spellings of message types (the spec's docs use several) -> the stored name.
TYPE_NAMES = {
    "private_message": "private_message", "privatemessage": "private_message",
    "personal_message": "private_message", "group_message": "group_message", "groupmessage": "group_message",
}


def normalize_types(message_types: Any) -> list[str]:
    """A list of message type names (any accepted spelling) -> the stored names, deduplicated."""
    if isinstance(message_types, str):
        message_types = [t for t in message_types.split(",") if t.strip()]
    if not isinstance(message_types, (list, tuple)):
        raise BadRequest("message_types must be a list of message type names")
    result: list[str] = []
    for name in message_types:
        key = str(name).strip().lower()
        if key not in TYPE_NAMES:
            raise BadRequest(f"unknown message type {name!r}; use private_message or group_message")
        if TYPE_NAMES[key] not in result:
            result.append(TYPE_NAMES[key])
    return result



class _Consumer:
    def __init__(self, cursor: int):
        self.cursor = cursor
        self.directions: tuple[str, ...] = (hist.INCOMING,)
        self.types: list[str] = []
        self.limit = POLL_LIMIT
        self.waiter: Optional[Deferred] = None
        self.timeout_call: Any = None
        self.immediate = False
        self.querying = False
        self.recheck = False
        self.generation = 0
        self.last_seen = 0.0


class MessageStream:
    """The long-poll consumers of one node's history.

    :param query: runs a history read off the reactor (and lets the service wait for it before closing).
    :param history: the open history, or None once the service stopped.
    """

    log = Logger()

    def __init__(self, clock: Any, query: Callable[..., Deferred], history: Callable[[], Optional[MessageHistory]]):
        self.clock = clock
        self._query = query
        self.history = history
        self.last_seq = 0
        self.consumers: dict[str, _Consumer] = {}

    def close(self) -> None:
        """Answer every waiting poll empty and forget the consumers."""
        for consumer in self.consumers.values():
            self._answer(consumer, [])
        self.consumers.clear()

    def receive(self, consumer_id: str, direction: str = "incoming", message_types: Any = (),
                polling_timeout: float = 60.0, limit: int = POLL_LIMIT) -> Deferred:
        """Long-poll: Deferred[list] of messages after the consumer's cursor (see the module doc)."""
        if not isinstance(consumer_id, str) or not 0 < len(consumer_id) <= MAX_CONSUMER_ID:
            raise BadRequest(f"consumer_callback_id must be 1..{MAX_CONSUMER_ID} characters")
        if direction not in DIRECTION_CHOICES:
            raise BadRequest(f"direction must be one of {', '.join(DIRECTION_CHOICES)}")
        types = normalize_types(message_types)
        if not 0 <= polling_timeout <= MAX_POLLING_TIMEOUT:
            raise BadRequest("polling_timeout must be between 0 and 3600 seconds")
        consumer = self.consumers.get(consumer_id)
        if consumer is None:
            if len(self.consumers) >= MAX_CONSUMERS:
                self._forget_idlest()
            consumer = self.consumers[consumer_id] = _Consumer(self.last_seq)
        if consumer.waiter is not None:
            self._answer(consumer, [])  # one outstanding poll per consumer
        consumer.directions, consumer.types, consumer.limit = DIRECTION_CHOICES[direction], types, limit
        consumer.generation += 1
        consumer.last_seen = self.clock.seconds()
        consumer.immediate = polling_timeout <= 0
        waiter = consumer.waiter = Deferred(lambda d: self._cancel(consumer, d))
        if not consumer.immediate:
            consumer.timeout_call = self.clock.callLater(polling_timeout, self._answer, consumer, [])
        self._check(consumer)
        return waiter

    def notify_stored(self, row: dict) -> None:
        """A row was committed to the history: move the end of the stream, wake the consumers that want it."""
        self.last_seq = max(self.last_seq, row["seq"])
        for consumer in list(self.consumers.values()):
            if consumer.waiter is not None and row["direction"] in consumer.directions \
                    and (not consumer.types or row["message_type"] in consumer.types):
                self._check(consumer)

    def _check(self, consumer: _Consumer) -> None:
        """Read the consumer's pending rows (off the reactor) and answer if there are any."""
        if consumer.querying:
            consumer.recheck = True
            return
        history = self.history()
        if history is None:
            self._answer(consumer, [])
            return
        consumer.querying, consumer.recheck = True, False
        generation = consumer.generation
        d = self._query(history.since, consumer.cursor, consumer.directions, consumer.types, consumer.limit)

        def read(result: tuple[list[dict], int]) -> None:
            consumer.querying = False
            rows, top = result
            if consumer.waiter is None:
                return
            if generation != consumer.generation:
                self._check(consumer)  # a newer poll changed the filters while this one read: read again
                return
            if rows:
                self._answer(consumer, rows)
                return
            # nothing matched up to ``top``: skip it, and look again if more was stored meanwhile
            consumer.cursor = max(consumer.cursor, top)
            if consumer.recheck or self.last_seq > consumer.cursor:
                self._check(consumer)
            elif consumer.immediate:
                self._answer(consumer, [])

        def failed(failure: Any) -> None:
            consumer.querying = False
            self.log.failure("reading the message stream failed", failure)
            waiter, consumer.waiter = consumer.waiter, None
            self._clear_timer(consumer)
            if waiter is not None:
                waiter.errback(failure)

        d.addCallback(read).addErrback(failed)

    def _answer(self, consumer: _Consumer, rows: list[dict]) -> None:
        waiter, consumer.waiter = consumer.waiter, None
        self._clear_timer(consumer)
        if rows:
            consumer.cursor = max(consumer.cursor, rows[-1]["seq"])
        if waiter is not None:
            waiter.callback(rows)

    def _clear_timer(self, consumer: _Consumer) -> None:
        if consumer.timeout_call is not None and consumer.timeout_call.active():
            consumer.timeout_call.cancel()
        consumer.timeout_call = None

    def _cancel(self, consumer: _Consumer, waiter: Deferred) -> None:
        if consumer.waiter is waiter:
            consumer.waiter = None
            self._clear_timer(consumer)

    def _forget_idlest(self) -> None:
        idle = [(c.last_seen, cid) for cid, c in self.consumers.items() if c.waiter is None]
        if idle:
            del self.consumers[min(idle)[1]]
