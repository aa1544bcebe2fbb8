"""The inbox's outcomes for messages it cannot open: a forgery is rejected, an unknown-for-now sender is not."""

from __future__ import annotations

import os
from types import SimpleNamespace

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.chat.history import MessageHistory
from bitnode.chat.inbox import LATER, REJECTED, Inbox, SenderUnknownForNow
from bitnode.chat.inbox_limits import InboxLimits, InboxSettings
from bitnode.chat.message_crypto import MessageRejected
from bitnode.errors import Unavailable
from bitnode.transport.commands import Command

BOB = "bob@id.net"


class InboxOutcomeTests(unittest.TestCase):
    def setUp(self):
        path = os.path.join(self.mktemp() + "-db", "messages.sqlite")
        os.makedirs(os.path.dirname(path))
        self.history = MessageHistory(path)
        self.addCleanup(self.history.close)
        self.counts = {"received": 0, "duplicates": 0, "rejected": 0, "deferred": 0}
        self.replies: list[tuple[Command, str]] = []
        self.opening = None
        clock = Clock()
        self.inbox = Inbox(lambda f, *a, **k: defer.maybeDeferred(f, *a, **k),
                           InboxLimits(clock, InboxSettings(), lambda who: False), lambda: self.history,
                           self.open_message, lambda: [], lambda row: None, self.counts, clock.seconds)

    def open_message(self, packet):
        return defer.fail(self.opening)

    def receive(self, queued):
        async def reply(packet, command, text):
            self.replies.append((command, text))

        packet = SimpleNamespace(creator_id=BOB, payload=b"not a sealed message", packet_id="m1")
        outcomes = []
        defer.Deferred.fromCoroutine(self.inbox.receive(packet, reply, queued=queued)).addBoth(outcomes.append)
        [outcome] = outcomes
        return outcome

    def test_a_sender_whose_identity_cannot_be_fetched_now_is_left_for_later_not_rejected(self):
        self.opening = SenderUnknownForNow("cannot fetch the identity of bob@id.net now: server down")
        self.assertIsInstance(self.opening, Unavailable)
        for queued in (True, False):
            outcome = self.receive(queued)
            self.assertTrue(outcome.startswith(LATER), outcome)
            self.assertIn("server down", outcome)
        self.assertEqual(self.counts, {"received": 0, "duplicates": 0, "rejected": 0, "deferred": 2})
        self.assertEqual([c for c, _ in self.replies], [Command.FAIL, Command.FAIL])  # a direct sender is told

    def test_a_message_that_does_not_verify_is_rejected_for_good(self):
        self.opening = MessageRejected("bad signature")
        outcome = self.receive(True)
        self.assertEqual(outcome, f"{REJECTED}bad signature")
        self.assertEqual((self.counts["rejected"], self.counts["deferred"]), (1, 0))
