"""group_member with a Clock and fake neighbours (bitnode.access.group_member)."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from automats.registry import Registry
from bitnode.access.group_member import MAX_FETCH, RETRY_FIRST, RETRY_MAX, BrokerUnreachable, GroupMember
from bitnode.chat.message_crypto import MessageRejected
from bitnode.errors import BadRequest, Forbidden, NotFound, Unavailable

G = "group_00000000000000000000000000000001$alice@id.net"


class FakeLink:
    """The broker: every request is a Deferred the test answers."""

    brokers = ("alice@id.net", "bob@id.net")

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.leader, self.term = "alice@id.net", 0

    @property
    def broker(self):
        return self.leader

    def moved(self, leader, term):
        if leader not in self.brokers or term < self.term or (leader, term) == (self.leader, self.term):
            return False
        self.leader, self.term = leader, term
        return True

    def _call(self, *call) -> defer.Deferred:
        d = defer.Deferred()
        self.calls.append((*call, d))
        return d

    def subscribe(self, after):
        return self._call("subscribe", after)

    def fetch(self, after, limit):
        return self._call("fetch", after, limit)

    def publish(self, blob):
        return self._call("publish", blob)

    def unsubscribe(self):
        return self._call("unsubscribe")

    def last(self, name):
        found = [c for c in self.calls if c[0] == name]
        return found[-1] if found else None

    def answer(self, name, result):
        call = self.last(name)
        if name == "subscribe" and isinstance(result, dict):
            result = {"controls": [], **result}
        if isinstance(result, Exception):
            call[-1].errback(result)
        else:
            call[-1].callback(result)


def batch(*sequences, head=None, more=False):
    return {"entries": [(s, b"m%d" % s) for s in sequences], "head": head or (max(sequences) if sequences else 0),
            "more": more}


class GroupMemberTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.link = FakeLink()
        self.delivered: list[int] = []
        self.deliver_error: dict[int, Exception] = {}
        self.saved: list[tuple] = []
        self.announced: list[str] = []
        self.registry = Registry()
        self.learned: list = []
        self.member = self.make()

    def make(self, last_sequence=0):
        return GroupMember(self.clock, G, last_sequence, self.link, self.learn, self.deliver, self.save,
                           lambda what, facts: self.announced.append(what), registry=self.registry)

    def learn(self, controls):
        self.learned.append(controls)
        return defer.succeed(None)

    def deliver(self, sequence, blob):
        error = self.deliver_error.pop(sequence, None)
        if error is not None:
            return defer.fail(error)
        self.assertEqual(blob, b"m%d" % sequence)
        self.delivered.append(sequence)
        return defer.succeed({"seq": 100 + sequence})

    def save(self, active, last):
        self.saved.append((active, last))
        return defer.succeed(None)

    def connect(self, *sequences):
        self.member.event("join")
        self.link.answer("subscribe", {"head": max(sequences, default=0)})
        self.link.answer("fetch", batch(*sequences))
        self.assertEqual(self.member.state, "CONNECTED")

    # -- joining and catching up -----------------------------------------------------------

    def test_a_new_member_subscribes_then_fetches_the_whole_history_in_order(self):
        self.member.event("join")
        self.assertEqual((self.member.state, self.link.last("subscribe")[1]), ("SUBSCRIBING", 0))
        self.link.answer("subscribe", {"head": 3})
        self.assertEqual((self.member.state, self.link.last("fetch")[1:3]), ("CATCHING_UP", (0, MAX_FETCH)))
        self.link.answer("fetch", batch(1, 2, 3))
        self.assertEqual(self.member.state, "CONNECTED")
        self.assertEqual(self.delivered, [1, 2, 3])
        self.assertEqual(self.saved, [(True, 3)])
        self.assertEqual(self.announced, ["joined", "connected"])
        self.assertEqual(self.member.describe_group()["last_sequence"], 3)

    def test_a_member_coming_back_fetches_only_what_it_missed(self):
        self.member.destroy()
        self.member = self.make(last_sequence=5)
        self.member.event("join")
        self.assertEqual(self.link.last("subscribe")[1], 5)
        self.link.answer("subscribe", {"head": 6})
        self.assertEqual(self.link.last("fetch")[1], 5)
        self.link.answer("fetch", batch(6))
        self.assertEqual(self.delivered, [6])

    def test_a_long_history_is_fetched_batch_by_batch(self):
        self.member.event("join")
        self.link.answer("subscribe", {"head": 4})
        self.link.answer("fetch", batch(1, 2, head=4, more=True))
        self.assertEqual((self.member.state, self.link.last("fetch")[1]), ("CATCHING_UP", 2))
        self.link.answer("fetch", batch(3, 4))
        self.assertEqual((self.member.state, self.delivered), ("CONNECTED", [1, 2, 3, 4]))

    # -- order ------------------------------------------------------------------------------

    def test_an_early_push_waits_for_the_missing_one_which_is_fetched(self):
        self.connect(1, 2)
        self.member.event("pushed", 4, b"m4")
        self.assertEqual((self.member.state, self.delivered), ("CATCHING_UP", [1, 2]))
        self.assertEqual(self.link.last("fetch")[1], 2)
        self.member.event("pushed", 3, b"m3")  # the late push arrives first
        self.assertEqual(self.delivered, [1, 2, 3, 4])
        self.link.answer("fetch", batch(3, 4))  # the fetch brings them again: taken once
        self.assertEqual((self.member.state, self.delivered), ("CONNECTED", [1, 2, 3, 4]))

    def test_pushes_before_the_subscription_is_answered_are_kept(self):
        self.member.event("join")
        self.member.event("pushed", 2, b"m2")
        self.link.answer("subscribe", {"head": 2})
        self.assertEqual(self.delivered, [])
        self.link.answer("fetch", batch(1, 2))
        self.assertEqual(self.delivered, [1, 2])

    def test_a_repeated_or_old_push_is_taken_once(self):
        self.connect(1)
        self.member.event("pushed", 2, b"m2")
        self.member.event("pushed", 2, b"m2")
        self.member.event("pushed", 1, b"m1")
        self.assertEqual(self.delivered, [1, 2])
        self.assertEqual(self.member.state, "CONNECTED")

    def test_an_entry_that_cannot_be_stored_now_is_kept_and_stored_later(self):
        self.connect()
        self.deliver_error[1] = Unavailable("history closing")
        self.member.event("pushed", 1, b"m1")
        self.assertEqual(self.delivered, [])
        self.member.event("pushed", 2, b"m2")
        self.assertEqual(self.delivered, [1, 2])

    def test_an_entry_that_does_not_open_is_skipped(self):
        self.connect()
        self.deliver_error[1] = MessageRejected("bad signature")
        self.member.event("pushed", 1, b"m1")
        self.member.event("pushed", 2, b"m2")
        self.assertEqual(self.delivered, [2])
        self.assertEqual(self.member.counters["rejected"], 1)
        self.flushLoggedErrors()

    def test_every_minute_a_connected_member_checks_for_lost_pushes(self):
        self.connect(1)
        self.clock.advance(60)
        self.assertEqual((self.member.state, self.link.last("fetch")[1]), ("CATCHING_UP", 1))
        self.link.answer("fetch", batch(2))
        self.assertEqual((self.member.state, self.delivered), ("CONNECTED", [1, 2]))
        self.assertEqual(self.announced.count("joined"), 1)

    # -- sending ----------------------------------------------------------------------------

    def test_a_message_sent_takes_the_number_the_broker_gave_it(self):
        self.connect(1)
        d = self.member.publish(b"m2", 30.0)
        self.assertEqual(self.link.last("publish")[1], b"m2")
        self.link.answer("publish", {"sequence": 2, "head": 2})
        self.assertEqual(self.successResultOf(d), 2)
        self.assertEqual(self.delivered, [1, 2])
        self.assertIsNone(self.successResultOf(self.member.wait_delivered(2, 5.0)))  # stored before asked

    def test_waiting_for_my_message_fires_with_its_row_once_the_ones_before_came(self):
        self.connect(1)
        d = self.member.publish(b"m3", 30.0)
        self.link.answer("publish", {"sequence": 3, "head": 3})
        self.assertEqual(self.successResultOf(d), 3)
        waiting = self.member.wait_delivered(3, 5.0)
        self.assertEqual((self.member.state, self.delivered), ("CATCHING_UP", [1]))  # 2 is fetched first
        self.link.answer("fetch", batch(2, 3))
        self.assertEqual(self.successResultOf(waiting), {"seq": 103})
        late = self.member.wait_delivered(9, 5.0)
        self.clock.advance(5.0)
        self.assertIsNone(self.successResultOf(late))

    def test_a_send_to_an_unreachable_broker_fails_and_disconnects(self):
        self.connect()
        d = self.member.publish(b"m1", 30.0)
        self.link.answer("publish", BrokerUnreachable("alice did not answer: timeout"))
        failure = self.failureResultOf(d, Unavailable)
        self.assertIn("is reachable, message not sent", failure.getErrorMessage())
        self.assertEqual(self.member.state, "DISCONNECTED")
        failure = self.failureResultOf(self.member.publish(b"m1", 30.0), Unavailable)
        self.assertIn("no broker is reachable", failure.getErrorMessage())
        self.assertEqual(len([c for c in self.link.calls if c[0] == "publish"]), 1)

    def test_a_send_the_broker_refuses_for_its_content_changes_nothing(self):
        self.connect()
        d = self.member.publish(b"m1", 30.0)
        self.link.answer("publish", BadRequest("too large"))
        self.failureResultOf(d, BadRequest)
        self.assertEqual(self.member.state, "CONNECTED")

    def test_sending_before_joining_fails_at_once_and_while_joining_waits_for_the_join(self):
        self.failureResultOf(self.member.publish(b"m1", 30.0), Unavailable)
        self.member.event("join")
        late = self.member.publish(b"m1", 30.0)
        self.assertNoResult(late)
        self.clock.advance(30.0)
        failure = self.failureResultOf(late, Unavailable)
        self.assertIn("still connecting", failure.getErrorMessage())
        waiting = self.member.publish(b"m1", 30.0)
        self.link.answer("subscribe", {"head": 0})
        self.link.answer("fetch", batch())
        self.assertEqual(self.link.last("publish")[1], b"m1")  # sent once connected
        self.link.answer("publish", {"sequence": 1, "head": 1})
        self.assertEqual(self.successResultOf(waiting), 1)

    # -- refusals and an absent broker ---------------------------------------------------------------

    def test_a_member_the_broker_refuses_stops_trying_until_it_joins_again(self):
        self.member.event("join")
        self.link.answer("subscribe", Forbidden("eve is not a member"))
        self.assertEqual(self.member.state, "REFUSED")
        self.assertEqual(self.announced, ["refused"])
        self.failureResultOf(self.member.publish(b"m1", 30.0), Forbidden)
        self.clock.advance(3600)
        self.assertEqual(len(self.link.calls), 1)
        self.member.event("join")
        self.assertEqual(self.member.state, "SUBSCRIBING")

    def test_a_group_that_no_longer_exists_is_a_refusal(self):
        self.connect()
        self.clock.advance(60)
        self.link.answer("fetch", NotFound("no queue"))
        self.assertEqual(self.member.state, "REFUSED")

    def test_an_absent_broker_is_retried_with_a_growing_delay(self):
        self.member.event("join")
        self.link.answer("subscribe", BrokerUnreachable("timeout"))
        self.assertEqual(self.member.state, "DISCONNECTED")
        delays = []
        for _ in range(3):
            start = self.clock.seconds()
            count = len(self.link.calls)
            while len(self.link.calls) == count:
                self.clock.advance(0.5)
            delays.append(self.clock.seconds() - start)
            self.assertEqual(self.member.state, "SUBSCRIBING")
            self.link.answer("subscribe", BrokerUnreachable("timeout"))
        self.assertEqual(delays, [RETRY_FIRST, RETRY_FIRST * 2, RETRY_FIRST * 4])
        self.clock.advance(RETRY_FIRST * 8)
        self.link.answer("subscribe", {"head": 0})
        self.link.answer("fetch", batch())
        self.assertEqual((self.member.state, self.member.retries), ("CONNECTED", 0))

    def test_brokers_away_for_a_day_are_tried_at_most_every_retry_max_and_found_again(self):
        self.member.event("join")
        tries = [self.clock.seconds()]
        self.link.answer("subscribe", BrokerUnreachable("timeout"))
        while self.clock.seconds() < 24 * 3600:
            self.clock.advance(10)
            if self.member.state == "SUBSCRIBING":
                tries.append(self.clock.seconds())
                self.link.answer("subscribe", BrokerUnreachable("timeout"))
        gaps = [b - a for a, b in zip(tries, tries[1:], strict=False)]
        self.assertLessEqual(max(gaps), RETRY_MAX + 10)
        self.assertLess(len(tries), 24 * 3600 / RETRY_MAX + 10)  # no storm of requests
        self.assertGreater(len(tries), 24 * 3600 / (RETRY_MAX + 10) - 1)  # and no giving up
        while self.member.state != "SUBSCRIBING":
            self.clock.advance(10)
        self.link.answer("subscribe", {"head": 0})
        self.link.answer("fetch", batch())
        self.assertEqual((self.member.state, self.member.retries), ("CONNECTED", 0))

    def test_a_member_the_log_removed_stops_asking(self):
        self.connect(1)
        self.member.removed(Forbidden("bob was removed"))
        self.assertEqual((self.member.state, self.announced[-1]), ("REFUSED", "refused"))
        self.member.event("pushed", 3, b"m3")  # on its way before the removal: ignored
        self.clock.advance(3600)
        self.assertEqual([c[0] for c in self.link.calls], ["subscribe", "fetch"])
        self.failureResultOf(self.member.publish(b"m9", 30.0), Forbidden)

    def test_a_broker_lost_while_connected_is_announced_and_retried(self):
        self.connect()
        self.clock.advance(60)
        self.link.answer("fetch", BrokerUnreachable("timeout"))
        self.assertEqual(self.member.state, "DISCONNECTED")
        self.assertEqual(self.announced[-1], "disconnected")
        self.assertIsNotNone(self.member.describe_group()["retry_at"])

    def test_a_push_or_a_join_while_disconnected_retries_at_once(self):
        self.member.event("join")
        self.link.answer("subscribe", BrokerUnreachable("timeout"))
        self.member.event("pushed", 1, b"m1")
        self.assertEqual(self.member.state, "SUBSCRIBING")
        self.assertEqual(self.delivered, [1])
        self.link.answer("subscribe", BrokerUnreachable("timeout"))
        self.member.event("join")
        self.assertEqual(self.member.state, "SUBSCRIBING")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_an_unusable_answer_counts_as_an_absent_broker(self):
        self.member.event("join")
        self.link.answer("subscribe", BadRequest("garbage"))
        self.assertEqual(self.member.state, "DISCONNECTED")

    def test_a_join_settles_once_connected_disconnected_or_refused(self):
        self.member.event("join")
        settled = self.member.when_settled(30.0)
        self.assertNoResult(settled)
        self.link.answer("subscribe", {"head": 0})
        self.assertNoResult(settled)  # still catching up
        self.link.answer("fetch", batch())
        self.assertEqual(self.successResultOf(settled), "CONNECTED")
        self.assertEqual(self.successResultOf(self.member.when_settled(30.0)), "CONNECTED")
        self.member.event("leave")
        refused = self.make()
        refused.event("join")
        settled = refused.when_settled(30.0)
        self.link.answer("subscribe", NotFound("no queue"))
        self.assertEqual(self.successResultOf(settled), "REFUSED")
        self.assertIsInstance(self.failureResultOf(refused.publish(b"m1", 30.0), NotFound).value, NotFound)
        refused.event("join")
        slow = refused.when_settled(5.0)
        self.clock.advance(5.0)
        self.assertEqual(self.successResultOf(slow), "SUBSCRIBING")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    # -- leaving ------------------------------------------------------------------------------

    def test_leaving_unsubscribes_and_ignores_answers_still_on_their_way(self):
        self.member.event("join")
        self.member.event("leave")
        self.assertEqual(self.member.state, "CLOSED")
        self.assertTrue(self.member.destroyed)
        self.assertEqual(self.link.last("unsubscribe")[0], "unsubscribe")
        self.link.answer("subscribe", {"head": 0})
        self.link.answer("unsubscribe", BrokerUnreachable("gone"))
        self.assertEqual(self.member.unexpected_count, 0)
        self.assertEqual(self.announced, ["left"])
        self.assertEqual(self.registry.list(), [])

    def test_leaving_while_disconnected_cancels_the_retry(self):
        self.member.event("join")
        self.link.answer("subscribe", BrokerUnreachable("timeout"))
        self.member.event("leave")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_closing_for_a_node_stop_says_nothing_to_the_broker(self):
        self.connect()
        waiting = self.member.wait_delivered(5, 10.0)
        self.member.close()
        self.assertIsNone(self.link.last("unsubscribe"))
        self.assertIsNone(self.successResultOf(waiting))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unexpected_events_are_logged_not_dropped(self):
        self.member.event("fetched", batch(1))
        self.assertEqual(self.member.unexpected_count, 1)
        self.assertEqual(self.member.state, "AT_STARTUP")
