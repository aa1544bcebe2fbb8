"""Tests for bitnode.main.events: sequence ids, replay buffer, subscribers and long-poll consumers."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.errors import BadRequest, TooManyRequests, Unavailable
from bitnode.main import events as events_module
from bitnode.main.events import EventBus


def seqs(result: dict) -> list[int]:
    return [event["seq"] for event in result["events"]]


class PublishTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.bus = EventBus(self.clock, buffer_size=5)

    def test_sequence_ids_increase(self) -> None:
        self.assertEqual(self.bus.last_seq, 0)
        got = [self.bus.publish("e", i).seq for i in range(8)]
        self.assertEqual(got, list(range(1, 9)))
        self.assertEqual(self.bus.last_seq, 8)

    def test_event_shape(self) -> None:
        self.clock.advance(12.5)
        event = self.bus.publish("file-uploaded", {"path": "/a"})
        self.assertEqual(event.as_dict(), {"seq": 1, "event_id": "file-uploaded", "data": {"path": "/a"},
                                           "time": 12.5})

    def test_bad_event_ids(self) -> None:
        for event_id in ("", None, 5, "x" * (events_module.MAX_EVENT_ID + 1)):
            self.assertRaises(BadRequest, self.bus.publish, event_id)
        self.assertEqual(self.bus.last_seq, 0)
        self.bus.publish("x" * events_module.MAX_EVENT_ID)
        self.assertEqual(self.bus.last_seq, 1)

    def test_buffer_bounded(self) -> None:
        for i in range(8):
            self.bus.publish("e", i)
        events, missed = self.bus.since(0)
        self.assertEqual([e.seq for e in events], [4, 5, 6, 7, 8])
        self.assertEqual(missed, 3)

    def test_since_inside_buffer(self) -> None:
        for i in range(8):
            self.bus.publish("e", i)
        events, missed = self.bus.since(6)
        self.assertEqual(([e.seq for e in events], missed), ([7, 8], 0))
        self.assertEqual(self.bus.since(8), ([], 0))
        events, missed = self.bus.since(3)
        self.assertEqual(([e.seq for e in events], missed), ([4, 5, 6, 7, 8], 0))
        events, missed = self.bus.since(2)
        self.assertEqual(missed, 1)

    def test_since_on_empty_bus(self) -> None:
        self.assertEqual(self.bus.since(0), ([], 0))


class SubscribeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.bus = EventBus(Clock())

    def test_subscribe_and_unsubscribe(self) -> None:
        got = []
        unsubscribe = self.bus.subscribe(lambda event: got.append(event.seq))
        self.bus.publish("a")
        self.bus.publish("b")
        unsubscribe()
        self.bus.publish("c")
        self.assertEqual(got, [1, 2])
        unsubscribe()  # twice is harmless

    def test_failing_subscriber_does_not_stop_others(self) -> None:
        got = []

        def broken(event):
            raise RuntimeError("subscriber bug")

        self.bus.subscribe(broken)
        self.bus.subscribe(lambda event: got.append(event.event_id))
        self.assertEqual(self.bus.publish("a").seq, 1)
        self.assertEqual(got, ["a"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_subscriber_may_unsubscribe_itself(self) -> None:
        got = []
        holder = {}

        def once(event):
            got.append(event.seq)
            holder["unsubscribe"]()

        holder["unsubscribe"] = self.bus.subscribe(once)
        self.bus.publish("a")
        self.bus.publish("b")
        self.assertEqual(got, [1])


class ListenTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.bus = EventBus(self.clock, buffer_size=5)

    def tearDown(self) -> None:
        self.bus.close()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def fired(self, d: defer.Deferred):
        return self.successResultOf(d)

    def test_new_consumer_starts_at_end(self) -> None:
        self.bus.publish("old")
        d = self.bus.listen("c1", timeout=10)
        self.assertNoResult(d)
        self.bus.publish("new")
        result = self.fired(d)
        self.assertEqual(seqs(result), [2])
        self.assertEqual((result["last_seq"], result["missed"]), (2, 0))
        self.assertEqual(result["events"][0]["event_id"], "new")

    def test_buffered_events_returned_immediately(self) -> None:
        for i in range(3):
            self.bus.publish("e", i)
        result = self.fired(self.bus.listen("c1", since=1, timeout=10))
        self.assertEqual(seqs(result), [2, 3])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_waits_then_fires_on_publish(self) -> None:
        d = self.bus.listen("c1", timeout=30)
        self.clock.advance(29)
        self.assertNoResult(d)
        self.bus.publish("e")
        self.assertEqual(seqs(self.fired(d)), [1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_times_out_empty(self) -> None:
        self.bus.publish("before")
        d = self.bus.listen("c1", timeout=30)
        self.clock.advance(29.9)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        self.assertEqual(self.fired(d), {"events": [], "last_seq": 1, "missed": 0})

    def test_zero_timeout_answers_at_once(self) -> None:
        self.assertEqual(self.fired(self.bus.listen("c1", timeout=0))["events"], [])

    def test_cursor_per_consumer(self) -> None:
        self.bus.listen("a", timeout=0)
        self.bus.listen("b", timeout=0)
        self.bus.publish("e1")
        self.bus.publish("e2")
        self.assertEqual(seqs(self.fired(self.bus.listen("a", timeout=5))), [1, 2])
        self.bus.publish("e3")
        self.assertEqual(seqs(self.fired(self.bus.listen("a", timeout=5))), [3])
        # "b" has its own cursor and still gets everything.
        self.assertEqual(seqs(self.fired(self.bus.listen("b", timeout=5))), [1, 2, 3])
        d = self.bus.listen("a", timeout=5)
        self.assertNoResult(d)
        self.clock.advance(5)
        self.assertEqual(self.fired(d)["events"], [])

    def test_since_rewinds(self) -> None:
        self.bus.listen("a", timeout=0)
        for i in range(3):
            self.bus.publish("e", i)
        self.assertEqual(seqs(self.fired(self.bus.listen("a", timeout=5))), [1, 2, 3])
        self.assertEqual(seqs(self.fired(self.bus.listen("a", since=1, timeout=5))), [2, 3])

    def test_missed_when_resuming_from_dropped_seq(self) -> None:
        for i in range(9):
            self.bus.publish("e", i)
        result = self.fired(self.bus.listen("late", since=1, timeout=5))
        self.assertEqual(seqs(result), [5, 6, 7, 8, 9])
        self.assertEqual(result["missed"], 3)
        self.assertEqual(result["last_seq"], 9)
        # The cursor moved on: next poll has nothing missed.
        self.bus.publish("e")
        result = self.fired(self.bus.listen("late", timeout=5))
        self.assertEqual((seqs(result), result["missed"]), ([10], 0))

    def test_second_listen_answers_first_empty(self) -> None:
        first = self.bus.listen("c", timeout=10)
        second = self.bus.listen("c", timeout=10)
        self.assertEqual(self.fired(first)["events"], [])
        self.assertNoResult(second)
        self.bus.publish("e")
        self.assertEqual(seqs(self.fired(second)), [1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_publish_wakes_every_waiting_consumer(self) -> None:
        a = self.bus.listen("a", timeout=10)
        b = self.bus.listen("b", timeout=10)
        self.bus.publish("e")
        self.assertEqual(seqs(self.fired(a)), [1])
        self.assertEqual(seqs(self.fired(b)), [1])

    def test_consumer_ahead_of_stream_keeps_waiting(self) -> None:
        # A consumer told to resume after an id not yet reached waits until it is passed.
        self.bus.publish("e")
        d = self.bus.listen("c", since=2, timeout=10)
        self.bus.publish("e")
        self.assertNoResult(d)
        self.bus.publish("e")
        self.assertEqual(seqs(self.fired(d)), [3])

    def test_cancel(self) -> None:
        d = self.bus.listen("c", timeout=10)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # The consumer survives and its cursor did not move.
        self.bus.publish("e")
        self.assertEqual(seqs(self.fired(self.bus.listen("c", timeout=10))), [1])

    def test_close_fires_pending_listens(self) -> None:
        a = self.bus.listen("a", timeout=10)
        b = self.bus.listen("b", timeout=10)
        got = []
        self.bus.subscribe(got.append)
        self.bus.close()
        self.assertEqual(self.fired(a)["events"], [])
        self.assertEqual(self.fired(b)["events"], [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.bus.publish("after-close")
        self.assertEqual(got, [])

    def test_consumers_listed_and_bounded(self) -> None:
        self.patch(events_module, "MAX_CONSUMERS", 3)
        for name in ("a", "b", "c"):
            self.bus.listen(name, timeout=0)
            self.clock.advance(1)
        self.assertEqual(self.bus.consumers(), ["a", "b", "c"])
        self.bus.listen("d", timeout=0)
        # The idlest one ("a") made room.
        self.assertEqual(self.bus.consumers(), ["b", "c", "d"])

    def test_consumers_bounded_when_all_are_waiting(self) -> None:
        self.patch(events_module, "MAX_CONSUMERS", 3)
        waiting = [self.bus.listen(name, timeout=10) for name in ("a", "b", "c")]
        err = self.assertRaises(TooManyRequests, self.bus.listen, "d", timeout=10)
        self.assertEqual(err.http_code, 429)
        self.assertGreater(err.retry_after, 0)
        self.assertEqual(self.bus.consumers(), ["a", "b", "c"])
        self.assertEqual(len(self.clock.getDelayedCalls()), 3)
        # A known consumer may still poll again (its older poll is answered empty);
        # once one is idle, a newcomer takes its place.
        again = self.bus.listen("a", timeout=0)
        self.assertEqual(self.fired(waiting[0])["events"], [])
        self.assertEqual(self.fired(again)["events"], [])
        self.fired(self.bus.listen("d", timeout=0))
        self.assertEqual(self.bus.consumers(), ["b", "c", "d"])
        self.bus.publish("e")
        for d in waiting[1:]:
            self.assertEqual(seqs(self.fired(d)), [1])

    def test_listen_after_close_is_unavailable(self) -> None:
        self.bus.publish("before")
        self.bus.listen("known", timeout=0)
        self.bus.close()
        for consumer in ("known", "new"):
            err = self.assertRaises(Unavailable, self.bus.listen, consumer, since=0, timeout=30)
            self.assertEqual(err.http_code, 503)
            self.assertIn("stopping", str(err))
        self.assertRaises(Unavailable, self.bus.listen, "later", timeout=0)
        self.assertEqual(self.bus.consumers(), ["known"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_since_must_be_a_sequence_id(self) -> None:
        self.bus.publish("e")
        for bad in (-1, "1", 1.0, True, [1]):
            err = self.assertRaises(BadRequest, self.bus.listen, "c", since=bad, timeout=0)
            self.assertIn("0 or more", str(err))
        # Nothing was created or scheduled by the refused calls.
        self.assertEqual((self.bus.consumers(), self.clock.getDelayedCalls()), ([], []))
        self.assertEqual(seqs(self.fired(self.bus.listen("c", since=0, timeout=0))), [1])

    def test_bad_since_is_refused_before_the_bus_is_known_closed(self) -> None:
        # A malformed call is the caller's mistake whatever the bus's state: 400, not 503.
        self.bus.close()
        self.assertRaises(BadRequest, self.bus.listen, "c", since=-3, timeout=0)

    def test_check_since(self) -> None:
        self.assertEqual(events_module.check_since(0), 0)
        self.assertEqual(events_module.check_since(12), 12)
        for bad in (-1, "3", 2.5, False, None):
            self.assertRaises(BadRequest, events_module.check_since, bad)

    def test_subscribe_after_close_is_not_kept(self) -> None:
        self.bus.close()
        got = []
        unsubscribe = self.bus.subscribe(got.append)
        self.bus.publish("e")
        self.assertEqual(got, [])
        unsubscribe()
