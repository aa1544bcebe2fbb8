"""Small helpers shared by the tests of every package."""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.trial import unittest


def clock_at(seconds: float) -> Clock:
    """A :class:`Clock` that reads ``seconds`` (tests start it at a realistic date, not at 0)."""
    clock = Clock()
    clock.advance(seconds)
    return clock


def temp_path(case: unittest.TestCase, name: str) -> str:
    """The path ``name`` in a fresh folder under the test's temp dir (the folder exists, the file does not)."""
    folder = case.mktemp()
    os.makedirs(folder)
    return os.path.join(folder, name)
