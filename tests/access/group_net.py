"""A network of group log replicas in one process, for tests: frames really encoded, brokers that go away.

Every request between two replicas is encoded as a group frame and decoded
again (so what cannot cross the wire fails here too), answered by the
receiving replica, and fails with BrokerUnreachable when either side is down
or the link between them is cut. Storage is an in-memory :class:`GroupLog`
per broker, called synchronously.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from bitnode.access.group_config import GroupConfig
from bitnode.access.group_log import GroupLog
from bitnode.access.group_member import BrokerUnreachable
from bitnode.access.group_protocol import decode_frame, encode_frame, refusal, refused_error
from bitnode.access.group_replica import COUNTERS, LogReplica
from bitnode.errors import BitnodeError

GROUP = "group_0123456789abcdef0123456789abcdef$alice@id.net"


def make_config(brokers: list[str]) -> GroupConfig:
    return GroupConfig(GROUP, "alice@id.net", "0" * 64, tuple(brokers), 1.0, "")


def run_now(fn: Any, *args: Any, **kwargs: Any) -> defer.Deferred:
    return defer.maybeDeferred(fn, *args, **kwargs)


class ReplicaNet:
    """Replicas of one group's log on ``brokers``; ``down`` brokers and ``cut`` links do not answer."""

    def __init__(self, clock: Any, brokers: list[str]) -> None:
        self.clock = clock
        self.config = make_config(brokers)
        self.down: set[str] = set()
        self.cut: set[frozenset] = set()
        self.logs = {b: GroupLog(":memory:") for b in brokers}
        self.counters: dict[str, dict] = {}
        self.committed: dict[str, list[tuple[int, int]]] = {b: [] for b in brokers}
        self.leading: list[tuple[str, int]] = []
        self.replicas: dict[str, LogReplica] = {}
        self.asked: list[tuple[str, str, str]] = []

    @defer.inlineCallbacks
    def start(self, broker: str, fresh: bool = True):
        """(Re)start ``broker``'s replica over its log (a restart keeps the log)."""
        if broker in self.replicas:
            self.replicas[broker].stop()
        counters = self.counters.setdefault(broker, _counters())
        if fresh:
            self.logs[broker].host(GROUP, "alice@id.net", self.config.to_json(), 1.0)
        replica = LogReplica(self.config, broker, self.logs[broker], run_now, self._ask_from(broker), self.clock,
                             self._on_commit(broker), lambda r: self.leading.append((r.me, r.term)), counters)
        yield replica.load(fresh=fresh)
        self.replicas[broker] = replica
        return replica

    @defer.inlineCallbacks
    def start_all(self):
        for broker in self.config.brokers:
            yield self.start(broker)

    def _on_commit(self, broker: str):
        def on_commit(replica: LogReplica, first: int, last: int) -> None:
            self.committed[broker].append((first, last))
        return on_commit

    def reachable(self, a: str, b: str) -> bool:
        return a not in self.down and b not in self.down and frozenset((a, b)) not in self.cut

    def _ask_from(self, source: str):
        def ask(peer: str, op: str, group_key_id: str, blobs: tuple = (), **fields: Any) -> defer.Deferred:
            self.asked.append((source, peer, op))
            if not self.reachable(source, peer):
                return defer.fail(BrokerUnreachable(f"{peer} did not answer"))
            request = decode_frame(encode_frame(op, group_key_id, blobs, **fields))
            d = defer.maybeDeferred(self._answer, source, peer, request)

            def back(answer: Any) -> Any:
                if not self.reachable(source, peer):  # went away before answering
                    raise BrokerUnreachable(f"{peer} did not answer")
                answer_fields, answer_blobs = answer
                return decode_frame(encode_frame("ok", group_key_id, answer_blobs, **answer_fields))

            def refused(failure: Any) -> Any:
                failure.trap(BitnodeError)
                error = refused_error(refusal(failure.value).decode(), peer)
                raise error if error is not None else BrokerUnreachable(str(failure.value))

            return d.addCallbacks(back, refused)

        return ask

    @defer.inlineCallbacks
    def _answer(self, source: str, peer: str, request: Any):
        replica = self.replicas.get(peer)
        if replica is None:
            from bitnode.errors import NotFound
            raise NotFound(f"{peer} hosts no log of this group")
        if request.op == "sync":
            answer = yield replica.on_sync(source, request.fields, request.blobs)
            return answer, ()
        if request.op == "prepare":
            answer = yield replica.on_prepare(source, request.fields)
            return answer, ()
        if request.op == "pull":
            answer = yield replica.on_pull(source, request.fields)
            return answer
        if request.op == "status":
            return replica.on_status(source), ()
        if request.op == "host":
            return {"head": 0, "term": 0}, ()
        raise AssertionError(f"unexpected op {request.op}")

    def log_of(self, broker: str, upto: int | None = None) -> list[tuple[int, int, str]]:
        """(seq, term, message id) of ``broker``'s entries (up to ``upto``)."""
        state = self.logs[broker].state(GROUP)
        entries = self.logs[broker].entries_after(GROUP, 0, state.head if upto is None else upto, 100000, 1 << 40)
        return [(e.seq, e.term, e.message_id) for e in entries]

    def committed_log(self, broker: str) -> list[tuple[int, int, str]]:
        return self.log_of(broker, self.logs[broker].state(GROUP).commit)


def _counters() -> dict:
    return dict.fromkeys(COUNTERS, 0)
