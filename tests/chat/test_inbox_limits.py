"""Tests for bitnode.chat.inbox_limits: friends only, the rate per sender, the quotas (Clock time)."""

from __future__ import annotations

from twisted.trial import unittest

from bitnode.chat.inbox_limits import InboxLimits, InboxSettings, Usage
from tests.support import clock_at

FRIEND, STRANGER = "alice@id.net", "carol@id.net"
NONE = Usage(0, 0)


class InboxLimitsTests(unittest.TestCase):
    def setUp(self):
        self.clock = clock_at(1_000_000)
        self.limits = InboxLimits(self.clock, InboxSettings(sender_rate=1.0, sender_burst=3), lambda u: u == FRIEND)

    def test_friends_only_refuses_strangers_and_lets_friends_in(self):
        self.limits.configure(InboxSettings(friends_only=True))
        self.assertTrue(self.limits.admit(STRANGER).startswith("friends only"))
        self.assertEqual(self.limits.admit(FRIEND), "")
        self.assertEqual(self.limits.refused, {"friends_only": 1})

    def test_the_rate_refills_with_time_per_sender(self):
        self.assertEqual([self.limits.admit(STRANGER) for _ in range(3)], ["", "", ""])
        refusal = self.limits.admit(STRANGER)
        self.assertTrue(refusal.startswith("rate limited"), refusal)
        self.assertIn("retry in 1.0 s", refusal)
        self.assertEqual(self.limits.admit(FRIEND), "")  # another sender has its own bucket
        self.clock.advance(2.0)
        self.assertEqual([self.limits.admit(STRANGER) for _ in range(3)], ["", "", "rate limited: more than 1 "
                                                                                "messages per second; retry in 1.0 s"])
        # an hour of one message a second never hits the limit
        for _ in range(3600):
            self.clock.advance(1.0)
            self.assertEqual(self.limits.admit(FRIEND), "")

    def test_quotas_per_sender_and_for_all_strangers(self):
        self.limits.configure(InboxSettings(sender_max_messages=10, sender_max_bytes=1000,
                                            strangers_max_messages=50, strangers_max_bytes=5000))
        self.assertEqual(self.limits.over_quota(STRANGER, Usage(9, 900), Usage(9, 900), 100), "")
        self.assertIn("quota: you sent 10 messages", self.limits.over_quota(STRANGER, Usage(10, 0), NONE))
        self.assertIn("1000 bytes", self.limits.over_quota(STRANGER, Usage(1, 990), NONE, 11))
        self.assertIn("strangers", self.limits.over_quota(STRANGER, NONE, Usage(50, 0)))
        self.assertIn("strangers", self.limits.over_quota(STRANGER, NONE, Usage(1, 4990), 11))
        self.assertEqual(self.limits.over_quota(FRIEND, NONE, None, 11), "")  # a friend is not a stranger
        self.assertEqual(self.limits.refused, {"sender_quota": 2, "strangers_quota": 2})

    def test_zero_turns_a_limit_off(self):
        self.limits.configure(InboxSettings(sender_rate=0, sender_max_messages=0, sender_max_bytes=0,
                                            strangers_max_messages=0, strangers_max_bytes=0))
        self.assertEqual([self.limits.admit(STRANGER) for _ in range(100)], [""] * 100)
        self.assertEqual(self.limits.over_quota(STRANGER, Usage(10**6, 10**12), Usage(10**7, 10**13), 10**6), "")

    def test_the_quota_period_is_counted_back_from_now(self):
        self.limits.configure(InboxSettings(period=3600.0))
        self.assertEqual(self.limits.since(), self.clock.seconds() - 3600.0)
