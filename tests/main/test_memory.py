"""Tests for bitnode.main.memory: the allocator tuning applied once per node process."""

from __future__ import annotations

import ctypes

from twisted.trial import unittest

from bitnode.main import memory


class FakeLibc:
    """Records mallopt calls; answers ``answer`` (glibc: 1 for success, 0 for a refused value)."""

    def __init__(self, answer: int = 1):
        self.calls: list[tuple[int, int]] = []
        self.answer = answer

    def mallopt(self, param, value) -> int:
        self.calls.append((param.value if isinstance(param, ctypes.c_int) else param,
                           value.value if isinstance(value, ctypes.c_int) else value))
        return self.answer


class TuneAllocatorTests(unittest.TestCase):
    """Which knobs are set, and when the tuning stands aside."""

    def test_sets_the_three_knobs(self):
        libc = FakeLibc()
        applied = memory.tune_allocator(mmap_threshold=8 * memory.MiB, trim_threshold=16 * memory.MiB,
                                        arena_max=3, libc=libc, environ={})
        self.assertEqual(applied, {"mmap_threshold": True, "trim_threshold": True, "arena_max": True})
        self.assertEqual(sorted(libc.calls), sorted([(memory.M_MMAP_THRESHOLD, 8 * memory.MiB),
                                                     (memory.M_TRIM_THRESHOLD, 16 * memory.MiB),
                                                     (memory.M_ARENA_MAX, 3)]))

    def test_a_knob_set_in_the_environment_is_left_alone(self):
        libc = FakeLibc()
        applied = memory.tune_allocator(libc=libc, environ={"MALLOC_ARENA_MAX": "4"})
        self.assertFalse(applied["arena_max"])
        self.assertTrue(applied["mmap_threshold"])
        self.assertNotIn(memory.M_ARENA_MAX, [param for param, _ in libc.calls])

    def test_a_refused_value_is_reported(self):
        applied = memory.tune_allocator(libc=FakeLibc(answer=0), environ={})
        self.assertEqual(set(applied.values()), {False})

    def test_without_mallopt_nothing_is_applied(self):
        applied = memory.tune_allocator(libc=object(), environ={})
        self.assertEqual(set(applied.values()), {False})
