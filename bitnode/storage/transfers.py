"""The TransferManager: the upload and download jobs of one node, their slots and their history.

Jobs wait in a queue (state PENDING) until a slot is free: at most
``max_uploads()`` uploads and ``max_downloads()`` downloads run at once, so
memory stays bounded by the running jobs' segments in flight whatever is
queued. Finished jobs move to a bounded history (newest first) so the API can
still show how they ended.

At start-up :meth:`TransferManager.resume_interrupted` looks at every version
left ``uploading`` in the catalog: if its local file has the size and mtime
recorded when the version began, an :class:`UploadJob` resumes it from
``catalog.resume_point()`` (acknowledged segments are not sent again);
otherwise the version is abandoned (the history says why) and, if the file
still exists, a new version of it is uploaded. :meth:`resume_downloads` does
the same for the downloads the journal lists: each goes on from its last
checkpoint. Jobs resumed carry ``after_restart``. :meth:`stop` pauses uploads
and (with a journal) downloads, which resume after the next start, and fires
once every job has come to rest.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger

from bitnode.errors import BitnodeError, Conflict, NotFound, Unavailable
from bitnode.storage import local_files
from bitnode.storage.catalog import UPLOADING, split_remote_path
from bitnode.storage.download_job import DownloadJob
from bitnode.storage.job_context import StorageContext, stat_file
from bitnode.storage.jobs import CANCELLED, DONE, FAILED_STATE, PAUSED, SECURING, UploadJob, _Job

UPLOAD, DOWNLOAD = "upload", "download"
AT_REST = frozenset({PAUSED, DONE, FAILED_STATE, CANCELLED, "NEW", "PENDING", "WAITING", SECURING})
RUNNING_STATES = frozenset({"PREPARING", "UPLOADING", "DOWNLOADING", "PAUSING", "CANCELLING", SECURING})
HISTORY_SIZE = 50


class TransferManager:
    """Starts, queues, lists, cancels and resumes the jobs of one node."""

    log = Logger()

    def __init__(self, ctx: StorageContext, max_uploads: Callable[[], int] = lambda: 1,
                 max_downloads: Callable[[], int] = lambda: 2, history_size: int = HISTORY_SIZE,
                 on_uploads_done: Callable[[], None] | None = None):
        self.ctx = ctx
        #: Called when the last active upload ended (done, failed or cancelled).
        self.on_uploads_done = on_uploads_done
        self.max_uploads = max_uploads
        self.max_downloads = max_downloads
        self.history: deque[_Job] = deque(maxlen=history_size)
        self._jobs: dict[str, _Job] = {}
        self._queues: dict[str, deque[_Job]] = {UPLOAD: deque(), DOWNLOAD: deque()}
        self._running: dict[str, set[_Job]] = {UPLOAD: set(), DOWNLOAD: set()}
        self._stopping = False
        self._background: set[defer.Deferred] = set()

    # --- starting ------------------------------------------------------------------------

    def start_upload(self, local_path: str, remote_path: str) -> UploadJob:
        """Queue an upload of ``local_path`` as a new version of ``remote_path``.

        Conflict if that remote path is being uploaded already; Unavailable
        when no suppliers are hired. Problems with the file itself end the job
        FAILED (see :meth:`UploadJob.wait`).
        """
        remote = self._remote(remote_path)
        self._check_open()
        busy = self.find(UPLOAD, remote)
        if busy is not None:
            raise Conflict(f"{remote} is already being uploaded ({busy.state})")
        self.ctx.placement()
        job = UploadJob(self.ctx, self, remote, local_path)
        self._jobs[job.id] = job
        job.event("start")
        return job

    def start_pack_upload(self, key_id: str, folder: str, local_folder: str, sources: list) -> UploadJob:
        """Queue the upload of a pack of small files (:class:`~bitnode.storage.packs.PackUploadJob`) going
        under the folder ``key_id:folder``; several packs of one folder may be queued at once."""
        from bitnode.storage.packs import PackUploadJob  # packs builds on the job classes this module imports

        remote = self._remote(f"{key_id}:{folder}")
        self._check_open()
        self.ctx.placement()
        job = PackUploadJob(self.ctx, self, remote, local_folder, sources)
        self._jobs[job.id] = job
        job.event("start")
        return job

    def start_pack_download(self, remote_folder: str, destination: str, pack_id: str, members: list[dict],
                            targets: list[str], root: str | None) -> DownloadJob:
        """Queue the download of ``members`` of one pack to ``targets`` (a folder download's files in it)."""
        from bitnode.storage.packs import PackDownloadJob

        remote = self._remote(remote_folder)
        self._check_open()
        self.ctx.placement()
        job = PackDownloadJob(self.ctx, self, remote, destination, pack_id, members, targets, root)
        self._jobs[job.id] = job
        job.event("start")
        return job

    def start_download(self, remote_path: str, local_path: str, version_id: str | None = None,
                       root: str | None = None) -> DownloadJob:
        """Queue a download of ``remote_path`` (newest complete version unless given) to ``local_path``.

        ``root``: the folder of a folder download (no link below it is followed).
        """
        remote = self._remote(remote_path)
        self._check_open()
        busy = self.find(DOWNLOAD, remote)
        if busy is not None:
            raise Conflict(f"{remote} is already being downloaded ({busy.state})")
        self.ctx.placement()
        job = DownloadJob(self.ctx, self, remote, local_path, version_id, root)
        self._jobs[job.id] = job
        job.event("start")
        return job

    async def resume_interrupted(self) -> list[dict]:
        """Resume or restart every upload a stop or a crash interrupted; what was done, per version."""
        from bitnode.storage import packs

        ctx = self.ctx
        report = []
        for version in await ctx.run_in_thread(ctx.catalog.versions, UPLOADING):
            version_id, remote = version["version_id"], version["remote_path"]
            if self._stopping or any(j.version_id == version_id for j in self._jobs.values()):
                continue
            if version.get("is_pack"):
                report.append(await packs.abandon_interrupted(ctx, version))
                continue
            source = await ctx.run_in_thread(ctx.catalog.source, version_id)
            if source is None:
                # Begun on another machine (a restored catalog): not ours to resume or to abandon.
                report.append({"version_id": version_id, "remote_path": remote, "action": "left alone"})
                continue
            seen = None
            try:
                seen = await ctx.run_in_thread(stat_file, source["local_path"])
            except BitnodeError:
                seen = None
            job = UploadJob(ctx, self, remote, source["local_path"], version_id=version_id)
            job.after_restart = True
            self._jobs[job.id] = job
            if seen is not None and seen.signature == (source["size"], source["mtime"]):
                job.event("resume")
                report.append({"version_id": version_id, "remote_path": remote, "action": "resumed", "job": job.id})
                continue
            why = "changed" if seen is not None else "is gone or cannot be read"
            # Its blocks are deleted in the background: slow suppliers must not hold up the other resumes.
            job.event("abandon", Conflict(f"interrupted by a stop or crash, and {source['local_path']} {why} "
                                          "since: the unfinished version was abandoned"))
            entry = {"version_id": version_id, "remote_path": remote, "action": "abandoned", "job": job.id}
            if seen is not None and self.find(UPLOAD, remote) is None:
                try:
                    again = self.start_upload(source["local_path"], remote)
                    again.after_restart = True
                    entry.update(job=again.id, action="new version")
                except BitnodeError as err:
                    entry["error"] = str(err)
            report.append(entry)
        return report

    async def resume_after_restart(self, downloads: dict[str, dict], mine: Callable[[dict], bool]) -> dict:
        """Uploads (:meth:`resume_interrupted`), then the journal's downloads (:meth:`resume_downloads`).

        ``{"uploads": [...], "downloads": [...], "counts": {"uploads_resumed": 1, "downloads_cleaned_up": 2, ...}}``.
        """
        from bitnode.storage import packs

        await self.ctx.run_in_thread(packs.remove_leftovers, packs.temp_dir_of(self.ctx))  # none is running yet
        uploads = await self.resume_interrupted()
        resumed = await self.resume_downloads(downloads, mine)
        counts: dict[str, int] = {}
        for kind, report in (("uploads", uploads), ("downloads", resumed)):
            for entry in report:
                key = f"{kind}_{entry['action'].replace(' ', '_')}"
                counts[key] = counts.get(key, 0) + 1
        return {"uploads": uploads, "downloads": resumed, "counts": counts}

    async def resume_downloads(self, entries: dict[str, dict], mine: Callable[[dict], bool]) -> list[dict]:
        """Go on with the downloads an earlier run left in the journal (``entries``, by part name).

        ``mine(entry)``: whether this manager may resume it; the others (and
        any that cannot start) have their part removed and end FAILED in the
        history with the reason.
        """
        report = []
        for entry in entries.values():
            if self._stopping:
                break
            outcome = {"remote_path": entry["remote_path"], "local_path": entry["local_path"]}
            try:
                job = DownloadJob(self.ctx, self, entry["remote_path"], entry["local_path"],
                                  entry["version_id"] or None, entry.get("root"), journal_entry=entry)
            except BitnodeError as err:
                await self.ctx.run_in_thread(local_files.remove_part, entry["local_path"], entry.get("root"),
                                             entry["part_name"])
                await self.ctx.download_journal.drop(entry["part_name"])
                report.append(dict(outcome, action="cleaned up", error=str(err)))
                continue
            busy = self.find(DOWNLOAD, job.remote_path) is not None
            self._jobs[job.id] = job
            if mine(entry) and not busy:
                job.event("start")
                report.append(dict(outcome, action="resumed", job=job.id, from_bytes=entry["bytes_done"]))
            else:
                job.event("abandon", Unavailable("interrupted by a stop or crash and not resumed here: "
                                                 "download it again"))
                report.append(dict(outcome, action="cleaned up", job=job.id))
        return report

    # --- slots (called by the jobs) ------------------------------------------------------------

    def enqueue(self, job: _Job) -> None:
        """A job waits for a slot."""
        queue = self._queues[job.kind]
        if job not in queue and job not in self._running[job.kind]:
            queue.append(job)
        self._pump(job.kind)

    def release(self, job: _Job) -> None:
        """A job gives its slot or queue place back."""
        self._running[job.kind].discard(job)
        try:
            self._queues[job.kind].remove(job)
        except ValueError:
            pass
        self._pump(job.kind)

    def track(self, d: defer.Deferred) -> None:
        """Work of a job that may outlive its state (deleting blocks...): finished or cancelled by :meth:`stop`."""
        if d.called:
            return
        self._background.add(d)
        d.addBoth(lambda result: (self._background.discard(d), result)[1])

    def finished(self, job: _Job) -> None:
        """A job ended: keep it in the history."""
        self._jobs.pop(job.id, None)
        self.history.appendleft(job)
        if job.kind == UPLOAD and self.on_uploads_done is not None and not self.jobs(UPLOAD):
            self.on_uploads_done()

    def _pump(self, kind: str) -> None:
        if self._stopping:
            return
        limit = max(1, (self.max_uploads if kind == UPLOAD else self.max_downloads)())
        queue, running = self._queues[kind], self._running[kind]
        while queue and sum(map(self._slot_share, running)) + self._slot_share(queue[0]) <= limit + 1e-9:
            job = queue.popleft()
            running.add(job)
            job.event("run")

    def _slot_share(self, job: _Job) -> float:
        """How much of a slot a running job takes: a whole one, or, for a pack of small files (one segment
        in memory at a time), 1 / segments-in-flight: the packs of a folder overlap as a big file's segments
        do, with the same memory."""
        return 1.0 / max(1, self.ctx.segments_in_flight()) if getattr(job, "small_slot", False) else 1.0

    # --- looking and stopping ---------------------------------------------------------------------

    def find(self, kind: str, remote_path: str) -> _Job | None:
        """The active job of ``kind`` for a remote path, if any."""
        for job in self._jobs.values():
            if job.kind == kind and job.remote_path == remote_path:
                return job
        return None

    def jobs(self, kind: str | None = None) -> list[_Job]:
        """Active jobs (optionally of one kind), oldest first."""
        return [j for j in self._jobs.values() if kind is None or j.kind == kind]

    def cancel(self, kind: str, remote_path: str) -> _Job:
        """Cancel the active job of ``kind`` for ``remote_path``; NotFound if there is none."""
        job = self.find(kind, self._remote(remote_path))
        if job is None:
            raise NotFound(f"no {kind} of {remote_path} is running or queued")
        job.event("cancel")
        return job

    def uploads(self, include_running: bool = True, include_pending: bool = True) -> dict:
        """``{"running": [...], "pending": [...]}``: pending are queued or paused uploads."""
        out: dict[str, list] = {}
        jobs = self.jobs(UPLOAD)
        if include_running:
            out["running"] = [j.info() for j in jobs if j.state in RUNNING_STATES]
        if include_pending:
            out["pending"] = [j.info() for j in jobs if j.state not in RUNNING_STATES]
        return out

    def transfers(self) -> list[dict]:
        """Every active job with its figures (bytes done/total, speed, ETA), uploads first."""
        return [j.info() for j in self.jobs(UPLOAD)] + [j.info() for j in self.jobs(DOWNLOAD)]

    def recent(self, kind: str | None = None) -> list[dict]:
        """Finished jobs, newest first."""
        return [j.info() for j in self.history if kind is None or j.kind == kind]

    def suppliers_changed(self) -> None:
        """Paused uploads and waiting downloads try again with the new suppliers."""
        for job in self.jobs():
            job.event("suppliers-changed")

    def stop(self) -> defer.Deferred:
        """Pause uploads and downloads (a download without a journal is cancelled); fires when every job rests."""
        self._stopping = True
        waits = []
        for job in list(self._jobs.values()):
            job.event("pause")
            waits.append(_at_rest(job))

        def cancel_background(_):
            # Jobs rest; what is left is cleanup (deleting blocks), which the next start or prune redoes.
            left = list(self._background)
            for d in left:
                d.cancel()
            return defer.DeferredList(left, consumeErrors=True)

        def forget(_):
            for job in list(self._jobs.values()):
                job.destroy()
            self._jobs.clear()
            for kind in (UPLOAD, DOWNLOAD):
                self._queues[kind].clear()
                self._running[kind].clear()

        return defer.DeferredList(waits).addCallback(cancel_background).addCallback(forget)

    # --- helpers -----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._stopping:
            raise Unavailable("the storage service is stopping")

    @staticmethod
    def _remote(remote_path: str) -> str:
        key_id, path = split_remote_path(remote_path)
        return f"{key_id}:{path}"


def _at_rest(job: _Job) -> defer.Deferred:
    """Fires once ``job`` is in a state where nothing of it is running."""
    if job.state in AT_REST or job.destroyed:
        return defer.succeed(None)
    d = defer.Deferred()

    def listener(machine, old, new, event):
        if new in AT_REST and not d.called:
            machine.remove_state_listener(listener)
            d.callback(None)

    job.add_state_listener(listener)
    return d
