"""A download job: restores one version of a file to a local path, and goes on after a stop or a crash.

The machine, read top to bottom::

    NEW --start--> PENDING               noted in the download journal, waits for a slot
    PENDING --run--> DOWNLOADING         Downloader writes <dest>.<8 hex>.part, checkpoints
                                         it every download-checkpoint bytes (synced, then
                                         journaled), fsyncs and renames it into place
    DOWNLOADING --downloaded--> DONE     journal entry dropped
    DOWNLOADING --failed--> FAILED       part removed, journal entry dropped
    DOWNLOADING --stalled--> WAITING     a resumed download finds too few suppliers (the node
                                         just started): the part is kept; it tries again on
                                         suppliers-changed or every minute
    cancel: PENDING -> CANCELLED, DOWNLOADING -> CANCELLING -> CANCELLED (part removed)
    pause (node stopping), with a journal: PENDING -> PAUSED, DOWNLOADING -> PAUSING
        -> PAUSED with the part kept at its checkpoint; the next start resumes it
        (TransferManager.resume_downloads). Without a journal (a share's view) a
        pause cancels, as nothing would resume it.

A download killed by a crash leaves its journal entry and part: the next
start resumes from the last checkpoint (the part is cut there), or, when the
version is gone, removes the part and reports why. Blocks found corrupt or
missing on the supplier that should hold them are marked missing in the
catalog so backup_monitor rebuilds them.
"""

from __future__ import annotations

import os
from typing import Any

from bitnode.errors import Conflict, NotFound, Unavailable
from bitnode.storage import local_files
from bitnode.storage.catalog import COMPLETE
from bitnode.storage.downloader import Downloader
from bitnode.storage.job_context import StorageContext
from bitnode.storage.jobs import CANCELLED, DONE, FAILED_STATE, PAUSED, _Job
from bitnode.storage.ports import Progress, TransferCancelled


class DownloadJob(_Job):
    """Restores one version of ``remote_path`` to ``local_path`` (temp file, fsync, rename)."""

    name = "download_job"
    kind = "download"
    initial = "NEW"
    timers = {"timer-1min": (60.0, {"WAITING"})}
    transitions = [
        # state          event         guard        next           actions
        ("NEW",          "start",      None,        "PENDING",     ["note_in_journal", "ask_for_slot"]),
        # Interrupted in an earlier run and not to be resumed: its part goes, the history says why.
        ("NEW",          "abandon",    None,        FAILED_STATE,  ["remember_error", "drop_from_journal",
                                                                    "finish"]),
        ("PENDING",      "run",        None,        "DOWNLOADING", ["run_downloader"]),
        ("PENDING",      "cancel",     None,        CANCELLED,     ["drop_from_journal", "finish"]),
        ("PENDING",      "pause",      "resumable", PAUSED,        ["release_slot", "settle_waiters"]),
        ("PENDING",      "pause",      None,        CANCELLED,     ["finish"]),
        ("DOWNLOADING",  "progress",   None,        "*",           ["note_progress"]),
        ("DOWNLOADING",  "downloaded", None,        DONE,          ["finish"]),
        ("DOWNLOADING",  "failed",     None,        FAILED_STATE,  ["remember_error", "finish"]),
        ("DOWNLOADING",  "stalled",    None,        "WAITING",     ["remember_error", "release_slot"]),
        ("WAITING",      "suppliers-changed", None, "PENDING",     ["clear_error", "ask_for_slot"]),
        ("WAITING",      "timer-1min", None,        "PENDING",     ["clear_error", "ask_for_slot"]),
        ("WAITING",      "cancel",     None,        CANCELLED,     ["drop_from_journal", "finish"]),
        ("WAITING",      "pause",      None,        PAUSED,        ["settle_waiters"]),
        ("DOWNLOADING",  "cancel",     None,        "CANCELLING",  ["stop_downloader"]),
        ("DOWNLOADING",  "pause",      "resumable", "PAUSING",     ["pause_downloader"]),
        ("DOWNLOADING",  "pause",      None,        "CANCELLING",  ["stop_downloader"]),
        ("PAUSING",      "stopped",    None,        PAUSED,        ["release_slot", "settle_waiters"]),
        ("PAUSING",      "downloaded", None,        DONE,          ["finish"]),
        ("PAUSING",      "failed",     None,        FAILED_STATE,  ["remember_error", "finish"]),
        ("PAUSING",      "stalled",    None,        PAUSED,        ["settle_waiters"]),
        ("CANCELLING",   "downloaded", None,        DONE,          ["finish"]),
        ("CANCELLING",   "stopped",    None,        CANCELLED,     ["finish"]),
        ("CANCELLING",   "failed",     None,        CANCELLED,     ["finish"]),
        ("CANCELLING",   "stalled",    None,        CANCELLED,     ["drop_from_journal", "finish"]),
        # Harmless where they mean nothing: late progress, repeated requests, a cancel while pausing.
        ("*",            "progress",   None,        "*",           []),
        ("*",            "cancel",     None,        "*",           []),
        ("*",            "pause",      None,        "*",           []),
        ("*",            "suppliers-changed", None, "*",           []),
    ]

    def __init__(self, ctx: StorageContext, manager: Any, remote_path: str, local_path: str,
                 version_id: str | None = None, root: str | None = None, journal_entry: dict | None = None):
        super().__init__(ctx, manager, remote_path, local_path)
        self.version_id = version_id
        #: The folder of a folder download: nothing between it and local_path may be a link.
        self.root = root
        self.downloader: Downloader | None = None
        #: The journal entry: the part's name and how far it is durable (from the last run when resumed).
        self.entry = dict(journal_entry) if journal_entry else {
            "remote_path": self.remote_path, "version_id": version_id or "", "local_path": local_path,
            "root": root, "part_name": local_files.part_name_for(os.path.basename(local_path)),
            "segments_done": 0, "bytes_done": 0, "started": ctx.clock.seconds()}
        self.after_restart = journal_entry is not None

    # --- guards ---------------------------------------------------------------------------

    def resumable(self, *_: Any) -> bool:
        """A journal keeps this download: it goes on at the next start."""
        return self.ctx.download_journal is not None and self.ctx.resumable_downloads

    def may_wait(self, error: BaseException) -> bool:
        """Too few suppliers for a download the user is not waiting on (resumed after a restart): wait for them.

        A download the user just asked for fails at once instead, with the reason.
        """
        return self.resumable() and self.after_restart and isinstance(error, Unavailable)

    # --- actions ----------------------------------------------------------------------------

    def note_in_journal(self, *_: Any) -> None:
        """Record the download before anything is written (a queued one is resumed too)."""
        journal = self.ctx.download_journal
        if journal is not None:
            self._spawn(self._put(self.entry))

    def drop_from_journal(self, *_: Any) -> None:
        """Forget the download (and remove a part an earlier run left)."""
        self._spawn(self._forget())

    async def _put(self, entry: dict) -> None:
        await self.ctx.download_journal.put(entry)

    async def _forget(self) -> None:
        journal = self.ctx.download_journal
        if journal is None:
            return
        part = self.entry["part_name"]
        await self.ctx.run_in_thread(local_files.remove_part, self.local_path, self.root, part)
        await journal.drop(part)

    def clear_error(self, *_: Any) -> None:
        """A waiting download tries again: the old reason no longer holds."""
        self.error = None

    def _resume_from_journal(self) -> None:
        """The next attempt goes on from the entry's checkpoint (the part was kept)."""
        self.after_restart = True

    async def _checkpoint(self, segments: int, size: int) -> None:
        self.entry.update(segments_done=segments, bytes_done=size)
        await self.ctx.download_journal.put(self.entry)

    def run_downloader(self, *_: Any) -> None:
        """Look the version up, unwrap its key and restore it."""
        self.started = self.ctx.clock.seconds()
        self._halted = False
        self._spawn(self._download())

    async def _download(self) -> None:
        ctx = self.ctx
        catalog = ctx.catalog
        journal = ctx.download_journal
        ids: list[str] = []
        try:
            version = await self._version()
            self.version_id = version["version_id"]
            self.bytes_total = version["size"]
            if "pack" in version:
                await self._download_packed(version)
                await self._forget()
                self.event("downloaded")
                return
            segments = await ctx.run_in_thread(catalog.segments, self.version_id)
            key = await ctx.run_in_thread(ctx.unwrap_key, self.key_id, version["wrapped_key"])
            placement = ctx.placement()
            ids, _ = placement.for_n(version["n"])
            servers = placement.readers_for_n(version["n"])  # retiring holders are read too
            downloader = Downloader(ctx.run_in_thread, ctx.clock, servers, version["k"], version["n"],
                                    max_in_flight=ctx.segments_in_flight(), fetch_timeout=ctx.fetch_timeout())
            self._check_halted()
            if journal is not None:
                if self.entry["version_id"] != self.version_id:  # queued for "the newest": now it is known
                    self.entry.update(version_id=self.version_id, segments_done=0, bytes_done=0)
                await journal.put(self.entry)  # on disk before the part is made
            self.downloader = downloader
            resume = (self.entry["segments_done"], self.entry["bytes_done"]) if self.after_restart else None
            result = await downloader.download(
                segments, self.version_id, key, ctx.customer_id, self.local_path,
                on_progress=lambda p: self.event("progress", p), root=self.root,
                mode=version.get("mode"), mtime_ns=version.get("mtime_ns"), part_name=self.entry["part_name"],
                resume_at=resume, checkpoint_bytes=ctx.download_checkpoint() if journal else 0,
                on_checkpoint=self._checkpoint if journal else None)
            self.result = {"dest_path": result.dest_path, "bytes": result.bytes_written,
                           "segments": result.segments_total, "resumed_from_segment": result.resumed_from,
                           "corrupt_blocks": [list(b) for b in result.corrupt_blocks]}
            self.progress = Progress(result.bytes_written, result.bytes_written, result.segments_total,
                                     result.segments_total, self.progress.elapsed if self.progress else 0.0,
                                     self.progress.speed if self.progress else None, 0.0)
            await self._note_damage(result.problems, ids)
        except TransferCancelled:
            if self.state != "PAUSING":
                await self._forget()
            self.event("stopped")
            return
        except Exception as err:  # noqa: BLE001 - reported as the job's failure
            problems = getattr(err, "problems", ())
            if problems:
                await self._note_damage(problems, ids)
            if self.may_wait(err):
                self._resume_from_journal()
                self.event("stalled", err)
                return
            await self._forget()
            self.event("failed", err)
            return
        finally:
            self.downloader = None
        # Forgotten before DONE is told: a restart never downloads a finished file again.
        await self._forget()
        self.event("downloaded")

    async def _download_packed(self, version: dict) -> None:
        """A file stored in a pack: its pack is read and the file cut out of it (bitnode.storage.packs)."""
        from bitnode.storage.packs import download_members  # packs builds on this module: imported when used

        member = {"version_id": self.version_id, "remote_path": self.remote_path, "path": self.path,
                  "offset": version["pack"]["offset"], "length": version["size"], "mode": version.get("mode"),
                  "mtime_ns": version.get("mtime_ns")}
        self.result = await download_members(self, version["pack"]["pack_id"], [member], [self.local_path],
                                             self.root)
        self.progress = Progress(version["size"], version["size"], 1, 1, 0.0, None, 0.0)

    async def _version(self) -> dict:
        ctx = self.ctx
        if self.version_id is None:
            return await ctx.run_in_thread(ctx.catalog.latest_complete, self.key_id, self.path)
        version = await ctx.run_in_thread(ctx.catalog.version, self.version_id)
        if version["remote_path"] != self.remote_path:
            raise NotFound(f"version {self.version_id} is not a version of {self.remote_path}")
        if version["state"] != COMPLETE:
            raise Conflict(f"version {self.version_id} is not complete ({version['state']})")
        return version

    async def _note_damage(self, problems, ids: list[str]) -> None:
        """Blocks the holder answered as corrupt or absent are missing: the catalog says so."""
        if not any(p.kind in ("corrupt", "missing") for p in problems):
            return
        holders = {(seg, pos): who for seg, pos, _, who in
                   await self.ctx.run_in_thread(self.ctx.catalog.blocks, self.version_id)}
        lost = {(p.segment_index, p.block_index) for p in problems if p.kind in ("corrupt", "missing")
                and holders.get((p.segment_index, p.block_index)) == ids[p.block_index] != ""}
        for seg, pos in sorted(lost):
            await self.ctx.run_in_thread(self.ctx.catalog.set_block_holder, self.version_id, seg, pos, "")
        if lost:
            self.result["blocks_marked_missing"] = len(lost)
            self.ctx.on_catalog_changed()
            self.ctx.on_blocks_damaged()

    def stop_downloader(self, *_: Any) -> None:
        """Cancel the running downloader; the .part file is removed."""
        self._halted = True
        if self.downloader is not None:
            self.downloader.cancel()

    def pause_downloader(self, *_: Any) -> None:
        """Stop the running downloader but keep its part at a checkpoint: the next start goes on from there."""
        self._halted = True
        if self.downloader is not None:
            self.downloader.cancel(keep_part=True)


__all__ = ["DownloadJob", "CANCELLED", "DONE", "FAILED_STATE", "PAUSED"]
