"""Tests for bitnode.transport.stats."""

from __future__ import annotations

import json

from twisted.trial import unittest

from bitnode.transport.stats import DROP_REASONS, OTHER_PEERS, PacketStats


class PacketStatsTests(unittest.TestCase):
    def test_empty_stats_list_every_drop_reason(self) -> None:
        snapshot = PacketStats().as_dict()
        self.assertEqual(snapshot["in"], {"packets": 0, "bytes": 0, "by_command": {}, "by_peer": {}})
        self.assertEqual(set(snapshot["dropped"]), set(DROP_REASONS))
        self.assertEqual(snapshot["dropped_total"], 0)
        for reason in ("bad_signature", "wrong_recipient", "replay", "unknown_command", "oversize",
                       "malformed", "flood", "unknown_sender"):
            self.assertIn(reason, snapshot["dropped"])

    def test_counts_in_and_out_by_command_and_peer(self) -> None:
        stats = PacketStats()
        stats.record_in("Data", "alice", 100)
        stats.record_in("Data", "bob", 50)
        stats.record_in("Ack", "alice", 10)
        stats.record_out("Ack", "alice", 7)
        snapshot = stats.as_dict()
        self.assertEqual(snapshot["in"]["packets"], 3)
        self.assertEqual(snapshot["in"]["bytes"], 160)
        self.assertEqual(snapshot["in"]["by_command"], {"Ack": 1, "Data": 2})
        self.assertEqual(snapshot["in"]["by_peer"]["alice"], {"packets": 2, "bytes": 110})
        self.assertEqual(snapshot["out"]["by_peer"], {"alice": {"packets": 1, "bytes": 7}})
        self.assertEqual((stats.packets_in, stats.packets_out), (3, 1))

    def test_drops_are_counted_by_reason(self) -> None:
        stats = PacketStats()
        stats.record_drop("replay")
        stats.record_drop("replay")
        stats.record_drop("something_new")
        self.assertEqual(stats.dropped("replay"), 2)
        self.assertEqual(stats.dropped("flood"), 0)
        snapshot = stats.as_dict()
        self.assertEqual(snapshot["dropped"]["something_new"], 1)
        self.assertEqual(snapshot["dropped_total"], 3)

    def test_peer_table_is_capped(self) -> None:
        stats = PacketStats(max_peers=2)
        for peer in ("a", "b", "c", "d"):
            stats.record_in("Data", peer, 1)
        self.assertEqual(set(stats.as_dict()["in"]["by_peer"]), {"a", "b", OTHER_PEERS})
        self.assertEqual(stats.as_dict()["in"]["by_peer"][OTHER_PEERS]["packets"], 2)

    def test_as_dict_is_json_safe_and_a_copy(self) -> None:
        stats = PacketStats()
        stats.record_frame_in(12)
        stats.record_in("Data", "alice", 12)
        snapshot = stats.as_dict()
        self.assertEqual(json.loads(json.dumps(snapshot)), snapshot)
        snapshot["in"]["by_command"]["Data"] = 99
        self.assertEqual(stats.as_dict()["in"]["by_command"]["Data"], 1)
        self.assertEqual((snapshot["frames_in"], snapshot["frame_bytes_in"]), (1, 12))
