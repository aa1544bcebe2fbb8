"""A member's chain of brokers (bitnode.access.group_links.BrokerChain) with a fake ``ask``."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.access.group_links import BrokerChain
from bitnode.access.group_member import BrokerUnreachable
from bitnode.access.group_protocol import Redirected, decode_frame, encode_frame
from bitnode.errors import Forbidden, NotFound

G = "group_0123456789abcdef0123456789abcdef$alice@id.net"
B0, B1, B2 = "b0@id.net", "b1@id.net", "b2@id.net"


class Brokers:
    """Each broker answers per its entry in ``behaviour``: "ok", "down", "lost" (no log), "refuse", or a
    broker id to redirect to."""

    def __init__(self, **behaviour):
        self.behaviour = {B0: "ok", B1: "ok", B2: "ok", **behaviour}
        self.asked: list[tuple[str, str, dict]] = []

    def ask(self, peer, op, group_key_id, blobs=(), **fields):
        self.asked.append((peer, op, fields))
        what = self.behaviour[peer]
        if what == "down":
            return defer.fail(BrokerUnreachable(f"{peer} did not answer"))
        if what == "lost":
            return defer.fail(NotFound(f"{peer} hosts no log of group {group_key_id}"))
        if what == "refuse":
            return defer.fail(Forbidden(f"bob is not a member of group {group_key_id}"))
        if what != "ok":
            return defer.fail(Redirected(f"{peer} does not lead", what, 1))
        answer = {"sequences": [], "head": 0, "term": 1, "leader": peer, "sequence": 1}
        return defer.succeed(decode_frame(encode_frame("ok", group_key_id, (), **answer)))


class BrokerChainTests(unittest.TestCase):
    def chain(self, brokers):
        return BrokerChain(brokers.ask, G, (B0, B1, B2))

    def test_a_redirect_is_followed_to_the_leader_who_is_asked_first_from_then_on(self):
        brokers = Brokers(**{B0: B2})
        chain = self.chain(brokers)
        self.successResultOf(chain.subscribe(0))
        self.assertEqual([(p, op) for p, op, _ in brokers.asked], [(B0, "subscribe"), (B2, "subscribe")])
        self.assertEqual(chain.leader, B2)
        self.successResultOf(chain.publish(b"x"))
        self.assertEqual(brokers.asked[-1][:2], (B2, "publish"))

    def test_a_silent_broker_is_passed_over_and_named_to_the_next_one(self):
        brokers = Brokers(**{B0: "down"})
        chain = self.chain(brokers)
        self.successResultOf(chain.subscribe(0))
        (peer, _, fields) = brokers.asked[-1]
        self.assertEqual((peer, fields["suspects"]), (B1, [B0]))
        self.assertEqual(chain.leader, B1)

    def test_when_every_broker_failed_once_they_are_all_tried_again(self):
        brokers = Brokers(**{B0: "down", B1: "down", B2: "down"})
        chain = self.chain(brokers)
        self.failureResultOf(chain.subscribe(0), BrokerUnreachable)
        brokers.behaviour[B0] = "ok"  # back
        self.successResultOf(chain.subscribe(0))
        self.assertEqual(chain.leader, B0)

    def test_a_broker_that_lost_the_log_is_passed_over_and_only_all_of_them_make_the_group_gone(self):
        brokers = Brokers(**{B0: "lost"})
        chain = self.chain(brokers)
        self.successResultOf(chain.subscribe(0))
        self.assertEqual(chain.leader, B1)
        fetched = self.successResultOf(self.chain(brokers).fetch(0, 10))
        self.assertEqual(fetched["from"], B1)
        gone = Brokers(**{B0: "lost", B1: "lost", B2: "lost"})
        self.failureResultOf(self.chain(gone).subscribe(0), NotFound)
        self.failureResultOf(self.chain(gone).fetch(0, 10), NotFound)
        half = Brokers(**{B0: "lost", B1: "down", B2: "lost"})  # one may still have it: try again later
        self.failureResultOf(self.chain(half).fetch(0, 10), BrokerUnreachable)

    def test_a_refusal_is_the_answer(self):
        brokers = Brokers(**{B0: "refuse"})
        self.failureResultOf(self.chain(brokers).subscribe(0), Forbidden)
        self.assertEqual(len(brokers.asked), 1)
