"""The group broker with one hosted log and fake neighbours (bitnode.access.group_queue): members, pushes, limits.

The replication between several brokers is tested in test_group_replica; here the group has one broker (this
node), so every entry is committed as soon as it is written. Signatures are real (one key stands for everyone).
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.access import group_config, group_roster
from bitnode.access.group_log import GroupLog
from bitnode.access.group_queue import BrokerLimits, GroupBroker
from bitnode.chat.message_crypto import GROUP_MESSAGE, MessageHeader, seal_with_secret
from bitnode.crypt import keys
from bitnode.errors import BadRequest, Conflict, Forbidden, NotFound, TooManyRequests

ME, ALICE, BOB, CAROL = "broker@id.net", "alice@id.net", "bob@id.net", "carol@id.net"
G = "group_00000000000000000000000000000001$alice@id.net"
KEY = keys.generate_rsa(2048)  # everyone's key: the broker checks that a member signed, not who holds which key
SECRET = bytes(32)


class Harness:
    def __init__(self, limits: BrokerLimits) -> None:
        self.clock = Clock()
        self.limits = limits
        self.log = GroupLog(":memory:")
        self.pushes: list[tuple[str, int]] = []
        self.events: list[tuple[str, dict]] = []
        self.broker = GroupBroker(self.clock, ME, self.log, lambda f, *a: defer.maybeDeferred(f, *a),
                                  self.ask, lambda user: defer.succeed(KEY.public_key()), self.push,
                                  lambda member, group, term: defer.succeed(None), lambda: self.limits,
                                  lambda event, data: self.events.append((event, data)),
                                  lambda creator: creator in self.customers)
        self.customers = {ALICE}

    def ask(self, peer, op, group_key_id, blobs=(), **fields):
        raise AssertionError(f"a group with one broker asks nobody ({op} to {peer})")

    def push(self, member, group_key_id, sequence, blob):
        self.pushes.append((member, sequence))
        return defer.succeed(None)


def config(group=G, creator=ALICE):
    unsigned = group_config.new_config(group, creator, "0" * 64, [ME], 1.0, "")
    return group_config.sign(unsigned, KEY)


def control(op, by=ALICE, **fields):
    return group_roster.encode(op, G, by, 1.0, KEY, **fields)


class GroupBrokerTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness(BrokerLimits(heartbeat=3600.0))
        self.addCleanup(self.h.broker.stop)
        self.addCleanup(self.h.log.close)
        self.broker = self.h.broker
        self.successResultOf(self.broker.host(config().to_dict(), ALICE))
        self.sent = 0

    def message(self, sender, generation=1, data=None):
        self.sent += 1
        header = MessageHeader(GROUP_MESSAGE, sender, G, f"m{self.sent}", 1.0)
        return seal_with_secret(header, data or {"n": self.sent}, KEY, generation, SECRET)

    def publish(self, member, blob):
        return self.successResultOf(self.broker.publish(G, member, blob))["sequence"]

    def add(self, member, by=ALICE):
        return self.publish(by, control("add", by=by, member=member, wraps={member: "bundle"}))

    def test_members_are_whom_the_roster_lets_in_and_strangers_learn_nothing(self):
        for ask in (lambda: self.broker.subscribe(G, BOB), lambda: self.broker.fetch(G, BOB, 0),
                    lambda: self.broker.publish(G, BOB, self.message(BOB))):
            self.assertIn("is not a member", str(self.failureResultOf(ask(), Forbidden).value))
        self.failureResultOf(self.broker.fetch("group_00000000000000000000000000000009$x@id.net", ALICE, 0),
                             NotFound)
        self.assertEqual(self.add(BOB), 1)
        subscribed = self.successResultOf(self.broker.subscribe(G, BOB))
        self.assertEqual((subscribed["head"], [s for s, _ in subscribed["controls"]]), (1, [1]))
        # a member cannot let others in (only admins), nor publish what another signed
        self.failureResultOf(self.broker.publish(G, BOB, control("add", by=BOB, member=CAROL,
                                                                 wraps={CAROL: "b"})), Forbidden)
        self.failureResultOf(self.broker.publish(G, BOB, control("add", member=CAROL, wraps={CAROL: "b"})),
                             Forbidden)
        self.failureResultOf(self.broker.publish(G, BOB, self.message(ALICE)), BadRequest)

    def test_entries_are_numbered_in_order_and_pushed_to_every_subscriber_but_their_sender(self):
        self.add(BOB)
        self.add(CAROL)
        for member in (ALICE, BOB, CAROL):
            self.successResultOf(self.broker.subscribe(G, member))
        self.assertEqual([self.publish(BOB, self.message(BOB)), self.publish(CAROL, self.message(CAROL))], [3, 4])
        self.assertEqual(sorted(self.h.pushes), [(ALICE, 3), (ALICE, 4), (BOB, 4), (CAROL, 3)])
        batch = self.successResultOf(self.broker.fetch(G, CAROL, 2))
        self.assertEqual(([s for s, _ in batch["entries"]], batch["head"], batch["more"]), ([3, 4], 4, False))
        blob = self.message(BOB)
        self.assertEqual(self.publish(BOB, blob), 5)
        self.assertEqual(self.publish(BOB, blob), 5)  # a repeat after a lost answer keeps its number
        self.assertEqual((self.broker.counters["published"], self.broker.counters["repeated"]), (5, 1))

    def test_a_removal_rotates_the_key_and_the_removed_member_is_told_then_left_alone(self):
        self.add(BOB)
        self.add(CAROL)
        for member in (ALICE, BOB, CAROL):
            self.successResultOf(self.broker.subscribe(G, member))
        self.h.pushes.clear()
        removal = self.publish(ALICE, control("remove", member=CAROL, generation=2,
                                              wraps={ALICE: "a", BOB: "b"}))
        self.assertIn((CAROL, removal), self.h.pushes)  # so that it knows it is out
        # a message sealed with the old key would open for carol: refused, seal again
        failure = self.failureResultOf(self.broker.publish(G, BOB, self.message(BOB, generation=1)), Conflict)
        self.assertIn("key generation 2", str(failure.value))
        after = self.publish(BOB, self.message(BOB, generation=2))
        self.assertNotIn((CAROL, after), self.h.pushes)
        self.failureResultOf(self.broker.fetch(G, CAROL, 0), Forbidden)
        self.assertNotIn(CAROL, [c["consumer_id"] for c in self.broker.consumers()])

    def test_an_entry_too_large_is_refused_and_counted(self):
        self.h.limits = replace(self.h.limits, max_entry_bytes=600)
        failure = self.failureResultOf(self.broker.publish(G, ALICE, self.message(ALICE, data={"x": "y" * 700})),
                                       BadRequest)
        self.assertIn("at most 600 bytes", str(failure.value))
        self.assertEqual(self.broker.counters["too_large"], 1)

    def test_a_member_publishing_too_fast_is_refused_until_its_rate_allows_again(self):
        self.h.limits = replace(self.h.limits, publish_rate=1.0, publish_burst=3.0)
        self.broker.configure()
        for _ in range(3):
            self.publish(ALICE, self.message(ALICE))
        failure = self.failureResultOf(self.broker.publish(G, ALICE, self.message(ALICE)), TooManyRequests)
        self.assertGreater(failure.value.retry_after, 0)
        self.assertEqual(self.broker.counters["rate_limited"], 1)
        self.h.clock.advance(3600)  # an hour later the burst is back
        for _ in range(3):
            self.publish(ALICE, self.message(ALICE))

    def test_a_group_is_full_at_the_members_limit(self):
        self.h.limits = replace(self.h.limits, max_members=2)
        self.add(BOB)
        self.failureResultOf(self.broker.publish(G, ALICE, control("add", member=CAROL, wraps={CAROL: "c"})),
                             Conflict)
        self.assertEqual(self.broker.counters["full"], 1)

    def test_a_log_keeps_its_newest_messages_and_every_control_entry(self):
        self.h.limits = replace(self.h.limits, max_messages=10, publish_rate=0.0)
        self.broker.configure()
        self.add(BOB)
        for _ in range(25):
            self.publish(ALICE, self.message(ALICE))
        self.assertEqual(self.broker.counters["trimmed"], 15)
        batch = self.successResultOf(self.broker.fetch(G, BOB, 0, 100))
        self.assertEqual([s for s, _ in batch["entries"]], [1, *range(17, 27)])

    def test_hosting_is_bounded_in_all_and_per_creator(self):
        self.h.limits = replace(self.h.limits, max_logs=3, max_logs_per_creator=2)
        self.h.customers |= {"dave@id.net", "erin@id.net"}
        other = "group_00000000000000000000000000000002$alice@id.net"
        self.successResultOf(self.broker.host(config(other).to_dict(), ALICE))
        third = "group_00000000000000000000000000000003$alice@id.net"
        self.failureResultOf(self.broker.host(config(third).to_dict(), ALICE), TooManyRequests)
        dave = "group_00000000000000000000000000000004$dave@id.net"
        self.successResultOf(self.broker.host(config(dave, "dave@id.net").to_dict(), "dave@id.net"))
        erin = "group_00000000000000000000000000000005$erin@id.net"
        self.failureResultOf(self.broker.host(config(erin, "erin@id.net").to_dict(), "erin@id.net"),
                             TooManyRequests)
        self.assertEqual(self.broker.counters["host_refused"], 2)
        # a stranger cannot make this node host a group it is no broker of, or with a config another signed
        self.failureResultOf(self.broker.host(config(erin, "erin@id.net").to_dict(), "mallory@id.net"), Forbidden)

    def test_a_broker_keeps_logs_for_its_customers_only(self):
        stranger = "group_00000000000000000000000000000007$mallory@id.net"
        failure = self.failureResultOf(self.broker.host(config(stranger, "mallory@id.net").to_dict(),
                                                        "mallory@id.net"), Forbidden)
        self.assertIn("only for its customers", str(failure.value))
        self.assertEqual(self.broker.counters["host_refused"], 1)
        self.h.customers.add("mallory@id.net")
        self.successResultOf(self.broker.host(config(stranger, "mallory@id.net").to_dict(), "mallory@id.net"))

    def test_only_the_creator_drops_its_log(self):
        self.failureResultOf(self.broker.drop(G, BOB), Forbidden)
        self.assertEqual(self.successResultOf(self.broker.drop(G, ALICE)), {"dropped": True})
        self.failureResultOf(self.broker.fetch(G, ALICE, 0), NotFound)
