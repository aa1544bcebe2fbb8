"""Tests for nickname_holder and nickname_observer over a fake DHT, with a Clock."""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.chat.nickname_holder import RECORD_TTL, NicknameHolder
from bitnode.chat.nickname_observer import NicknameObserver
from bitnode.errors import BadRequest, Conflict, Unavailable

ME = "http://127.0.0.1:8084/alice.xml"
OTHER = "http://127.0.0.1:8084/bob.xml"


@dataclass
class FakeRecord:
    value: dict


class FakeDHT:
    """nickname records keyed by name; first writer owns a key, like the real record rules."""

    def __init__(self) -> None:
        self.values: dict[str, dict] = {}
        self.down = False
        self.writes: list[str] = []
        self.hang: list[defer.Deferred] = []
        self.hanging = False

    def get_value(self, key: str, record_type: str):
        if self.down:
            return defer.fail(Unavailable("no peers"))
        if self.hanging:
            d = defer.Deferred()
            self.hang.append(d)
            return d
        value = self.values.get(key)
        return defer.succeed(FakeRecord(value) if value else None)

    def set_value(self, key: str, value: dict, record_type: str, expire: int):
        if self.down:
            return defer.fail(Unavailable("no peers"))
        held = self.values.get(key)
        if held and held["idurl"] != value["idurl"]:
            return defer.fail(Conflict("taken"))
        self.values[key] = value
        self.writes.append(key)
        return defer.succeed(FakeRecord(value))


class HolderTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dht = FakeDHT()
        self.held: list[str] = []
        self.holder = NicknameHolder(self.clock, self.dht, lambda: ME, self.held.append)

    def test_free_name_is_held_and_republished(self) -> None:
        self.holder.set("alice")
        self.assertEqual((self.holder.state, self.holder.info()["nickname"]), ("READY", "alice"))
        self.assertEqual(self.dht.values["nickname:alice"], {"nickname": "alice", "idurl": ME})
        self.assertEqual(self.held, ["alice"])
        self.clock.advance(RECORD_TTL / 4)
        self.assertEqual(self.dht.writes, ["nickname:alice", "nickname:alice"])
        self.assertEqual(self.held, ["alice"])  # republishing is not news

    def test_taken_name_falls_back_to_numbered_variants(self) -> None:
        self.dht.values["nickname:alice"] = {"nickname": "alice", "idurl": OTHER}
        self.dht.values["nickname:alice-1"] = {"nickname": "alice-1", "idurl": OTHER}
        self.holder.set("alice")
        self.assertEqual(self.holder.info()["nickname"], "alice-2")
        self.assertEqual([r.to_state for r in self.holder.history][-1], "READY")

    def test_our_own_record_is_kept(self) -> None:
        self.dht.values["nickname:alice"] = {"nickname": "alice", "idurl": ME}
        self.holder.set("alice")
        self.assertEqual(self.holder.info()["nickname"], "alice")

    def test_losing_a_write_race_moves_on(self) -> None:
        real_set = self.dht.set_value

        def racing(key, value, record_type, expire):
            if key == "nickname:alice":
                self.dht.values[key] = {"nickname": "alice", "idurl": OTHER}
            return real_set(key, value, record_type, expire)

        self.dht.set_value = racing
        self.holder.set("alice")
        self.assertEqual(self.holder.info()["nickname"], "alice-1")

    def test_dht_failure_retries_on_timer(self) -> None:
        self.dht.down = True
        self.holder.set("alice")
        self.assertEqual(self.holder.state, "FAILED")
        self.assertIn("no peers", self.holder.info()["error"])
        self.dht.down = False
        self.clock.advance(60)
        self.assertEqual(self.holder.state, "READY")

    def test_new_name_restarts_and_stale_answers_are_dropped(self) -> None:
        self.dht.hanging = True
        self.holder.set("alice")
        self.dht.hanging = False
        self.holder.set("carol")
        self.assertEqual(self.holder.info()["nickname"], "carol")
        self.dht.hang[0].callback(None)  # the answer about "alice" arrives late
        self.assertEqual((self.holder.state, self.holder.wanted), ("READY", "carol"))
        self.assertNotIn("nickname:alice", self.dht.values)

    def test_bad_names_are_refused(self) -> None:
        for bad in ("", "a b", "x" * 65, "ü"):
            self.assertRaises(BadRequest, self.holder.set, bad)
        self.assertEqual(self.holder.state, "AT_STARTUP")

    def test_shutdown_cancels_timers(self) -> None:
        self.holder.set("alice")
        self.holder.event("shutdown")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ObserverTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.dht = FakeDHT()
        self.observer = NicknameObserver(self.clock, self.dht)

    def test_finds_holders_of_name_and_variants(self) -> None:
        self.dht.values["nickname:alice"] = {"nickname": "alice", "idurl": OTHER}
        self.dht.values["nickname:alice-1"] = {"nickname": "alice-1", "idurl": ME}
        one = self.successResultOf(self.observer.observe("alice"))
        self.assertEqual(one, [{"nickname": "alice", "idurl": OTHER, "global_id": "bob@127.0.0.1_8084"}])
        three = self.successResultOf(self.observer.observe("alice", attempts=3))
        self.assertEqual([h["global_id"] for h in three], ["bob@127.0.0.1_8084", "alice@127.0.0.1_8084"])

    def test_nothing_found_and_dht_errors_answer_empty(self) -> None:
        self.assertEqual(self.successResultOf(self.observer.observe("nobody", 2)), [])
        self.dht.down = True
        self.assertEqual(self.successResultOf(self.observer.observe("nobody")), [])

    def test_searches_queue_up(self) -> None:
        self.dht.hanging = True
        first = self.observer.observe("alice")
        second = self.observer.observe("bob")
        self.dht.hanging = False
        self.dht.values["nickname:bob"] = {"nickname": "bob", "idurl": OTHER}
        self.dht.hang[0].callback(None)
        self.assertEqual(self.successResultOf(first), [])
        self.clock.advance(0)
        self.assertEqual(len(self.successResultOf(second)), 1)

    def test_shutdown_answers_everyone(self) -> None:
        self.dht.hanging = True
        first = self.observer.observe("alice")
        second = self.observer.observe("bob")
        self.observer.event("shutdown")
        self.assertEqual(self.successResultOf(first), [])
        self.assertEqual(self.successResultOf(second), [])
