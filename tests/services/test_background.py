"""Tests for bitnode.services.background: background Deferreds are kept, their failures logged, stop waits."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.errors import NotFound
from bitnode.services.background import BackgroundWork


class FakeLog:
    def __init__(self):
        self.lines = []

    def info(self, fmt, **kw):
        self.lines.append(("info", kw["what"], kw["error"]))

    def failure(self, fmt, failure, **kw):
        self.lines.append(("failure", kw["what"], failure.type))


class BackgroundWorkTests(unittest.TestCase):
    def test_work_is_kept_until_it_fires_and_waited_for(self):
        work = BackgroundWork(FakeLog())
        d = defer.Deferred()
        self.assertIs(work.track(d, "sleeping"), d)
        self.assertEqual(len(work), 1)
        waited = work.wait()
        self.assertNoResult(waited)
        d.callback("done")
        self.successResultOf(waited)
        self.assertEqual(len(work), 0)

    def test_expected_failures_are_one_line_others_keep_their_traceback(self):
        log = FakeLog()
        work = BackgroundWork(log, (NotFound, defer.CancelledError))
        work.track(defer.fail(NotFound("gone")), "finding")
        work.track(defer.fail(defer.CancelledError()), "cancelled")
        work.track(defer.fail(ValueError("bug")), "computing", quiet=True)
        work.track(defer.fail(ValueError("bug")), "computing")
        self.assertEqual(log.lines, [("info", "finding", "gone"), ("info", "cancelled", ""),
                                     ("info", "computing", "bug"), ("failure", "computing", ValueError)])
        self.assertEqual(len(work), 0)
        self.successResultOf(work.wait())
