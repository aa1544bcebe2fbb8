"""Offline delivery: queueing on the recipient's suppliers, fetching in order once, receipts (Clock-driven).

The suppliers are real mailboxes (:class:`bitnode.supplier.mailbox.Mailbox`,
in-memory sqlite) behind a fake gateway that can take a supplier offline.
"""

from __future__ import annotations

import os

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.chat.history import OUTGOING, MessageHistory
from bitnode.chat.inbox import LATER
from bitnode.chat.message_crypto import PRIVATE_MESSAGE, MessageHeader, encode_header
from bitnode.chat.offline_delivery import (
    RECEIPT_BATCH,
    MailboxClient,
    OfflineDelivery,
    QueuedExpiry,
    Receipts,
    receipt_id,
)
from bitnode.errors import Unavailable
from bitnode.supplier.mailbox import DAY, Mailbox, MailboxLimits, MailboxStore
from bitnode.transport.packet_out import PeerRefused
from tests.support import clock_at

ALICE, BOB, CAROL = "alice@id_1", "bob@id_1", "carol@id_1"
S1, S2 = "s1@id_1", "s2@id_1"


def in_line(fn, *args, **kwargs):
    return defer.maybeDeferred(fn, *args, **kwargs)


def sealed(sender, message_id, when, recipient=ALICE):
    """Bytes shaped like a sealed message (peek reads the header; nothing here opens it)."""
    head = encode_header(MessageHeader(PRIVATE_MESSAGE, sender, recipient, message_id, when))
    return head + (1).to_bytes(4, "big") + b"c" + (1).to_bytes(2, "big") + b"s"


class Response:
    def __init__(self, payload):
        self.payload = payload


class Suppliers:
    """Mailboxes of suppliers S1 and S2, each serving ALICE (its customer); ``offline`` ones do not answer."""

    def __init__(self, clock):
        self.clock = clock
        self.offline: set[str] = set()
        self.boxes = {}
        for name in (S1, S2):
            store = MailboxStore(":memory:")
            self.boxes[name] = Mailbox(store, in_line, clock.seconds,
                                       lambda: MailboxLimits(expiry=14 * DAY), lambda who: who if who == ALICE else None)

    def gateway(self, me):
        suppliers = self

        class Gateway:
            def request(self, command, remote, payload, timeout=None):
                return defer.Deferred.fromCoroutine(suppliers.serve(me, remote, payload))

        return Gateway()

    async def serve(self, me, supplier, payload):
        if supplier in self.offline:
            raise Unavailable(f"{supplier} is offline")
        command, body = await self.boxes[supplier].handle(me, payload)
        if command == "Fail":
            raise PeerRefused(body.decode())
        return Response(body)

    def queued(self, supplier):
        return self.boxes[supplier].status()["messages"]


class OfflineDeliveryTests(unittest.TestCase):
    def setUp(self):
        self.clock = clock_at(1_000_000)
        self.net = Suppliers(self.clock)
        self.records = {ALICE: [S1, S2, ""]}
        self.taken: list[tuple[str, str]] = []
        self.history: set[tuple[str, str]] = set()
        self.stopping = False
        self.bob = self.delivery(BOB)
        self.alice = self.delivery(ALICE)

    def delivery(self, me, receipts=None):
        async def their_suppliers(user):
            if user not in self.records:
                raise Unavailable(f"no record of {user}")
            return self.records[user]

        async def my_suppliers():
            return self.records.get(me, [])

        async def take(entry):
            if self.stopping:
                raise Unavailable("stopping")
            key = (entry.sender, entry.message_id)
            self.taken.append(key)
            if key in self.history:
                return "duplicate"
            self.history.add(key)
            return "stored"

        return OfflineDelivery(MailboxClient(lambda: self.net.gateway(me)), their_suppliers, my_suppliers, take,
                               receipts)

    def result(self, d):
        results, failures = [], []
        d.addCallbacks(results.append, failures.append)
        if failures:
            failures[0].raiseException()
        self.assertEqual(len(results), 1, "the Deferred did not fire")
        return results[0]

    def queue(self, message_id, when, sender=BOB):
        delivery = self.bob if sender == BOB else self.delivery(sender)
        return self.result(defer.Deferred.fromCoroutine(delivery.queue(ALICE, message_id, sealed(sender, message_id,
                                                                                              when))))

    def test_queued_on_every_supplier_fetched_in_the_senders_order_once_and_removed(self):
        # S2 gets the second message first: the order is the sender's, not the suppliers' arrival order
        self.assertEqual(self.queue("m1", 100.0), [S1, S2])
        self.net.offline.add(S1)
        self.queue("m3", 300.0)
        self.net.offline.discard(S1)
        self.queue("m2", 200.0)
        self.result(defer.Deferred.fromCoroutine(self.bob.client.put(S1, ALICE, "m3", sealed(BOB, "m3", 300.0))))
        self.result(self.alice.check())
        self.assertEqual(self.taken, [(BOB, "m1"), (BOB, "m2"), (BOB, "m3")])
        self.assertEqual((self.net.queued(S1), self.net.queued(S2)), (0, 0))
        self.result(self.alice.check())  # nothing is left: nothing taken twice
        self.assertEqual(len(self.taken), 3)
        self.assertEqual(self.alice.counts["taken"], 3)
        self.assertEqual(self.bob.counts["queued"], 3)

    def test_a_supplier_offline_at_fetch_time_gives_its_messages_at_a_later_round(self):
        self.net.offline.add(S2)
        self.queue("m1", 100.0)  # on S1 only
        self.net.offline = {S1}
        self.queue("m2", 200.0)  # on S2 only
        self.net.offline = {S2}
        self.alice.start(self.clock, 300.0)
        self.addCleanup(self.alice.stop)
        self.assertEqual(self.taken, [(BOB, "m1")])
        self.assertEqual(self.alice.counts["fetch_failed"], 1)
        for _ in range(12):  # an hour of retries while S2 stays away
            self.clock.advance(300)
        self.assertEqual(self.taken, [(BOB, "m1")])
        self.net.offline = set()
        self.clock.advance(300)
        self.assertEqual(self.taken, [(BOB, "m1"), (BOB, "m2")])
        self.assertEqual(self.alice.counts["rounds"], 14)

    def test_a_queued_message_nobody_fetches_expires_after_the_expiry(self):
        self.queue("m1", 100.0)
        self.records[ALICE] = []  # Alice is away for good: no rounds fetch anything
        self.clock.advance(14 * DAY)
        for box in self.net.boxes.values():
            box.sweep()
        self.records[ALICE] = [S1, S2]
        self.result(self.alice.check())
        self.assertEqual(self.taken, [])
        self.assertEqual(self.net.boxes[S1].counts["expired"], 1)

    def test_messages_that_cannot_be_taken_now_stay_queued_and_a_later_round_takes_them_once(self):
        for i in range(3):
            self.queue(f"m{i}", 100.0 + i)
        real_take = self.alice.take

        async def take_one_then_stop(entry):
            result = await real_take(entry)
            self.stopping = True
            return result

        self.alice.take = take_one_then_stop
        self.result(self.alice.check())
        self.assertEqual(self.taken, [(BOB, "m0")])
        self.assertEqual((self.net.queued(S1), self.net.queued(S2)), (2, 2))
        # each failed alone (the round went on and finished): left queued, not counted as rejected
        self.assertEqual((self.alice.counts["deferred"], self.alice.counts["round_errors"]), (2, 0))
        self.assertEqual(self.alice.counts["rejected"], 0)
        self.stopping, self.alice.take = False, real_take
        self.result(self.alice.check())
        self.assertEqual(self.taken, [(BOB, "m0"), (BOB, "m1"), (BOB, "m2")])

    def test_a_sender_whose_identity_cannot_be_fetched_holds_back_only_its_own_message_for_days(self):
        # Carol's identity server is down: her message can be neither opened nor refused as forged
        self.queue("m1", 100.0, sender=CAROL)
        self.queue("m2", 200.0)
        unknown = {CAROL}
        real_take = self.alice.take

        async def take(entry):
            if entry.sender in unknown:
                return f"{LATER}cannot fetch the identity of {entry.sender} now"
            return await real_take(entry)

        self.alice.take = take
        self.alice.start(self.clock, 300.0)
        self.addCleanup(self.alice.stop)
        self.assertEqual(self.taken, [(BOB, "m2")])  # Bob's later message is not held up behind Carol's
        for _ in range(3 * 288):  # three days of rounds while her server stays down
            self.clock.advance(300)
        self.assertEqual(self.taken, [(BOB, "m2")])
        self.assertEqual((self.net.queued(S1), self.net.queued(S2)), (1, 1))  # never dropped as forged
        self.assertEqual(self.alice.counts["deferred"], 1 + 3 * 288)
        self.assertIn(CAROL, self.alice.last_error)
        unknown.clear()
        self.clock.advance(300)
        self.assertEqual(self.taken, [(BOB, "m2"), (CAROL, "m1")])
        self.assertEqual((self.net.queued(S1), self.net.queued(S2)), (0, 0))
        self.assertEqual(self.alice.counts["round_errors"], 0)

    def test_a_message_already_in_the_history_is_removed_without_being_stored_again(self):
        self.history.add((BOB, "m1"))  # it came directly, its Ack was lost, and the sender queued it too
        self.queue("m1", 100.0)
        self.result(self.alice.check())
        self.assertEqual(self.alice.counts["duplicates"], 1)
        self.assertEqual((self.net.queued(S1), self.net.queued(S2)), (0, 0))

    def test_queueing_needs_a_supplier_that_takes_it(self):
        with self.assertRaises(Unavailable) as caught:
            self.result(defer.Deferred.fromCoroutine(self.bob.queue(CAROL, "m1", sealed(BOB, "m1", 1.0, CAROL))))
        self.assertIn("cannot find the suppliers", str(caught.exception))
        self.records[CAROL] = [S1]  # S1 does not serve Carol: it refuses
        with self.assertRaises(Unavailable) as caught:
            self.result(defer.Deferred.fromCoroutine(self.bob.queue(CAROL, "m1", sealed(BOB, "m1", 1.0, CAROL))))
        self.assertIn("not a customer", str(caught.exception))
        self.net.offline = {S1, S2}
        with self.assertRaises(Unavailable):
            self.queue("m2", 2.0)
        self.assertEqual(self.bob.counts["queue_failed"], 3)


class ReceiptsTests(unittest.TestCase):
    def setUp(self):
        self.owed = [(BOB, f"m{i}", "") for i in range(RECEIPT_BATCH + 50)] + [(CAROL, "c1", ""),
                                                                                (CAROL, "c2", "quota: full")]
        self.sent: list[tuple[str, dict, str]] = []
        self.unreachable: set[str] = set()

        async def owed(limit):
            return self.owed[:limit]

        async def settled(sender, ids):
            self.owed = [(s, m, why) for s, m, why in self.owed if not (s == sender and m in ids)]

        async def send(user, data, message_id):
            if user in self.unreachable:
                raise Unavailable(f"{user} and its suppliers are out of reach")
            self.sent.append((user, data, message_id))

        self.receipts = Receipts(owed, settled, send)

    def flush(self):
        done = []
        self.receipts.flush().addCallback(done.append)
        self.assertEqual(len(done), 1)

    def test_receipts_are_batched_per_sender_and_owed_until_they_went_out(self):
        self.unreachable.add(BOB)
        self.flush()
        self.assertEqual(self.sent, [(CAROL, {"receipt_for": ["c1"], "refused": {"c2": "quota: full"}},
                                      receipt_id(["c1", "c2"]))])
        self.assertEqual(len(self.owed), RECEIPT_BATCH + 50)
        self.assertEqual(self.receipts.counts["failed"], 1)
        self.unreachable.clear()
        self.flush()
        batches = [data["receipt_for"] for user, data, _ in self.sent if user == BOB]
        self.assertEqual([len(b) for b in batches], [RECEIPT_BATCH, 50])
        self.assertEqual(self.sent[1][2], receipt_id(batches[0]))
        self.assertEqual(self.owed, [])
        self.assertEqual(self.receipts.counts["sent"], 3)


class QueuedExpiryTests(unittest.TestCase):
    """My queued messages that no receipt reaches become failed after ``queued-expiry``, never stay queued."""

    def setUp(self):
        self.clock = clock_at(1_000_000)
        path = os.path.join(self.mktemp() + "-db", "messages.sqlite")
        os.makedirs(os.path.dirname(path))
        self.history = MessageHistory(path)
        self.addCleanup(self.history.close)
        self.open = True
        self.expired: list[dict] = []
        self.expiry = QueuedExpiry(self.clock, in_line, lambda: self.history if self.open else None,
                                   lambda: 15 * DAY, self.expired.extend)
        self.addCleanup(self.expiry.stop)

        def queued(message_id, to=BOB):
            row, _ = self.history.add(message_id=message_id, conversation_id=to, direction=OUTGOING, sender=ALICE,
                                      recipient=to, message_type="private_message", data={"m": message_id},
                                      time=self.clock.seconds(), stored_time=self.clock.seconds(), state="sent")
            return self.history.set_state(row["seq"], "queued")

        self.queued = queued

    def states(self):
        return {r["message_id"]: r["state"] for r in self.history.history()[0]}

    def test_a_message_queued_on_a_recipient_who_never_comes_back_fails_after_the_expiry(self):
        self.queued("m1")
        self.clock.advance(DAY)
        self.queued("m2", to=CAROL)
        self.expiry.start(300.0)
        for _ in range(14 * 288 - 1):  # 14 days minus 5 minutes: m1 is not old enough yet
            self.clock.advance(300)
        self.assertEqual(self.states(), {"m1": "queued", "m2": "queued"})
        self.clock.advance(600)
        self.assertEqual(self.states(), {"m1": "failed", "m2": "queued"})
        [row] = self.expired
        self.assertIn("no delivery receipt came within 15 days", row["error"])
        for _ in range(288):
            self.clock.advance(300)
        self.assertEqual(self.states(), {"m1": "failed", "m2": "failed"})
        self.assertEqual([r["message_id"] for r in self.expired], ["m1", "m2"])

    def test_a_receipt_that_comes_after_the_expiry_still_marks_it_delivered(self):
        self.queued("m1")
        self.clock.advance(16 * DAY)
        self.expiry.sweep()
        self.assertEqual(self.states(), {"m1": "failed"})
        self.history.mark_delivered(BOB, ["m1"])
        self.assertEqual(self.states(), {"m1": "delivered"})

    def test_delivered_acked_and_incoming_rows_never_expire_and_a_closed_history_is_skipped(self):
        row = self.queued("m1")
        self.history.mark_delivered(BOB, ["m1"])
        self.assertEqual(self.history.get(row["seq"])["state"], "delivered")
        self.open = False
        self.clock.advance(30 * DAY)
        self.expiry.start(300.0)
        self.clock.advance(300)
        self.assertEqual(self.expired, [])
        self.open = True
        self.clock.advance(300)
        self.assertEqual((self.states(), self.expired), ({"m1": "delivered"}, []))
