"""The group broker with fake neighbours (bitnode.access.group_queue): order, membership, fan-out."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.access.group_queue import MAX_PUSH_FAILURES, GroupBroker
from bitnode.access.group_store import GroupStore
from bitnode.errors import BadRequest, Forbidden, NotFound, Unavailable

ME = "alice@id.net"
G = "group_00000000000000000000000000000001$alice@id.net"


def blob(sender: str, message_id: str) -> bytes:
    return f"{sender}|{message_id}".encode()


class Harness:
    """A broker over an in-memory store with fake audit, check and push neighbours."""

    def __init__(self, store: GroupStore, members=("bob@x", "carol@x")) -> None:
        self.clock = Clock()
        self.members = set(members)
        self.audits: list[tuple[str, str]] = []
        self.pending_audits: list[defer.Deferred] = []
        self.hold_audits = False
        self.pushes: list[tuple[str, int, bytes]] = []
        self.push_results: dict[str, object] = {}
        self.events: list[tuple[str, dict]] = []
        self.broker = GroupBroker(self.clock, ME, store, lambda f, *a: defer.maybeDeferred(f, *a), self.audit,
                                  self.check, self.push, lambda event, data: self.events.append((event, data)))

    def audit(self, group_key_id, member):
        self.audits.append((group_key_id, member))
        if self.hold_audits:
            d = defer.Deferred()
            self.pending_audits.append(d)
            return d
        return defer.succeed(member in self.members)

    def check(self, group_key_id, member, data):
        sender, _, message_id = data.decode().partition("|")
        if sender != member:
            return defer.fail(BadRequest(f"a message of {sender} published by {member}"))
        return defer.succeed(SimpleNamespace(message_id=message_id, time=1.0))

    def push(self, member, group_key_id, sequence, data):
        self.pushes.append((member, sequence, data))
        outcome = self.push_results.get(member)
        if isinstance(outcome, Exception):
            return defer.fail(outcome)
        return defer.succeed(None)


class GroupBrokerTests(unittest.TestCase):
    def setUp(self):
        self.store = GroupStore(":memory:")
        self.addCleanup(self.store.close)
        self.h = Harness(self.store)
        self.broker = self.h.broker
        self.successResultOf(self.broker.host(G))

    def publish(self, member, message_id):
        return self.successResultOf(self.broker.publish(G, member, blob(member, message_id)))

    def test_messages_get_consecutive_numbers_in_the_order_they_arrive(self):
        self.assertEqual(self.publish("bob@x", "b1"), {"sequence": 1, "head": 1})
        self.assertEqual(self.publish("carol@x", "c1"), {"sequence": 2, "head": 2})
        self.assertEqual(self.publish(ME, "a1"), {"sequence": 3, "head": 3})
        batch = self.successResultOf(self.broker.fetch(G, "carol@x", 0))
        self.assertEqual(batch, {"entries": [(1, blob("bob@x", "b1")), (2, blob("carol@x", "c1")),
                                             (3, blob(ME, "a1"))], "head": 3, "more": False})

    def test_history_after_a_sequence_number_comes_in_batches(self):
        for n in range(5):
            self.publish("bob@x", f"b{n}")
        batch = self.successResultOf(self.broker.fetch(G, "carol@x", 1, limit=2))
        self.assertEqual(([s for s, _ in batch["entries"]], batch["head"], batch["more"]), ([2, 3], 5, True))
        batch = self.successResultOf(self.broker.fetch(G, "carol@x", 3, limit=2))
        self.assertEqual(([s for s, _ in batch["entries"]], batch["more"]), ([4, 5], False))
        self.assertEqual(self.successResultOf(self.broker.fetch(G, "carol@x", 5))["entries"], [])
        self.failureResultOf(self.broker.fetch(G, "carol@x", -1), BadRequest)

    def test_someone_without_the_key_is_refused_everything(self):
        for request in (self.broker.subscribe(G, "eve@x"), self.broker.fetch(G, "eve@x", 0),
                        self.broker.publish(G, "eve@x", blob("eve@x", "e1"))):
            failure = self.failureResultOf(request, Forbidden)
            self.assertIn("eve@x is not a member", failure.getErrorMessage())
        self.assertEqual(self.h.audits, [(G, "eve@x")] * 3)
        self.assertEqual(self.successResultOf(self.broker.queues())[0]["head"], 0)
        self.assertEqual(self.broker.counters["refused"], 3)

    def test_a_member_is_audited_once_and_concurrent_requests_share_the_audit(self):
        self.h.hold_audits = True
        first = self.broker.subscribe(G, "bob@x")
        second = self.broker.fetch(G, "bob@x", 0)
        self.assertNoResult(first)
        self.assertEqual(len(self.h.pending_audits), 1)
        self.h.pending_audits[0].callback(True)
        self.assertEqual(self.successResultOf(first), {"head": 0})
        self.successResultOf(second)
        self.publish("bob@x", "b1")
        self.assertEqual(self.h.audits, [(G, "bob@x")])
        self.assertTrue(self.store.member(G, "bob@x")["verified"])

    def test_an_audit_that_fails_to_answer_refuses_without_remembering(self):
        self.h.hold_audits = True
        d = self.broker.subscribe(G, "bob@x")
        self.h.pending_audits[0].errback(Unavailable("bob is offline"))
        self.failureResultOf(d, Forbidden)
        self.h.hold_audits = False
        self.successResultOf(self.broker.subscribe(G, "bob@x"))
        self.assertEqual(len(self.h.audits), 2)

    def test_the_creator_needs_no_audit(self):
        self.successResultOf(self.broker.subscribe(G, ME))
        self.assertEqual(self.h.audits, [])

    def test_new_messages_are_pushed_in_order_to_every_consumer_but_their_sender(self):
        for member in (ME, "bob@x", "carol@x"):
            self.successResultOf(self.broker.subscribe(G, member))
        self.publish("bob@x", "b1")
        self.publish("carol@x", "c1")
        self.assertEqual(self.h.pushes, [(ME, 1, blob("bob@x", "b1")), ("carol@x", 1, blob("bob@x", "b1")),
                                         (ME, 2, blob("carol@x", "c1")), ("bob@x", 2, blob("carol@x", "c1"))])
        self.assertEqual([c["consumer_id"] for c in self.broker.consumers()], [ME, "bob@x", "carol@x"])
        joined = [data["member_id"] for event, data in self.h.events if event == "group-member-joined"]
        self.assertEqual(joined, [ME, "bob@x", "carol@x"])

    def test_a_repeated_publish_keeps_its_number_and_is_not_pushed_again(self):
        self.successResultOf(self.broker.subscribe(G, "carol@x"))
        self.assertEqual(self.publish("bob@x", "b1")["sequence"], 1)
        self.assertEqual(self.publish("bob@x", "b1")["sequence"], 1)
        self.assertEqual(len(self.h.pushes), 1)
        self.assertEqual(self.broker.counters["repeated"], 1)

    def test_a_message_that_fails_the_check_is_not_stored(self):
        self.failureResultOf(self.broker.publish(G, "bob@x", blob("carol@x", "c1")), BadRequest)
        self.assertEqual(self.successResultOf(self.broker.fetch(G, "bob@x", 0))["entries"], [])

    def test_a_consumer_that_keeps_failing_is_skipped_until_it_asks_again(self):
        self.successResultOf(self.broker.subscribe(G, "carol@x"))
        self.h.push_results["carol@x"] = Unavailable("carol is offline")
        for n in range(MAX_PUSH_FAILURES + 2):
            self.publish("bob@x", f"b{n}")
        self.assertEqual(len(self.h.pushes), MAX_PUSH_FAILURES)
        self.assertEqual(self.broker.consumers()[0]["state"], "offline")
        self.h.push_results.clear()
        batch = self.successResultOf(self.broker.fetch(G, "carol@x", 0))  # back: catches up, pushes resume
        self.assertEqual(len(batch["entries"]), MAX_PUSH_FAILURES + 2)
        self.publish("bob@x", "later")
        self.assertEqual(self.h.pushes[-1][:2], ("carol@x", MAX_PUSH_FAILURES + 3))
        self.assertEqual(self.broker.consumers()[0]["state"], "online")

    def test_a_consumer_that_says_it_left_is_unsubscribed(self):
        self.successResultOf(self.broker.subscribe(G, "carol@x"))
        self.h.push_results["carol@x"] = NotFound("carol@x refused: not joined to group")
        self.publish("bob@x", "b1")
        self.assertEqual(self.broker.consumers(), [])
        self.assertFalse(self.store.member(G, "carol@x")["subscribed"])
        self.assertIn(("group-member-left", {"group_key_id": G, "member_id": "carol@x", "queue": True}),
                      self.h.events)

    def test_unsubscribing_stops_the_pushes(self):
        self.successResultOf(self.broker.subscribe(G, "carol@x"))
        self.successResultOf(self.broker.unsubscribe(G, "carol@x"))
        self.publish("bob@x", "b1")
        self.assertEqual(self.h.pushes, [])

    def test_a_queue_this_node_does_not_host_is_not_found(self):
        other = "group_00000000000000000000000000000009$alice@id.net"
        self.failureResultOf(self.broker.subscribe(other, "bob@x"), NotFound)
        self.failureResultOf(self.broker.publish(other, "bob@x", blob("bob@x", "b1")), NotFound)

    def test_queues_consumers_and_producers_are_listed(self):
        self.successResultOf(self.broker.subscribe(G, "carol@x"))
        self.publish("bob@x", "b1")
        self.publish("bob@x", "b2")
        [queue] = self.successResultOf(self.broker.queues())
        self.assertEqual((queue["queue_id"], queue["owner"], queue["head"], queue["messages"], queue["consumers"],
                          queue["producers"]), (G, ME, 2, 2, 1, 1))
        [producer] = self.successResultOf(self.broker.producers())
        self.assertEqual((producer["producer_id"], producer["published"], producer["last_sequence"]), ("bob@x", 2, 2))
        [consumer] = self.broker.consumers()
        self.assertEqual((consumer["consumer_id"], consumer["pushed"], consumer["last_pushed_sequence"]),
                         ("carol@x", 2, 2))

    def test_consumers_are_pushed_to_again_after_a_restart(self):
        self.successResultOf(self.broker.subscribe(G, "carol@x"))
        again = Harness(self.store)
        self.successResultOf(defer.ensureDeferred(again.broker.load()))
        self.successResultOf(again.broker.publish(G, ME, blob(ME, "a1")))
        self.successResultOf(again.broker.fetch(G, "carol@x", 0))
        self.assertEqual([p[0] for p in again.pushes], ["carol@x"])
        self.assertEqual(again.audits, [])  # carol proved she holds the key before the restart

    def test_dropping_a_queue_deletes_it(self):
        self.publish("bob@x", "b1")
        self.assertTrue(self.successResultOf(self.broker.drop(G)))
        self.failureResultOf(self.broker.fetch(G, "bob@x", 0), NotFound)

    def test_a_stopped_broker_refuses_requests(self):
        self.broker.stop()
        self.failureResultOf(self.broker.subscribe(G, "bob@x"), Unavailable)
