"""Tests for bitnode.storage.rebuild_plan: a rebuilt block is byte-identical to the recorded one."""

from __future__ import annotations

import hashlib

from twisted.trial import unittest

from bitnode.storage import blockformat, erasure, segment_crypto
from bitnode.storage.rebuild_plan import SegmentPlan, regenerate_blocks


class RegenerateFormatTests(unittest.TestCase):
    """A rebuilt block must be byte-identical to what the catalog recorded, in either block format."""

    def _plan_and_payloads(self, pack, nonce_format=2):
        key = segment_crypto.new_version_key()
        plain = b"segment data " * 50
        if nonce_format == 2:
            nonce, encrypted = segment_crypto.encrypt_segment(key, "ver-1", 4, plain)
        else:
            nonce, encrypted = None, segment_crypto.encrypt_segment_v1(key, "ver-1", 4, plain)
        raw = erasure.encode(encrypted, 3, 5)
        extra = {"nonce": nonce} if nonce is not None else {}
        blocks = [pack("ver-1", 4, pos, 3, 5, len(plain), raw[pos], **extra) for pos in range(5)]
        plan = SegmentPlan("ver-1", 4, 3, 5, len(plain),
                           tuple((hashlib.sha256(b).hexdigest(), "s@id.example.net_8084") for b in blocks))
        return plan, {pos: raw[pos] for pos in (0, 2, 4)}, blocks, nonce

    def test_current_format_blocks_are_rebuilt_as_version_3_with_their_nonce(self):
        plan, payloads, blocks, nonce = self._plan_and_payloads(blockformat.pack)
        rebuilt = regenerate_blocks(payloads, plan, [1, 3], nonce)
        self.assertEqual(rebuilt, {1: blocks[1], 3: blocks[3]})
        self.assertEqual(blockformat.unpack(rebuilt[1])[0].format_version, 3)

    def test_version_2_blocks_are_rebuilt_as_version_2(self):
        plan, payloads, blocks, _ = self._plan_and_payloads(blockformat.pack, nonce_format=1)
        rebuilt = regenerate_blocks(payloads, plan, [1, 3])
        self.assertEqual(rebuilt, {1: blocks[1], 3: blocks[3]})
        self.assertEqual(blockformat.unpack(rebuilt[1])[0].format_version, 2)

    def test_version_1_blocks_are_rebuilt_as_version_1(self):
        plan, payloads, blocks, _ = self._plan_and_payloads(blockformat.pack_v1, nonce_format=1)
        rebuilt = regenerate_blocks(payloads, plan, [1, 3])
        self.assertEqual(rebuilt, {1: blocks[1], 3: blocks[3]})
        self.assertEqual(blockformat.unpack(rebuilt[3])[0].format_version, 1)
