"""CatalogKeeper on a Clock: when backups run, what an upload waits for, and a restore retried for hours."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.errors import Conflict, NotFound, Unavailable
from bitnode.storage.catalog_keeper import MAX_RETRY_FACTOR, QUIET_DELAY, CatalogKeeper

DELAY, RETRY = 10.0, 30.0


class FakeBackups:
    """CatalogBackup's surface: each backup/restore call waits for the test to answer it."""

    def __init__(self):
        self.backups: list[defer.Deferred] = []
        self.restores: list[defer.Deferred] = []
        self.cancelled = 0

    async def backup(self, force=False):
        d = defer.Deferred()
        self.backups.append(d)
        return await d

    async def restore(self, replace=False):
        d = defer.Deferred()
        self.restores.append(d)
        return await d

    def cancel(self):
        self.cancelled += 1


class FakeCatalog:
    def __init__(self):
        self.meta = {}

    def set_meta(self, name, value):
        self.meta[name] = value


class CatalogKeeperTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.backups = FakeBackups()
        self.catalog = FakeCatalog()
        self.uploading = False
        self.backed_up: list[dict] = []
        self.restored: list = []
        self.tracked: list[defer.Deferred] = []
        self.keeper = CatalogKeeper(self.clock, self.clock.callLater, defer.maybeDeferred, self.backups,
                                    self.catalog, lambda: DELAY, lambda: RETRY, lambda: self.uploading,
                                    self.track, self.backed_up.append, self.restored.append)

    def track(self, d, what):
        self.tracked.append(d)
        d.addErrback(lambda f: None)
        return d

    def answer_backup(self, serial=1, index=-1):
        self.backups.backups[index].callback({"serial": serial, "skipped": False, "suppliers": 3})

    def test_a_change_is_backed_up_at_once_when_no_upload_runs_and_after_the_delay_while_one_does(self):
        self.keeper.start(restore_pending=False, covered_at=None)
        self.clock.advance(QUIET_DELAY)
        self.assertEqual(len(self.backups.backups), 1)  # the start looks whether the last run left changes
        self.answer_backup()
        self.uploading = True
        self.keeper.changed()
        self.clock.advance(DELAY - 0.1)
        self.assertEqual(len(self.backups.backups), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.backups.backups), 2)
        self.answer_backup(2)
        self.assertTrue(self.keeper.current())
        self.assertEqual(self.catalog.meta["catalog-backup-covers"], repr(DELAY + QUIET_DELAY))

    def test_a_backup_asked_for_at_once_does_not_wait_for_the_delay(self):
        # (what a rebuild does when its retiring holders wait only for the backup: service_backups' backup_soon)
        self.keeper.start(restore_pending=False, covered_at=None)
        self.clock.advance(QUIET_DELAY)
        self.answer_backup()
        self.uploading = True
        self.keeper.changed()
        self.keeper.schedule(0.0)
        self.clock.advance(0)
        self.assertEqual(len(self.backups.backups), 2)
        self.answer_backup(2)
        self.assertTrue(self.keeper.current())
        self.clock.advance(DELAY)
        self.assertEqual(len(self.backups.backups), 2)  # the delayed one was replaced, not added

    def test_an_upload_waits_for_a_backup_taken_after_its_change(self):
        self.keeper.start(restore_pending=False, covered_at=None)
        self.clock.advance(QUIET_DELAY)
        self.keeper.changed()  # the upload's version completed while the first backup runs
        waited = self.keeper.backed_up()
        self.answer_backup(1)
        self.assertNoResult(waited)  # that backup was taken before the change
        self.clock.advance(QUIET_DELAY)
        self.answer_backup(2)
        self.assertEqual(self.successResultOf(waited)["serial"], 2)
        self.assertEqual(self.successResultOf(self.keeper.backed_up()), None)  # nothing new: at once

    def test_many_uploads_finishing_together_share_one_backup(self):
        self.keeper.start(restore_pending=True, covered_at=None)
        self.keeper.restore_pending = False
        self.uploading = True
        waits = []
        for _ in range(50):
            self.keeper.changed()
            waits.append(self.keeper.backed_up())
            self.clock.advance(0.01)
        self.uploading = False
        self.keeper.schedule()  # the last upload ended
        self.clock.advance(QUIET_DELAY)
        self.assertEqual(len(self.backups.backups), 1)
        self.answer_backup(7)
        self.assertEqual({self.successResultOf(w)["serial"] for w in waits}, {7})

    def test_a_failed_backup_is_told_to_the_waiters_and_tried_again_later_and_later(self):
        self.keeper.start(restore_pending=False, covered_at=None)
        self.clock.advance(QUIET_DELAY)
        self.answer_backup()
        self.keeper.changed()
        failures = []
        waited = self.keeper.backed_up(on_failure=failures.append)
        delays = []
        for attempt in range(1, 8):
            self.clock.advance(QUIET_DELAY if attempt == 1 else 0)
            before = self.clock.seconds()
            self.backups.backups[-1].errback(Unavailable("only 1 suppliers took its manifest, 2 needed"))
            self.assertEqual(len(failures), attempt)
            self.assertNoResult(waited)
            self.assertFalse(self.keeper.current())
            count = len(self.backups.backups)
            pending = [c for c in self.clock.getDelayedCalls()]
            self.assertEqual(len(pending), 1)
            delays.append(pending[0].getTime() - before)
            self.clock.advance(delays[-1])
            self.assertEqual(len(self.backups.backups), count + 1)
        self.assertEqual(delays, [RETRY * min(MAX_RETRY_FACTOR, 2 ** i) for i in range(7)])
        self.answer_backup(9)
        self.assertEqual(self.successResultOf(waited)["serial"], 9)
        self.assertEqual(self.keeper.status()["failures"], 0)

    def test_a_pending_restore_is_retried_for_hours_and_nothing_is_backed_up_meanwhile(self):
        self.keeper.start(restore_pending=True, covered_at=None)
        self.assertRaises(Unavailable, self.keeper.check_writable)
        self.keeper.changed()
        self.keeper.restore_now()
        attempts = 0
        while self.clock.seconds() < 6 * 3600:
            attempts += 1
            self.backups.restores[-1].errback(Unavailable("only 1 of 4 suppliers listed my files"))
            self.assertEqual(self.keeper.last_restore["attempts"], attempts)
            self.clock.advance(self.keeper.last_restore["retry_in"])
            self.assertEqual(len(self.backups.restores), attempts + 1)
        self.assertEqual(self.backups.backups, [])
        self.assertEqual(self.restored, [])
        # about every RETRY * MAX_RETRY_FACTOR seconds once it has kept failing
        self.assertLess(attempts, 6 * 3600 / (RETRY * MAX_RETRY_FACTOR) + 6)
        self.backups.restores[-1].callback({"serial": 4, "items": 12})
        self.assertEqual(self.restored, [{"serial": 4, "items": 12}])
        self.keeper.check_writable()
        self.clock.advance(QUIET_DELAY)
        self.assertEqual(len(self.backups.backups), 1)  # the change made meanwhile is backed up now

    def test_suppliers_that_prove_there_is_no_backup_or_files_in_the_catalog_end_the_restore(self):
        for error in (NotFound("no catalog backup on the suppliers"), Conflict("the catalog already has files")):
            self.restored.clear()
            self.keeper.start(restore_pending=True, covered_at=None)
            self.keeper.restore_now()
            self.backups.restores[-1].errback(error)
            self.assertEqual(self.restored, [None])
            self.assertFalse(self.keeper.restore_pending)
            self.assertEqual(self.keeper.last_restore["error"], str(error))

    def test_restore_now_tries_at_once_and_only_once_at_a_time(self):
        self.keeper.start(restore_pending=True, covered_at=None)
        self.keeper.restore_now()
        self.keeper.restore_now()
        self.assertEqual(len(self.backups.restores), 1)
        self.backups.restores[-1].errback(Unavailable("no supplier answered"))
        self.keeper.restore_now()  # files_sync: no need to wait for the timer
        self.assertEqual(len(self.backups.restores), 2)
        self.assertEqual(len(self.clock.getDelayedCalls()), 0)

    def test_stopping_tells_the_waiting_uploads(self):
        self.keeper.start(restore_pending=False, covered_at=None)
        waited = self.keeper.backed_up()
        self.keeper.stop()
        self.failureResultOf(waited, Unavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.backups.cancelled, 1)
