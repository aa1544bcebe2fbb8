"""version_report: the redundancy actually left (blocks held vs needed per segment), not only 'restorable'."""

from __future__ import annotations

from twisted.trial import unittest

from bitnode.storage.redundancy import version_report

VERSION = {"version_id": "F1-aa", "state": "complete", "size": 10, "segment_size": 4, "segments_total": 3,
           "segments_done": 3, "k": 2, "n": 4, "created": 1.0, "completed": 2.0,
           "suppliers": ["a", "b", "c", "d"]}


def rows(holders_by_position: list[str], segments: int = 3, missing: tuple = ()) -> list[tuple]:
    return [(seg, pos, "sha", "" if (seg, pos) in missing else holder)
            for seg in range(segments) for pos, holder in enumerate(holders_by_position)]


class RedundancyTests(unittest.TestCase):
    def test_two_of_four_after_dropping_two_positions_restores_with_nothing_to_spare(self):
        # positions c and d were given up (not under contract any more): 2 blocks left of 2 needed
        report = version_report(VERSION, rows(["a", "b", "c", "d"]), ["a", "b"], {"a", "b"}, set(), (1, 2))
        self.assertTrue(report["restorable"])
        self.assertEqual(report["redundancy"]["min_blocks_held"], 2)
        self.assertEqual(report["redundancy"]["spare_blocks"], 0)
        self.assertEqual(report["redundancy"]["segments_without_spare"], 3)
        self.assertEqual((report["redundancy"]["layout_current"], report["redundancy"]["target_layout"]),
                         (False, "1-of-2"))
        self.assertEqual(report["blocks_missing"], 6)

    def test_retiring_holders_still_count_until_released(self):
        report = version_report(VERSION, rows(["a", "b", "c", "d"]), ["a", "b"], {"a", "b", "c", "d"}, {"c", "d"},
                                (1, 2))
        self.assertEqual((report["redundancy"]["spare_blocks"], report["redundancy"]["blocks_on_retiring"]), (2, 6))

    def test_the_weakest_segment_decides(self):
        report = version_report(VERSION, rows(["a", "b", "c", "d"], missing={(1, 0), (1, 1), (2, 3)}),
                                ["a", "b", "c", "d"], {"a", "b", "c", "d"}, set(), (2, 4))
        self.assertEqual(report["redundancy"]["segments_by_blocks_held"], {"2": 1, "3": 1, "4": 1})
        self.assertEqual((report["weakest_segment_blocks"], report["redundancy"]["spare_blocks"]), (2, 0))
        self.assertTrue(report["restorable"])
        lost = version_report(VERSION, rows(["a", "b", "c", "d"], missing={(1, 0), (1, 1), (1, 2)}),
                              ["a", "b", "c", "d"], {"a", "b", "c", "d"}, set(), (2, 4))
        self.assertEqual((lost["restorable"], lost["redundancy"]["spare_blocks"]), (False, -1))

    def test_without_a_provider_any_recorded_holder_counts(self):
        report = version_report(VERSION, rows(["a", "b", "c", "d"]), [], None, set(), None)
        self.assertEqual((report["redundancy"]["spare_blocks"], report["redundancy"]["layout_current"]), (2, True))

    def test_a_version_with_segments_not_recorded_is_not_restorable(self):
        report = version_report(dict(VERSION, state="uploading"), rows(["a", "b", "c", "d"], segments=2),
                                ["a", "b", "c", "d"], {"a", "b", "c", "d"}, set(), (2, 4))
        self.assertEqual((report["restorable"], report["redundancy"]["min_blocks_held"]), (False, 0))
