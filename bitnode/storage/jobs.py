"""Upload jobs (and what every job shares): small automats around the Uploader.

An :class:`UploadJob` turns one local file into one new catalog version::

    NEW --start--> PREPARING        stat the file, new version id and key (wrapped
                                    with the owner's key), begin_version + source
    NEW --resume--> PENDING         a version left "uploading" by a stop or crash
    NEW --abandon--> FAILED         such a version whose file changed or is gone
    PREPARING --prepared--> PENDING wait for an upload slot (TransferManager)
    PENDING --run--> UPLOADING      Uploader from catalog.resume_point(); every
                                    acknowledged segment is recorded before it counts
    UPLOADING --uploaded--> SECURING finish_version, prune old versions; the slot is
                                    free for the next upload
    SECURING --secured--> DONE      a catalog backup naming the version is on at
                                    least k suppliers (many uploads share one); a
                                    failed backup attempt answers the waiters with
                                    why, and the job waits for the next attempt
    UPLOADING --stalled--> PAUSED   too few suppliers answered: the version stays
                                    "uploading"; retried on suppliers-changed or
                                    every minute, from the last recorded segment
    UPLOADING --changed--> PREPARING the local file changed: a new version
    UPLOADING --failed--> FAILED    anything else (the version is abandoned)
    cancel: PENDING/PAUSED -> CANCELLED, UPLOADING -> CANCELLING -> CANCELLED
    pause (node stopping): UPLOADING -> PAUSING -> PAUSED, resumed after restart

Download jobs are in :mod:`bitnode.storage.download_job`.

The jobs reach the node only through a :class:`StorageContext` (see
:mod:`bitnode.storage.job_context`: clock, thread runner, catalog, supplier
placement, key wrapping), so tests drive them with a ``Clock``, synchronous fakes and the in-memory grid. Catalog calls are
synchronous sqlite work and always go through ``run_in_thread``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from automats import Automat
from bitnode.errors import BadRequest, BitnodeError, InsufficientStorage, Unavailable
from bitnode.storage import segment_crypto
from bitnode.storage.catalog import COMPLETE, split_remote_path
from bitnode.storage.job_context import (
    StorageContext,
    abandon_version,
    delete_versions,
    new_version_id,
    stat_file,
)
from bitnode.storage.ports import Progress, TransferCancelled
from bitnode.storage.uploader import FileChanged, Uploader, UploadFailed, segment_count

DONE, FAILED_STATE, CANCELLED, PAUSED = "DONE", "FAILED", "CANCELLED", "PAUSED"
#: An uploaded version waits for the catalog backup that names it (nothing of the job runs meanwhile).
SECURING = "SECURING"
FINAL_STATES = frozenset({DONE, FAILED_STATE, CANCELLED})
MAX_NEW_VERSIONS = 3  # a file that keeps changing while we read it is given up after this many versions


class _Job(Automat):
    """What upload and download jobs share: identity, progress figures, waiters, the end."""

    kind = ""
    log = Logger()

    def __init__(self, ctx: StorageContext, manager: Any, remote_path: str, local_path: str):
        super().__init__(ctx.clock, registry=ctx.registry)
        self.ctx = ctx
        self.manager = manager
        self.key_id, self.path = split_remote_path(remote_path)
        self.remote_path = f"{self.key_id}:{self.path}"
        self.local_path = local_path
        self.version_id: str | None = None
        self.created = ctx.clock.seconds()
        self.started: float | None = None
        self.finished: float | None = None
        self.bytes_total = 0
        self.progress: Progress | None = None
        self.error: BaseException | None = None
        self.result: dict = {}
        self._waiters: list[defer.Deferred] = []
        self._halted = False
        #: Resumed at start-up: a stop or a crash interrupted it in an earlier run.
        self.after_restart = False

    # --- what the API shows -----------------------------------------------------------

    def info(self) -> dict:
        """The job as the API lists it: state, paths, bytes done/total, speed (B/s) and ETA (s)."""
        p = self.progress
        done = p.bytes_done if p is not None else 0
        total = p.bytes_total if p is not None else self.bytes_total
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "remote_path": self.remote_path,
            "local_path": self.local_path,
            "version_id": self.version_id,
            "bytes_done": done,
            "bytes_total": total,
            "progress": round(1.0 if total == 0 and self.state == DONE else (done / total if total else 0.0), 4),
            "segments_done": p.segments_done if p is not None else 0,
            "segments_total": p.segments_total if p is not None else 0,
            "speed": p.speed if p is not None else None,
            "eta": p.eta if p is not None else None,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "error": str(self.error) if self.error is not None else None,
            "result": dict(self.result),
            "after_restart": self.after_restart,
        }

    def wait(self) -> defer.Deferred:
        """Fires with the job once DONE; fails with its error once FAILED, CANCELLED or PAUSED."""
        if self.state in FINAL_STATES or self.state == PAUSED:
            return self._outcome()
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def _outcome(self) -> defer.Deferred:
        if self.state == DONE:
            return defer.succeed(self)
        return defer.fail(self.user_error())

    def user_error(self) -> BaseException:
        """The typed error the API answers for a job that did not finish."""
        if self.state == CANCELLED:
            return TransferCancelled(f"{self.kind} of {self.remote_path} was cancelled")
        err = self.error
        if isinstance(err, BitnodeError):
            return err
        if err is None:
            return Unavailable(f"{self.kind} of {self.remote_path} is paused; it goes on when the node runs again")
        return Unavailable(f"{self.kind} of {self.remote_path} failed: {err}")

    # --- actions both kinds use ---------------------------------------------------------

    def note_progress(self, progress: Progress) -> None:
        """Keep the latest figures from the pipeline."""
        self.progress = progress

    def remember_error(self, error: BaseException) -> None:
        """Keep why the job stopped."""
        self.error = error

    def ask_for_slot(self, *_: Any) -> None:
        """Queue for a free slot; the manager fires ``run``."""
        self.manager.enqueue(self)

    def release_slot(self, *_: Any) -> None:
        """Give the slot (or the queue place) back."""
        self.manager.release(self)

    def settle_waiters(self, *_: Any) -> None:
        """Answer everyone waiting for this job (PAUSED answers with its error)."""
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._outcome().chainDeferred(d)

    def finish(self, *_: Any) -> None:
        """The end: answer waiters, hand the job to the history, leave the registry."""
        self.finished = self.ctx.clock.seconds()
        self.manager.release(self)
        self.manager.finished(self)
        self.destroy()
        # Last: whoever waited sees the job already gone from the live lists.
        self.settle_waiters()

    def _check_halted(self) -> None:
        """A stop asked for before the pipeline object existed still stops the job."""
        if self._halted:
            raise TransferCancelled(f"{self.kind} of {self.remote_path} stopped")

    def _spawn(self, coroutine) -> None:
        d = defer.Deferred.fromCoroutine(coroutine)

        def crashed(failure):
            if not failure.check(defer.CancelledError):
                self.log.failure("{id}: job step crashed", failure, id=self.id)

        d.addErrback(crashed)
        self.manager.track(d)


class UploadJob(_Job):
    """Uploads one local file as a new version of ``remote_path`` (or resumes one)."""

    name = "upload_job"
    kind = "upload"
    initial = "NEW"
    timers = {"timer-1min": (60.0, {PAUSED})}
    transitions = [
        # state         event                guard               next           actions
        ("NEW",         "start",             None,               "PREPARING",   ["prepare_version"]),
        ("NEW",         "resume",            None,               "PENDING",     ["ask_for_slot"]),
        # Interrupted in an earlier run, and its file changed since: the history says so.
        ("NEW",         "abandon",           None,               FAILED_STATE,  ["remember_error", "abandon_version",
                                                                                 "finish"]),
        ("PREPARING",   "prepared",          "stop_requested",   "*",           ["handle_stop_request"]),
        ("PREPARING",   "prepared",          None,               "PENDING",     ["ask_for_slot"]),
        ("PREPARING",   "failed",            None,               FAILED_STATE,  ["remember_error", "finish"]),
        ("PREPARING",   "cancel",            None,               "*",           ["request_cancel"]),
        ("PREPARING",   "pause",             None,               "*",           ["request_pause"]),
        ("PREPARING",   "paused",            None,               PAUSED,        ["settle_waiters"]),
        ("PREPARING",   "cancelled",         None,               CANCELLED,     ["abandon_version", "finish"]),
        ("PENDING",     "run",               None,               "UPLOADING",   ["run_uploader"]),
        ("PENDING",     "cancel",            None,               CANCELLED,     ["abandon_version", "finish"]),
        ("PENDING",     "pause",             None,               PAUSED,        ["release_slot", "settle_waiters"]),
        ("UPLOADING",   "progress",          None,               "*",           ["note_progress"]),
        ("UPLOADING",   "uploaded",          None,               SECURING,      ["release_slot", "await_catalog_backup"]),
        ("UPLOADING",   "stalled",           None,               PAUSED,        ["remember_error", "release_slot",
                                                                                 "settle_waiters"]),
        ("UPLOADING",   "changed",           "may_make_version", "PREPARING",   ["release_slot", "abandon_version",
                                                                                 "prepare_version"]),
        ("UPLOADING",   "changed",           None,               FAILED_STATE,  ["remember_error", "abandon_version",
                                                                                 "finish"]),
        ("UPLOADING",   "failed",            None,               FAILED_STATE,  ["remember_error", "abandon_version",
                                                                                 "finish"]),
        ("UPLOADING",   "cancel",            None,               "CANCELLING",  ["stop_uploader"]),
        ("UPLOADING",   "pause",             None,               "PAUSING",     ["stop_uploader"]),
        ("PAUSING",     "stopped",           None,               PAUSED,        ["release_slot", "settle_waiters"]),
        ("PAUSING",     "stalled",           None,               PAUSED,        ["release_slot", "settle_waiters"]),
        ("PAUSING",     "uploaded",          None,               SECURING,      ["release_slot", "await_catalog_backup"]),
        ("PAUSING",     "changed",           None,               FAILED_STATE,  ["remember_error", "abandon_version",
                                                                                 "finish"]),
        ("PAUSING",     "failed",            None,               FAILED_STATE,  ["remember_error", "abandon_version",
                                                                                 "finish"]),
        ("PAUSING",     "cancel",            None,               "CANCELLING",  []),
        ("CANCELLING",  "uploaded",          None,               SECURING,      ["release_slot", "await_catalog_backup"]),
        ("CANCELLING",  "stopped",           None,               CANCELLED,     ["abandon_version", "finish"]),
        ("CANCELLING",  "stalled",           None,               CANCELLED,     ["abandon_version", "finish"]),
        ("CANCELLING",  "changed",           None,               CANCELLED,     ["abandon_version", "finish"]),
        ("CANCELLING",  "failed",            None,               CANCELLED,     ["abandon_version", "finish"]),
        (PAUSED,        "resume",            None,               "PENDING",     ["clear_error", "ask_for_slot"]),
        (PAUSED,        "suppliers-changed", None,               "PENDING",     ["clear_error", "ask_for_slot"]),
        (PAUSED,        "timer-1min",        None,               "PENDING",     ["clear_error", "ask_for_slot"]),
        (PAUSED,        "cancel",            None,               CANCELLED,     ["abandon_version", "finish"]),
        (SECURING,      "secured",           None,               DONE,          ["clear_error", "finish"]),
        (SECURING,      "not-secured",       None,               "*",           ["remember_error", "settle_waiters"]),
        # The version is complete: a cancel or pause while its catalog backup is awaited changes nothing.
        (SECURING,      "cancel",            None,               "*",           []),
        # Harmless where they mean nothing: late progress, repeated requests, news for a busy job.
        ("*",           "progress",          None,               "*",           []),
        ("*",           "pause",             None,               "*",           []),
        ("*",           "resume",            None,               "*",           []),
        ("*",           "cancel",            None,               "*",           []),
        ("*",           "suppliers-changed", None,               "*",           []),
    ]

    def __init__(self, ctx: StorageContext, manager: Any, remote_path: str, local_path: str,
                 version_id: str | None = None):
        super().__init__(ctx, manager, remote_path, local_path)
        if not self.path:
            raise BadRequest("upload to a file path, not to the root folder")
        self.version_id = version_id
        self.key: bytes | None = None
        self.uploader: Uploader | None = None
        self.peak_in_flight = 0
        self.versions_made = 0
        self._stop_request = ""

    # --- guards ---------------------------------------------------------------------------

    def stop_requested(self, *_: Any) -> bool:
        """A cancel or pause arrived while the version was being prepared."""
        return bool(self._stop_request)

    def may_make_version(self, *_: Any) -> bool:
        """A file that changed while read gets a new version, a few times at most."""
        return self.versions_made < MAX_NEW_VERSIONS

    # --- actions ----------------------------------------------------------------------------

    def request_cancel(self, *_: Any) -> None:
        """Cancel once preparing is over."""
        self._stop_request = "cancel"

    def request_pause(self, *_: Any) -> None:
        """Pause once preparing is over (unless a cancel came first)."""
        self._stop_request = self._stop_request or "pause"

    def handle_stop_request(self, *_: Any) -> None:
        """Preparing finished after a cancel or pause was asked for."""
        self.event("cancelled" if self._stop_request == "cancel" else "paused")

    def clear_error(self, *_: Any) -> None:
        """A paused job tries again: the old reason no longer holds."""
        self.error = None

    def prepare_version(self, *_: Any) -> None:
        """Create the new version in the catalog (off the reactor), then fire ``prepared``."""
        self._spawn(self._prepare())

    async def _prepare(self) -> None:
        ctx = self.ctx
        try:
            local = await ctx.run_in_thread(stat_file, self.local_path)
            size = local.size
            placement = ctx.placement()
            n = len(placement.positions)
            k = ctx.data_blocks(n)
            segment_size = ctx.segment_size()
            key = segment_crypto.new_version_key()
            wrapped = await ctx.run_in_thread(ctx.wrap_key, self.key_id, key)
            now = ctx.clock.seconds()
            version_id = ctx.version_tag(self.key_id) + new_version_id(now)
            await ctx.run_in_thread(
                ctx.catalog.begin_version, self.key_id, self.path, version_id, size, segment_size,
                segment_count(size, segment_size), k, n, wrapped, list(placement.positions), now,
                (self.local_path, size, local.mtime), local.mode, local.mtime_ns)
        except Exception as err:  # noqa: BLE001 - any failure to prepare fails the job
            self.event("failed", err)
            return
        self.version_id, self.key, self.bytes_total = version_id, key, size
        self.progress = None
        self.versions_made += 1
        self.ctx.on_catalog_changed()
        self.event("prepared")

    def run_uploader(self, *_: Any) -> None:
        """Upload from the first segment not recorded yet."""
        self.started = self.started or self.ctx.clock.seconds()
        self._halted = False
        self._spawn(self._upload())

    async def _upload(self) -> None:
        ctx = self.ctx
        catalog = ctx.catalog
        try:
            version = await ctx.run_in_thread(catalog.version, self.version_id)
            source = await ctx.run_in_thread(catalog.source, self.version_id)
            if source is not None:
                now = await ctx.run_in_thread(stat_file, self.local_path)
                if now.signature != (source["size"], source["mtime"]):
                    raise FileChanged(f"{self.local_path} changed since the upload began")
            if self.key is None:
                self.key = await ctx.run_in_thread(ctx.unwrap_key, self.key_id, version["wrapped_key"])
            self.bytes_total = version["size"]
            resume = await ctx.run_in_thread(catalog.resume_point, self.version_id)
            ids, servers = ctx.placement().for_n(version["n"])
            uploader = Uploader(ctx.run_in_thread, ctx.clock, servers, version["k"], version["n"],
                                segment_size=version["segment_size"], max_in_flight=ctx.segments_in_flight(),
                                store_timeout=ctx.store_timeout())
            self._check_halted()
            self.uploader = uploader
            if resume and self.progress is None:
                done = min(version["size"], resume * version["segment_size"])
                self.progress = Progress(done, version["size"], resume, version["segments_total"], 0.0, None, None)

            def record(meta):
                return ctx.run_in_thread(catalog.record_segment, self.version_id, meta, ids)

            result = await uploader.upload(self.local_path, self.version_id, self.key, ctx.customer_id,
                                           resume_from=resume, on_progress=lambda p: self.event("progress", p),
                                           on_segment=record)
            self.result = {"size": result.file_size, "segments": result.segments_total,
                           "resumed_from_segment": result.resume_from, "degraded_segments": len(result.degraded)}
            self.progress = Progress(result.file_size, result.file_size, result.segments_total,
                                     result.segments_total, self.progress.elapsed if self.progress else 0.0,
                                     self.progress.speed if self.progress else None, 0.0)
            await self._complete()
        except TransferCancelled:
            self.event("stopped")
            return
        except FileChanged as err:
            self.event("changed", err)
            return
        except UploadFailed as err:
            self.event("stalled", _explain_upload_failure(err))
            return
        except Unavailable as err:
            self.event("stalled", err)
            return
        except Exception as err:  # noqa: BLE001 - reported as the job's failure
            self.event("failed", err)
            return
        finally:
            if self.uploader is not None:
                self.peak_in_flight = max(self.peak_in_flight, self.uploader.peak_in_flight)
            self.uploader = None
        ctx.on_catalog_changed()
        if result.degraded:
            ctx.on_blocks_damaged()
        self.event("uploaded")

    async def _complete(self) -> None:
        """Every segment is stored: the version is complete, older ones beyond those kept go."""
        ctx = self.ctx
        await ctx.run_in_thread(ctx.catalog.finish_version, self.version_id, COMPLETE, ctx.clock.seconds())
        await self._prune()

    async def _prune(self) -> None:
        """Keep the newest ``keep_versions`` complete versions; delete the others' blocks."""
        ctx = self.ctx
        dropped = await ctx.run_in_thread(ctx.catalog.prune_versions, self.key_id, self.path, ctx.keep_versions())
        if dropped:
            outcome = await delete_versions(ctx, dropped)
            self.result["pruned_versions"] = dropped
            if outcome["failed"]:
                self.log.warn("{id}: old versions not deleted everywhere: {failed}", id=self.id,
                              failed=outcome["failed"])

    def await_catalog_backup(self, *_: Any) -> None:
        """Wait until a catalog backup naming this version is on k suppliers; ``secured`` then."""
        self.error = None

        def not_secured(error: BaseException) -> None:
            if not self.destroyed:
                self.event("not-secured", Unavailable(
                    f"{self.remote_path} is stored on the suppliers, but the catalog backup that lists it is "
                    f"not on enough of them yet (tried again): {error}"))

        d = self.ctx.catalog_backed_up(on_failure=not_secured)
        d.addCallback(lambda _: None if self.destroyed else self.event("secured"))
        d.addErrback(lambda failure: None)  # stopped: the next start backs the catalog up

    def stop_uploader(self, *_: Any) -> None:
        """Cancel the running uploader; it answers with ``stopped`` (or finishes first)."""
        self._halted = True
        if self.uploader is not None:
            self.uploader.cancel()

    def abandon_version(self, *_: Any) -> None:
        """This version will never complete: mark it failed, delete its blocks, then forget it."""
        version_id, self.version_id = self.version_id, None
        if version_id is not None:
            self._spawn(abandon_version(self.ctx, version_id))


def _explain_upload_failure(err: UploadFailed) -> BitnodeError:
    """A quota refusal is a 507 with the supplier's words; anything else stays 503."""
    quota = [f.reason for f in err.failures if "InsufficientStorage" in f.reason]
    if quota:
        return InsufficientStorage(f"suppliers are out of space for this upload: {quota[0]}")
    return err
