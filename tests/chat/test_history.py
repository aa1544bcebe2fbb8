"""The sqlite message history: storing, duplicates, states, queries, pagination, reopening."""

from __future__ import annotations

import os
import sqlite3

from twisted.trial import unittest

from bitnode.chat.history import (
    ACKED,
    DELIVERED,
    FAILED,
    INCOMING,
    OUTGOING,
    QUEUED,
    RECEIVED,
    SENT,
    MessageHistory,
)
from bitnode.errors import BadRequest, NotFound

ME, BOB, CAROL = "alice@id.net", "bob@id.net", "carol@id.net"
GROUP = "group_1$alice@id.net"


def outgoing(history, message_id, to=BOB, at=1.0, message_type="private_message", data=None):
    return history.add(message_id=message_id, conversation_id=to, direction=OUTGOING, sender=ME, recipient=to,
                       message_type=message_type, data=data or {"message": message_id}, time=at,
                       stored_time=at + 0.5, state=SENT)


def incoming(history, message_id, frm=BOB, at=1.0, message_type="private_message", data=None):
    return history.add(message_id=message_id, conversation_id=frm, direction=INCOMING, sender=frm, recipient=ME,
                       message_type=message_type, data=data or {"message": message_id}, time=at,
                       stored_time=at + 0.5, state=RECEIVED)


class HistoryTests(unittest.TestCase):
    def setUp(self):
        self.path = os.path.join(self.mktemp() + "-db", "messages.sqlite")
        os.makedirs(os.path.dirname(self.path))
        self.history = MessageHistory(self.path)
        self.addCleanup(self.history.close)

    def test_a_stored_message_comes_back_whole(self):
        row, created = outgoing(self.history, "m1", data={"message": "héllo", "n": [1, None]})
        self.assertTrue(created)
        self.assertEqual(row, {
            "seq": 1, "message_id": "m1", "conversation_id": BOB, "message_type": "private_message",
            "direction": OUTGOING, "sender": ME, "recipient": BOB, "data": {"message": "héllo", "n": [1, None]},
            "time": 1.0, "stored_time": 1.5, "state": SENT, "error": "",
        })
        self.assertEqual(self.history.get(1), row)
        self.assertEqual(self.history.last_seq(), 1)

    def test_the_same_incoming_message_is_stored_once(self):
        first, created = incoming(self.history, "m1")
        again, created_again = incoming(self.history, "m1", data={"message": "changed"})
        self.assertTrue(created)
        self.assertFalse(created_again)
        self.assertEqual(again, first)
        # the same id from someone else, or in the other direction, is another message
        self.assertTrue(incoming(self.history, "m1", frm=CAROL)[1])
        self.assertTrue(outgoing(self.history, "m1")[1])
        self.assertEqual(self.history.last_seq(), 3)

    def test_delivery_states(self):
        row, _ = outgoing(self.history, "m1")
        self.assertEqual(self.history.set_state(row["seq"], ACKED)["state"], ACKED)
        failed = self.history.set_state(row["seq"], FAILED, "offline")
        self.assertEqual((failed["state"], failed["error"]), (FAILED, "offline"))
        self.assertRaises(BadRequest, self.history.set_state, row["seq"], "lost")
        self.assertRaises(NotFound, self.history.set_state, 99, ACKED)
        self.assertRaises(NotFound, self.history.get, 99)

    def test_unfinished_sends_become_failed(self):
        sending, _ = outgoing(self.history, "m1")
        acked, _ = outgoing(self.history, "m2")
        self.history.set_state(acked["seq"], ACKED)
        incoming(self.history, "m3")
        self.assertEqual(self.history.fail_unfinished("node stopped"), 1)
        self.assertEqual([(r["message_id"], r["state"], r["error"]) for r in self.history.history()[0]],
                         [("m3", RECEIVED, ""), ("m2", ACKED, ""), ("m1", FAILED, "node stopped")])
        self.assertEqual(self.history.fail_unfinished("again"), 0)

    def test_bad_direction_or_state_is_refused(self):
        self.assertRaises(BadRequest, self.history.add, message_id="m", conversation_id=BOB, direction="sideways",
                          sender=ME, recipient=BOB, message_type="private_message", data={}, time=0,
                          stored_time=0, state=SENT)
        self.assertRaises(BadRequest, self.history.add, message_id="m", conversation_id=BOB, direction=OUTGOING,
                          sender=ME, recipient=BOB, message_type="private_message", data={}, time=0,
                          stored_time=0, state="lost")

    def test_history_filters_newest_first_with_totals(self):
        outgoing(self.history, "a1", at=1)
        incoming(self.history, "a2", at=2)
        outgoing(self.history, "c1", to=CAROL, at=3)
        incoming(self.history, "a3", at=4)
        outgoing(self.history, "g1", to=GROUP, at=5, message_type="group_message")
        rows, total = self.history.history(conversation_id=BOB)
        self.assertEqual(([r["message_id"] for r in rows], total), (["a3", "a2", "a1"], 3))
        rows, total = self.history.history(sender=BOB)
        self.assertEqual(([r["message_id"] for r in rows], total), (["a3", "a2"], 2))
        rows, total = self.history.history(sender=ME, recipient=BOB)
        self.assertEqual([r["message_id"] for r in rows], ["a1"])
        rows, total = self.history.history(message_type="group_message")
        self.assertEqual([r["message_id"] for r in rows], ["g1"])
        rows, total = self.history.history()
        self.assertEqual(total, 5)
        rows, total = self.history.history(conversation_id="nobody@id.net")
        self.assertEqual((rows, total), ([], 0))

    def test_history_pages(self):
        for i in range(7):
            outgoing(self.history, f"m{i}", at=i)
        pages = [self.history.history(conversation_id=BOB, offset=offset, limit=3) for offset in (0, 3, 6, 9)]
        self.assertEqual([[r["message_id"] for r in rows] for rows, _ in pages],
                         [["m6", "m5", "m4"], ["m3", "m2", "m1"], ["m0"], []])
        self.assertEqual({total for _, total in pages}, {7})
        for offset, limit in ((-1, 10), (0, 0), (0, 1001), (True, 10), (0, "5")):
            self.assertRaises(BadRequest, self.history.history, offset=offset, limit=limit)

    def test_conversations_most_recent_first(self):
        outgoing(self.history, "a1", at=1)
        incoming(self.history, "c1", frm=CAROL, at=2)
        incoming(self.history, "a2", at=3)
        outgoing(self.history, "g1", to=GROUP, at=4, message_type="group_message")
        rows, total = self.history.conversations()
        self.assertEqual(total, 3)
        self.assertEqual([r["conversation_id"] for r in rows], [GROUP, BOB, CAROL])
        bob = rows[1]
        self.assertEqual((bob["messages"], bob["incoming"], bob["outgoing"]), (2, 1, 1))
        self.assertEqual((bob["first_time"], bob["last_time"], bob["message_type"]), (1.0, 3.0, "private_message"))
        self.assertEqual(bob["last_message"]["message_id"], "a2")
        rows, total = self.history.conversations(["private_message"])
        self.assertEqual(([r["conversation_id"] for r in rows], total), ([BOB, CAROL], 2))
        rows, total = self.history.conversations([], offset=1, limit=1)
        self.assertEqual(([r["conversation_id"] for r in rows], total), ([BOB], 3))
        self.assertEqual(self.history.conversations(["group_message"], offset=5), ([], 1))

    def test_since_reads_the_stream_after_a_cursor(self):
        outgoing(self.history, "o1")
        incoming(self.history, "i1")
        incoming(self.history, "g1", frm=GROUP, message_type="group_message")
        rows, top = self.history.since(0, [INCOMING])
        self.assertEqual(([r["message_id"] for r in rows], top), (["i1", "g1"], 3))
        rows, top = self.history.since(0, [INCOMING], ["private_message"])
        self.assertEqual([r["message_id"] for r in rows], ["i1"])
        rows, top = self.history.since(1, [INCOMING, OUTGOING], [], limit=1)
        self.assertEqual([r["seq"] for r in rows], [2])
        self.assertEqual(self.history.since(3), ([], 3))

    def test_reopened_history_keeps_everything_and_uses_wal(self):
        outgoing(self.history, "m1")
        self.history.close()
        again = MessageHistory(self.path)
        self.addCleanup(again.close)
        self.assertEqual(again.get(1)["message_id"], "m1")
        self.assertEqual(outgoing(again, "m2")[0]["seq"], 2)
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone()[0], "wal")

    def test_a_history_of_another_format_is_refused(self):
        self.history.close()
        db = sqlite3.connect(self.path)
        db.execute("UPDATE meta SET value = '99' WHERE name = 'format'")
        db.commit()
        db.close()
        err = self.assertRaises(BadRequest, MessageHistory, self.path)
        self.assertIn("format 99", str(err))


class IncomingUsageTests(unittest.TestCase):
    """What the inbox quotas count: private messages received since a moment, by sender or by strangers."""

    def setUp(self):
        self.history = MessageHistory(":memory:")
        self.addCleanup(self.history.close)

    def test_usage_counts_incoming_private_messages_since_a_moment(self):
        incoming(self.history, "b1", BOB, at=10.0, data={"message": "é"})  # {"message":"é"} is 16 bytes in UTF-8
        incoming(self.history, "b2", BOB, at=100.0, data={"message": "xx"})
        incoming(self.history, "c1", CAROL, at=100.0, data={"message": "xx"})
        incoming(self.history, "g1", BOB, at=100.0, message_type="group_message")  # groups have their own limits
        outgoing(self.history, "o1", BOB, at=100.0)
        self.assertEqual(self.history.incoming_usage(0.0, BOB), (2, 16 + 16))
        self.assertEqual(self.history.incoming_usage(50.0, BOB), (1, 16))
        self.assertEqual(self.history.incoming_usage(50.0, None), (2, 32))
        self.assertEqual(self.history.incoming_usage(50.0, None, [BOB]), (1, 16))
        self.assertEqual(self.history.incoming_usage(0.0, None, [BOB, CAROL, "x"] * 2000), (0, 0))
        self.assertEqual(self.history.incoming_usage(500.0, BOB), (0, 0))

    def test_a_stored_incoming_message_is_known_by_sender_and_id(self):
        incoming(self.history, "b1", BOB)
        self.assertTrue(self.history.has_incoming(BOB, "b1"))
        self.assertFalse(self.history.has_incoming(CAROL, "b1"))
        outgoing(self.history, "o1", BOB)
        self.assertFalse(self.history.has_incoming(ME, "o1"))

    def test_a_receipt_marks_my_queued_messages_to_its_sender_delivered_once(self):
        for message_id in ("m1", "m2"):
            row, _ = outgoing(self.history, message_id)
            self.history.set_state(row["seq"], QUEUED)
        outgoing(self.history, "m3", to=CAROL)
        changed = self.history.mark_delivered(BOB, ["m1", "m2", "m3", "unknown"])
        self.assertEqual([(r["message_id"], r["state"]) for r in changed], [("m1", DELIVERED), ("m2", DELIVERED)])
        self.assertEqual(self.history.mark_delivered(BOB, ["m1"]), [])  # a receipt that came twice
        self.assertEqual(self.history.history(recipient=CAROL)[0][0]["state"], SENT)  # only Bob's receipt counts

    def test_receipts_are_owed_with_the_queued_message_until_sent(self):
        self.history.add(message_id="q1", conversation_id=BOB, direction=INCOMING, sender=BOB, recipient=ME,
                         message_type="private_message", data={}, time=1.0, stored_time=2.0, state=RECEIVED,
                         receipt_owed=True)
        incoming(self.history, "direct")  # a message that came directly owes nothing
        self.assertEqual(self.history.receipts_owed(), [(BOB, "q1", "")])
        self.history.receipts_sent(BOB, ["q1"])
        self.assertEqual(self.history.receipts_owed(), [])
        # queued again (the sender did not learn): owed again, stored once
        _, created = self.history.add(message_id="q1", conversation_id=BOB, direction=INCOMING, sender=BOB,
                                      recipient=ME, message_type="private_message", data={}, time=1.0,
                                      stored_time=3.0, state=RECEIVED, receipt_owed=True)
        self.assertFalse(created)
        self.assertEqual(self.history.receipts_owed(), [(BOB, "q1", "")])
        # a queued message refused (a limit) owes a receipt that says why
        self.history.owe_refusal(CAROL, "q2", "quota: full", 4.0)
        self.assertEqual(self.history.receipts_owed(), [(BOB, "q1", ""), (CAROL, "q2", "quota: full")])
        self.history.receipts_sent(CAROL, ["q2"])
        self.assertEqual(self.history.receipts_owed(), [(BOB, "q1", "")])

    def test_a_refusal_in_a_receipt_fails_my_queued_message_with_the_reason(self):
        row, _ = outgoing(self.history, "m1")
        self.history.set_state(row["seq"], QUEUED)
        row2, _ = outgoing(self.history, "m2")
        self.history.set_state(row2["seq"], DELIVERED)
        [failed] = self.history.mark_refused(BOB, {"m1": "friends only", "m2": "late", "m9": "unknown"})
        self.assertEqual((failed["message_id"], failed["state"], failed["error"]),
                         ("m1", FAILED, "refused by the recipient: friends only"))
        self.assertEqual(self.history.get(row2["seq"])["state"], DELIVERED)  # a delivered one stays delivered
