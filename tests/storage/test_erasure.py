"""Tests for bitnode.storage.erasure."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.storage import erasure


class ParameterTests(unittest.TestCase):
    def test_valid_bounds(self):
        erasure.check_params(1, 1)
        erasure.check_params(256, 256)

    def test_invalid_parameters(self):
        for k, n in ((0, 1), (3, 2), (1, 257), (-1, 5), (True, 2), (1.0, 2)):
            self.assertRaises(BadRequest, erasure.check_params, k, n)

    def test_default_k_is_half_rounded_up(self):
        self.assertEqual([erasure.default_k(n) for n in (1, 2, 3, 4, 5, 6)], [1, 1, 2, 2, 3, 3])


class RoundTripTests(unittest.TestCase):
    def test_lengths_round_trip_from_data_blocks(self):
        rnd = random.Random(1)
        for length in (0, 1, 2, 3, 4, 5, 100, 1001):
            data = rnd.randbytes(length)
            blocks = erasure.encode(data, 3, 5)
            self.assertEqual(len(blocks), 5)
            self.assertEqual({len(b) for b in blocks}, {erasure.block_size(length, 3)})
            self.assertEqual(erasure.decode(dict(enumerate(blocks)), 3, 5, length), data)

    def test_every_k_subset_of_5_decodes(self):
        data = random.Random(2).randbytes(1000)
        blocks = erasure.encode(data, 3, 5)
        for subset in itertools.combinations(range(5), 3):
            self.assertEqual(erasure.decode({i: blocks[i] for i in subset}, 3, 5, len(data)), data, subset)

    def test_every_subset_for_odd_shapes(self):
        for k, n in ((1, 1), (1, 4), (2, 2), (4, 7)):
            data = random.Random(k * 100 + n).randbytes(37)
            blocks = erasure.encode(data, k, n)
            for subset in itertools.combinations(range(n), k):
                self.assertEqual(erasure.decode({i: blocks[i] for i in subset}, k, n, len(data)), data)

    def test_empty_and_one_byte_from_parity_only(self):
        for data in (b"", b"x"):
            blocks = erasure.encode(data, 2, 4)
            self.assertEqual(erasure.decode({2: blocks[2], 3: blocks[3]}, 2, 4, len(data)), data)

    def test_data_blocks_are_systematic(self):
        blocks = erasure.encode(b"abcdefg", 3, 5)
        self.assertEqual(blocks[:3], [b"abc", b"def", b"g\x00\x00"])

    def test_large_n(self):
        data = random.Random(3).randbytes(5000)
        blocks = erasure.encode(data, 128, 256)
        chosen = {i: blocks[i] for i in range(128, 256)}
        self.assertEqual(erasure.decode(chosen, 128, 256, len(data)), data)


class FailureTests(unittest.TestCase):
    def test_fewer_than_k_blocks(self):
        blocks = erasure.encode(b"hello world", 3, 5)
        err = self.assertRaises(
            erasure.NotEnoughBlocks, erasure.decode, {0: blocks[0], 4: blocks[4]}, 3, 5, 11
        )
        self.assertIn("need 3 blocks, only 2", str(err))

    def test_wrong_block_size(self):
        blocks = erasure.encode(b"hello world", 3, 5)
        bad = {0: blocks[0], 1: blocks[1], 2: blocks[2] + b"x"}
        self.assertRaises(BadRequest, erasure.decode, bad, 3, 5, 11)

    def test_position_out_of_range(self):
        blocks = erasure.encode(b"hello", 1, 2)
        self.assertRaises(BadRequest, erasure.decode, {2: blocks[0]}, 1, 2, 5)

    def test_choose_blocks_prefers_data(self):
        self.assertEqual(erasure.choose_blocks({4, 0, 3, 2, 1}, 3), [0, 1, 2])
        self.assertEqual(erasure.choose_blocks([4, 3, 1], 2), [1, 3])


class ViewTests(unittest.TestCase):
    """encode_views: the same blocks as encode, without copying the data blocks."""

    def test_same_blocks_as_encode(self):
        for length in (0, 1, 2, 3, 10, 3 * 1000, 3 * 1000 + 2):
            data = bytes(i % 251 for i in range(length))
            self.assertEqual([bytes(b) for b in erasure.encode_views(data, 3, 5)], erasure.encode(data, 3, 5))

    def test_unpadded_data_blocks_are_views_into_the_data(self):
        data = bytes(range(12))
        blocks = erasure.encode_views(data, 3, 5)
        self.assertIsInstance(blocks[0], memoryview)
        self.assertIs(blocks[0].obj, data)
        self.assertEqual(len(blocks), 5)

    def test_decode_takes_views(self):
        data = bytes(range(200)) * 3 + b"x"
        blocks = erasure.encode(data, 3, 5)
        views = {pos: memoryview(blocks[pos]) for pos in (0, 2, 4)}
        self.assertEqual(erasure.decode(views, 3, 5, len(data)), data)
        self.assertEqual(erasure.decode({i: memoryview(blocks[i]) for i in range(3)}, 3, 5, len(data)), data)


class RegenerateTests(unittest.TestCase):
    """regenerate(): the missing blocks of a rebuild, byte for byte what encode() made, from any k blocks."""

    @settings(max_examples=200, deadline=None)
    @given(st.data())
    def test_any_k_blocks_give_back_any_wanted_blocks_as_encode_made_them(self, draw):
        n = draw.draw(st.integers(1, 12), "n")
        k = draw.draw(st.integers(1, n), "k")
        data = draw.draw(st.binary(max_size=3000), "data")
        blocks = erasure.encode(data, k, n)
        have = draw.draw(st.lists(st.sampled_from(range(n)), min_size=k, unique=True), "have")
        wanted = draw.draw(st.lists(st.sampled_from(range(n)), unique=True), "wanted")
        made = erasure.regenerate({pos: blocks[pos] for pos in have}, k, n, len(data), wanted)
        self.assertEqual(made, {pos: blocks[pos] for pos in wanted})

    def test_only_the_wanted_parity_is_made_and_data_blocks_are_not_joined(self):
        data = random.Random(7).randbytes(10_000)
        blocks = erasure.encode(data, 3, 5)
        made = erasure.regenerate({0: blocks[0], 1: blocks[1], 4: blocks[4]}, 3, 5, len(data), [2, 3])
        self.assertEqual(made, {2: blocks[2], 3: blocks[3]})
        self.assertEqual(erasure.regenerate(dict(enumerate(blocks)), 3, 5, len(data), []), {})

    def test_bad_input_is_refused_like_decode(self):
        blocks = erasure.encode(b"x" * 100, 3, 5)
        self.assertRaises(erasure.NotEnoughBlocks, erasure.regenerate, {0: blocks[0], 1: blocks[1]}, 3, 5, 100, [4])
        self.assertRaises(BadRequest, erasure.regenerate, dict(enumerate(blocks)), 3, 5, 100, [5])
        self.assertRaises(BadRequest, erasure.regenerate, {0: blocks[0][:-1], 1: blocks[1], 2: blocks[2]}, 3, 5,
                          100, [4])
