"""The supplier's mailbox: private messages queued for offline customers (Clock-driven, in-memory sqlite)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.supplier import mailbox_wire as mw
from bitnode.supplier.mailbox import DAY, NOTIFY_INTERVAL, Mailbox, MailboxLimits, MailboxStore
from tests.support import clock_at

ALICE, BOB, EVE = "alice@id_1", "bob@id_1", "eve@id_1"
ALICE_MOVED = "alice@id_2"


def in_line(fn, *args, **kwargs):
    """A run_in_thread that runs at once (the tests need no threads)."""
    return defer.maybeDeferred(fn, *args, **kwargs)


class MailboxTests(unittest.TestCase):
    def setUp(self):
        self.clock = clock_at(1_000_000)
        self.store = MailboxStore(":memory:")
        self.addCleanup(lambda: None if self.store._file.closed else self.store.close())
        self.customers = {ALICE}
        self.settings = MailboxLimits(sender_max_messages=3, sender_max_bytes=1000, recipient_max_messages=5,
                                      recipient_max_bytes=10_000, max_message_bytes=600, expiry=3 * DAY)
        self.notices = []
        self.mailbox = Mailbox(self.store, in_line, self.clock.seconds, lambda: self.settings,
                               self.account, self.notices.append)

    def account(self, who):
        # Alice's identity moved once: her space is still kept under her first name
        who = ALICE if who == ALICE_MOVED else who
        return who if who in self.customers else None

    def answer(self, creator, payload):
        result = []
        self.mailbox.handle(creator, payload).addCallback(result.append)
        [(command, body)] = result
        return command, body

    def put(self, sender, message_id, body=b"sealed", recipient=ALICE):
        return self.answer(sender, mw.encode_put(recipient, message_id, body))

    def fetch(self, who=ALICE, after=0):
        command, body = self.answer(who, mw.encode_fetch(after))
        self.assertEqual(command, "Ack", body)
        return mw.decode_page(body)

    def test_messages_come_out_in_arrival_order_and_once_removed_are_gone(self):
        for i in range(3):
            command, body = self.put(BOB, f"m{i}", b"x" * (i + 1))
            self.assertEqual(command, "Ack", body)
            self.assertEqual(json.loads(body)["duplicate"], False)
        page, more = self.fetch()
        self.assertFalse(more)
        self.assertEqual([(e.sender, e.message_id, e.sealed) for e in page],
                         [(BOB, "m0", b"x"), (BOB, "m1", b"xx"), (BOB, "m2", b"xxx")])
        command, body = self.answer(ALICE, mw.encode_remove([e.seq for e in page[:2]]))
        self.assertEqual((command, json.loads(body)), ("Ack", {"removed": 2}))
        page, _ = self.fetch()
        self.assertEqual([e.message_id for e in page], ["m2"])
        self.assertEqual(self.fetch(after=page[0].seq), ([], False))
        self.assertEqual(self.mailbox.status()["removed"], 2)

    def test_the_recipient_is_notified_of_new_messages_at_most_every_few_seconds(self):
        for i in range(3):
            self.put(BOB, f"m{i}")
        self.put(BOB, "m0")  # a repeat is nothing new
        self.assertEqual(self.notices, [ALICE])
        self.clock.advance(NOTIFY_INTERVAL)
        self.put(BOB, "m0")
        self.assertEqual(self.notices, [ALICE])
        self.put("carol@id_1", "c1")
        self.assertEqual(self.notices, [ALICE, ALICE])
        self.assertEqual(self.mailbox.counts["notified"], 2)
        self.assertTrue(mw.is_notify(mw.encode_notify()))
        self.assertFalse(mw.is_notify(mw.encode_fetch(0)))

    def test_sweeps_run_every_hour_and_stop_with_close(self):
        self.put(BOB, "m0")
        self.mailbox.start_sweeps(self.clock)
        self.clock.advance(3 * DAY)
        self.assertEqual(self.mailbox.counts["expired"], 1)
        closed = []
        self.mailbox.close().addCallback(closed.append)
        self.assertEqual(len(closed), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_customer_whose_identity_moved_gets_messages_sent_to_either_name(self):
        self.put(BOB, "m0", recipient=ALICE_MOVED)
        self.put(EVE, "m1")
        self.assertEqual([e.message_id for e in self.fetch(ALICE_MOVED)[0]], ["m0", "m1"])
        self.assertEqual(self.notices, [ALICE_MOVED])  # told under the name the sender knows (once in 5 s)

    def test_a_message_handed_over_again_is_kept_once(self):
        self.put(BOB, "m0")
        command, body = self.put(BOB, "m0")
        self.assertEqual((command, json.loads(body)["duplicate"]), ("Ack", True))
        self.assertEqual(len(self.fetch()[0]), 1)
        self.assertEqual((self.mailbox.counts["queued"], self.mailbox.counts["duplicates"]), (1, 1))

    def test_messages_expire_after_the_expiry_and_the_sweep_removes_them(self):
        self.put(BOB, "old")
        self.clock.advance(2 * DAY)
        self.put(BOB, "new")
        self.clock.advance(1 * DAY)  # "old" is three days old now
        self.assertEqual([e.message_id for e in self.fetch()[0]], ["new"])
        swept = []
        self.mailbox.sweep().addCallback(swept.append)
        self.assertEqual(swept, [1])
        self.clock.advance(2 * DAY)
        self.mailbox.sweep()
        self.assertEqual(self.fetch(), ([], False))
        self.assertEqual(self.mailbox.status()["expired"], 2)
        self.assertEqual(self.mailbox.status()["messages"], 0)

    def test_only_customers_get_messages_queued_and_only_they_fetch_them(self):
        command, body = self.put(BOB, "m0", recipient=EVE)
        self.assertEqual(command, "Fail")
        self.assertIn(b"not a customer", body)
        self.put(BOB, "m1")
        command, body = self.answer(EVE, mw.encode_fetch(0))
        self.assertEqual(command, "Fail")
        command, _ = self.answer(EVE, mw.encode_remove([1]))
        self.assertEqual(command, "Fail")
        self.assertEqual(len(self.fetch()[0]), 1)
        self.assertEqual(self.mailbox.refused["not_customer"], 3)

    def test_a_stranger_cannot_fill_the_disk(self):
        # per sender: 3 messages
        for i in range(3):
            self.assertEqual(self.put(EVE, f"e{i}")[0], "Ack")
        command, body = self.put(EVE, "e3")
        self.assertEqual(command, "Fail")
        self.assertIn(b"from you wait", body)
        # per sender bytes: 1000
        self.assertEqual(self.put(BOB, "b0", b"x" * 500)[0], "Ack")
        self.assertEqual(self.put(BOB, "b1", b"x" * 501)[0], "Fail")
        # one message at most 600 bytes
        self.assertEqual(self.put("carol@id_1", "c0", b"x" * 601)[0], "Fail")
        # per recipient: 5 messages from everyone
        self.assertEqual(self.put("dave@id_1", "d0")[0], "Ack")
        command, body = self.put("frank@id_1", "f0")
        self.assertEqual(command, "Fail")
        self.assertIn(b"is full", body)
        self.assertEqual(dict(self.mailbox.refused),
                         {"sender_quota": 2, "too_large": 1, "recipient_quota": 1})
        # expired messages no longer count
        self.clock.advance(3 * DAY)
        self.assertEqual(self.put("frank@id_1", "f0")[0], "Ack")

    def test_a_page_stops_at_its_byte_budget_and_says_more_follow(self):
        self.settings = MailboxLimits(max_message_bytes=0, sender_max_messages=0, sender_max_bytes=0,
                                      recipient_max_messages=0, recipient_max_bytes=0)
        for i in range(4):
            self.put(BOB, f"m{i}", b"x" * 100)
        page, more = self.store.fetch(ALICE, 0, self.clock.seconds(), max_bytes=250)
        self.assertEqual(([e.message_id for e in page], more), (["m0", "m1"], True))
        page, more = self.store.fetch(ALICE, page[-1].seq, self.clock.seconds(), max_messages=2)
        self.assertEqual(([e.message_id for e in page], more), (["m2", "m3"], False))

    def test_a_customer_whose_contract_ended_loses_its_queue(self):
        self.put(BOB, "m0")
        self.mailbox.drop(ALICE)
        self.assertEqual(self.fetch(), ([], False))
        self.assertEqual(self.mailbox.counts["dropped"], 1)

    def test_garbage_is_refused_as_a_bad_request(self):
        for payload in (b"", b"\x01", b"\x02\x01", b"\x01\x09", b"\x01\x02\x00"):
            command, _ = self.answer(ALICE, payload)
            self.assertEqual(command, "Fail")
        self.assertEqual(self.mailbox.refused["bad_request"], 5)


class MailboxWireTests(unittest.TestCase):
    def test_round_trips(self):
        self.assertEqual(mw.decode_put(mw.encode_put(ALICE, "m-1", b"\x00sealed")), (ALICE, "m-1", b"\x00sealed"))
        self.assertEqual(mw.decode_fetch(mw.encode_fetch(42)), 42)
        self.assertEqual(mw.decode_remove(mw.encode_remove([1, 2, 3])), [1, 2, 3])
        entries = [mw.QueuedMessage(7, BOB, "m-1", 12.5, b"abc"), mw.QueuedMessage(9, EVE, "x", 13.0, b"\x00")]
        self.assertEqual(mw.decode_page(mw.encode_page(entries, True)), (entries, True))

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_random_bytes_raise_only_bad_request(self, payload):
        for decode in (mw.op_of, mw.decode_put, mw.decode_fetch, mw.decode_remove, mw.decode_page):
            try:
                decode(payload)
            except BadRequest:
                pass

    @settings(max_examples=300, deadline=None)
    @given(st.integers(min_value=0, max_value=400), st.binary(min_size=1, max_size=8), st.booleans())
    def test_mutated_pages_and_puts_raise_only_bad_request(self, where, junk, cut):
        page = mw.encode_page([mw.QueuedMessage(7, BOB, "m-1", 12.5, b"abc" * 20)], False)
        put = mw.encode_put(ALICE, "m-1", b"sealed" * 10)
        for blob, decode in ((page, mw.decode_page), (put, mw.decode_put)):
            at = where % len(blob)
            mutated = blob[:at] if cut else blob[:at] + junk + blob[at + len(junk):]
            try:
                decode(mutated)
            except BadRequest:
                pass
