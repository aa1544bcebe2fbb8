"""The catalog's backup on the suppliers, kept current; and its restore on a new machine, retried until it is back.

:class:`CatalogKeeper` (one per node, owned by service_backups) drives
:class:`~bitnode.storage.catalog_backup.CatalogBackup`:

**Backing up.** Every change of what the backup holds (catalog rows, keys,
backup parts) is counted (:meth:`changed`). A backup runs after
``delay()`` seconds — at once (:data:`QUIET_DELAY`) when no upload is
running: a running folder upload gathers its changes into one backup, and
nothing more is coming once the last upload ended. One backup runs at a time;
a change during a backup makes another one follow. A backup that failed
(fewer than k suppliers took it) is tried again after ``retry()`` seconds,
doubling up to :data:`MAX_RETRY_FACTOR` times that, and at once when the
suppliers change.

**Acknowledged means safe.** :meth:`backed_up` gives a Deferred that fires
once a backup taken *after* the call (or an unchanged catalog's skipped one)
is stored on at least k suppliers; an upload reports done only then. A
failed attempt is told to ``on_failure`` (the upload answers its waiters with
why) and the wait goes on.

**Restoring.** An empty catalog that never had a backup serial may have a
backup waiting on the suppliers (an identity recovered on a new machine):
the restore is *pending* until the newest backup is imported, or the
suppliers prove there is none (a conclusive NotFound: enough of them listed
their files, see :meth:`CatalogBackup.newest_serials`), or the catalog got
files. While it is pending no backup runs (it would not hold what is on the
suppliers) and catalog changes are refused (:meth:`check_writable`). It is
tried when suppliers change, on :meth:`restore_now` (files_sync), and again
after ``retry()`` seconds (doubling, as for backups) while it fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bitnode.errors import BitnodeError, Conflict, NotFound, Unavailable

#: Seconds before backing up a changed catalog when no upload is running.
QUIET_DELAY = 0.5
#: A failing backup or restore waits at most this many times ``retry()`` between attempts.
MAX_RETRY_FACTOR = 16
COVERED_META = "catalog-backup-covers"


@dataclass(eq=False, repr=False)
class CatalogKeeper:
    """Schedules the catalog backups, tracks which changes they cover, and retries the restore (see above).

    Neighbours: ``clock``, ``call_later``, ``run_in_thread``, ``backups``
    (the :class:`CatalogBackup`), ``catalog`` (for the meta table),
    ``delay()`` and ``retry()`` (seconds, from settings),
    ``uploads_running()``, ``track(d, what)`` (background work the service
    waits for when stopping), ``on_backed_up(outcome)`` and
    ``on_restored(outcome or None)`` (a restore imported a backup, or the
    pending one ended with nothing to restore).
    """

    log = Logger()

    clock: Any
    call_later: Callable
    run_in_thread: Callable
    backups: Any
    catalog: Any
    delay: Callable[[], float]
    retry: Callable[[], float]
    uploads_running: Callable[[], bool]
    track: Callable[[defer.Deferred, str], Any]
    on_backed_up: Callable[[dict], Any]
    on_restored: Callable[[dict | None], Any]
    dirty: bool = field(init=False, default=False)
    changes: int = field(init=False, default=0)
    covered: int = field(init=False, default=0)
    #: clock time of the newest change the last good backup holds (versions completed by then are in it)
    covered_at: float | None = field(init=False, default=None)
    last_backup: dict = field(init=False, default_factory=dict)
    last_backup_error: str = field(init=False, default="")
    backup_failures: int = field(init=False, default=0)
    last_restore: dict = field(init=False, default_factory=dict)
    restore_pending: bool = field(init=False, default=False)
    restore_attempts: int = field(init=False, default=0)
    _restoring: defer.Deferred | None = field(init=False, default=None)
    _lock: defer.DeferredLock = field(init=False, default_factory=defer.DeferredLock)
    _call: Any = field(init=False, default=None)
    _restore_call: Any = field(init=False, default=None)
    _waiters: list[tuple[int, defer.Deferred, Callable[[BaseException], Any] | None]] = field(
        init=False, default_factory=list)
    _stopped: bool = field(init=False, default=False)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self, restore_pending: bool, covered_at: float | None) -> None:
        """Begin; with ``restore_pending`` nothing is backed up until the restore is over."""
        self.restore_pending = restore_pending
        self.covered_at = covered_at
        if not restore_pending:
            # The last run may have stopped (or crashed) before its changes were backed up, or backed
            # up before keys were carried; an unchanged catalog and key set is skipped by the backup.
            self.changed()

    def stop(self) -> None:
        """No more backups or restores; whoever waits for a backup hears that it will not come."""
        self._stopped = True
        self.backups.cancel()
        for call in (self._call, self._restore_call):
            if call is not None and call.active():
                call.cancel()
        self._call = self._restore_call = None
        waiters, self._waiters = self._waiters, []
        for _, d, _ in waiters:
            d.errback(Unavailable("service_backups stopped before the catalog backup was on the suppliers"))

    def status(self) -> dict:
        """Figures for service_info and file_info."""
        return {"current": self.current(), "pending": self.pending(), "serial": self.last_backup.get("serial"),
                "suppliers": self.last_backup.get("suppliers"), "error": self.last_backup_error,
                "failures": self.backup_failures, "covered_at": self.covered_at,
                "waiting_uploads": len(self._waiters), "restore_pending": self.restore_pending,
                "restoring": self._restoring is not None, "restore_attempts": self.restore_attempts}

    # --- backing up -----------------------------------------------------------------------------------

    def changed(self) -> None:
        """Something the backup holds changed: back it up soon."""
        self.changes += 1
        self.dirty = True
        self.schedule()

    def pending(self) -> bool:
        """Changes not on the suppliers yet (waiting for the delay, running, or failed and retried)."""
        return self.dirty or self._call is not None or self._lock.locked

    def current(self) -> bool:
        """The last backup succeeded and nothing changed since: a new machine would restore all I know."""
        return bool(self.last_backup) and not self.last_backup_error and not self.pending()

    def backed_up(self, on_failure: Callable[[BaseException], Any] | None = None) -> defer.Deferred:
        """Fires once the changes made so far are in a backup stored on at least k suppliers."""
        if self._stopped:
            return defer.fail(Unavailable("service_backups is stopped"))
        mark = self.changes
        if self.covered >= mark and not self.pending():
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append((mark, d, on_failure))
        self.schedule()
        return d

    def schedule(self, delay: float | None = None) -> None:
        """Back up after the delay (at once when no upload runs); a later change never postpones it."""
        if not self.dirty or self.restore_pending or self._stopped:
            return
        if delay is None:
            delay = self.delay()
            if not self.uploads_running():
                delay = min(delay, QUIET_DELAY)
        call = self._call
        if call is not None and call.active() and call.getTime() <= self.clock.seconds() + delay:
            return
        self._cancel_call()
        self._call = self.call_later(delay, self._scheduled)

    def _scheduled(self) -> None:
        self._call = None
        self.track(self.backup(), "backing up the catalog")

    def backup(self, force: bool = False) -> defer.Deferred:
        """Back the catalog up now (one backup at a time); fires with the outcome."""
        if self._stopped:
            return defer.fail(Unavailable("service_backups stopped"))
        if self.restore_pending:
            return defer.fail(Unavailable("the catalog is being restored from the suppliers: no backup before it is back"))

        def run() -> defer.Deferred:
            if self._stopped:
                return defer.fail(Unavailable("service_backups stopped"))
            mark, started = self.changes, self.clock.seconds()
            self.dirty = False
            d = defer.Deferred.fromCoroutine(self.backups.backup(force))
            d.addCallbacks(self._backed_up, self._failed, callbackArgs=(mark, started))
            return d

        # Waiters hear of it once the lock is let go: then current() is true for them.
        return self._lock.run(run).addCallback(self._tell_waiters)

    def _backed_up(self, outcome: dict, mark: int, started: float) -> dict:
        self.last_backup, self.last_backup_error, self.backup_failures = outcome, "", 0
        self.covered = max(self.covered, mark)
        self.covered_at = max(self.covered_at or 0.0, started)
        self.track(self.run_in_thread(self.catalog.set_meta, COVERED_META, repr(self.covered_at)),
                   "noting the catalog backup")
        return outcome

    def _tell_waiters(self, outcome: dict) -> dict:
        for waiter in [w for w in self._waiters if w[0] <= self.covered]:
            self._waiters.remove(waiter)
            waiter[1].callback(outcome)
        self.on_backed_up(outcome)
        return outcome

    def _failed(self, failure: Any) -> Any:
        self.dirty = True
        self.backup_failures += 1
        self.last_backup_error = failure.getErrorMessage()
        self.log.info("catalog backup failed (attempt {n}): {error}", n=self.backup_failures,
                      error=self.last_backup_error)
        for _, _, on_failure in list(self._waiters):
            if on_failure is not None:
                on_failure(failure.value)
        if not self._stopped:
            self.schedule(self._retry_delay(self.backup_failures))
        return failure

    # --- restoring ---------------------------------------------------------------------------------------

    def check_writable(self) -> None:
        """Unavailable while the catalog is being restored (a change now would be lost or block the restore)."""
        if self.restore_pending:
            why = self.last_restore.get("error")
            raise Unavailable("the catalog is being restored from your suppliers; files can be added once it "
                              "is back (files_sync tries again now)" + (f": {why}" if why else ""))

    def restore_now(self) -> None:
        """Try the pending restore at once (suppliers changed, or files_sync)."""
        if not self.restore_pending or self._restoring is not None or self._stopped:
            return
        if self._restore_call is not None and self._restore_call.active():
            self._restore_call.cancel()
        self._restore_call = None
        self.restore_attempts += 1
        d = self._restoring = self.restore()
        d.addCallbacks(self._restore_over, self._restore_failed)
        self.track(d, "restoring the catalog")

    def restore(self, replace: bool = False) -> defer.Deferred:
        """Import the newest backup found on the suppliers now; fires with what was restored."""
        if self._stopped:
            return defer.fail(Unavailable("service_backups stopped"))
        d = defer.Deferred.fromCoroutine(self.backups.restore(replace))
        return d.addCallback(self._restored)

    def _restored(self, outcome: dict) -> dict:
        self.last_restore = outcome
        self.covered_at = self.clock.seconds()  # what was imported is what the suppliers hold
        self._restore_ended(outcome)
        return outcome

    def _restore_ended(self, outcome: dict | None) -> None:
        self.restore_pending = False
        self.on_restored(outcome)
        self.schedule()

    def _restore_over(self, outcome: dict | None) -> None:
        self._restoring = None

    def _restore_failed(self, failure: Any) -> None:
        self._restoring = None
        if failure.check(NotFound, Conflict):
            # The suppliers showed there is no backup, or the catalog has files: nothing to restore.
            self.last_restore = {"error": failure.getErrorMessage(), "attempts": self.restore_attempts}
            if self.restore_pending:
                self._restore_ended(None)
            return
        delay = self._retry_delay(self.restore_attempts)
        self.last_restore = {"error": failure.getErrorMessage(), "retry": True, "retry_in": delay,
                             "attempts": self.restore_attempts}
        if not failure.check(BitnodeError, defer.CancelledError):
            self.log.failure("restoring the catalog failed", failure)
        if not self._stopped:
            self._restore_call = self.call_later(delay, self.restore_now)

    # --- helpers -------------------------------------------------------------------------------------------

    def _retry_delay(self, failures: int) -> float:
        return self.retry() * min(MAX_RETRY_FACTOR, 2 ** max(0, failures - 1))

    def _cancel_call(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
