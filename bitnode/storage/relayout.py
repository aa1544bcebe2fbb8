"""relayout: keep every stored version as safe as the current supplier layout promises.

When ``services/customer/suppliers-number`` (n) or ``services/backups/data-blocks``
(k) changes, versions stored before are still k-of-n in the old layout. Going
from 4 suppliers to 2 would leave every 2-of-4 file with exactly 2 blocks: no
redundancy at all. So each such version is re-uploaded in the current layout,
from its own blocks (never from the local file, which may be gone or changed):

1. download it through the position readers (current suppliers, then the
   retiring ones: the positions that went away are still read) into a private
   temporary file under ``metadata/tmp`` (removed afterwards, whatever happens);
2. upload that as a new version of the same file (new version id and key, the
   same ``created`` time, so the versions keep their order) in the current k-of-n;
3. in one catalog transaction, the copy takes the old version's place;
4. delete the old version's blocks on the current suppliers (those that are
   gone from the layout lose theirs with their CancelService, once
   backup_monitor finds nothing depends on them any more).

One version at a time, in the background, and only while no upload is running
(it would compete for the same suppliers); a failure is kept in
:meth:`Relayout.status` and the work is tried again on the next trigger. The
pair (old, new) is written to the catalog's meta before the copy begins: after
a crash, the next run abandons an unfinished copy (its blocks are deleted) and
starts it again.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bitnode.errors import BitnodeError, NotFound
from bitnode.main.fileutil import remove_if_exists
from bitnode.storage import segment_crypto
from bitnode.storage.catalog import COMPLETE, split_remote_path
from bitnode.storage.downloader import Downloader
from bitnode.storage.job_context import (
    BackgroundPass,
    StorageContext,
    abandon_version,
    delete_versions,
    new_version_id,
    remove_temp_files,
)
from bitnode.storage.uploader import Uploader

PENDING_META = "relayout-pending"
TEMP_PREFIX = "relayout-"


def remove_leftovers(temp_dir: str) -> int:
    """Remove temporary files a stopped re-layout left behind. Worker thread."""
    return remove_temp_files(temp_dir, TEMP_PREFIX)




class Relayout(BackgroundPass):
    """Re-uploads versions whose k-of-n is not the current layout; see the module docstring.

    :param busy: True while the node is uploading (the re-layout waits).
    :param on_changed: called after versions were re-laid out (the node checks
        its retiring holders again: positions that went away may be released).
    :param remember_deletes: ``(version_ids)`` whose old blocks some supplier did
        not delete (the node retries them later).
    """

    log = Logger()

    def __init__(self, ctx: StorageContext, temp_dir: str, busy: Callable[[], bool],
                 on_changed: Callable[[], None] = lambda: None,
                 remember_deletes: Callable[[list[str]], Any] = lambda version_ids: None):
        super().__init__()
        self.ctx = ctx
        self.temp_dir = temp_dir
        self.busy = busy
        self.on_changed = on_changed
        self.remember_deletes = remember_deletes
        self.versions_pending = 0
        self.versions_done = 0
        self.bytes_done = 0
        self.waiting = ""
        self.last_error = ""
        self._cleaned = False

    def status(self) -> dict:
        """What is left to re-lay out and what is being done, for service_info and file_info."""
        return {"running": self.running, "versions_pending": self.versions_pending,
                "versions_done": self.versions_done, "bytes_done": self.bytes_done,
                "current": dict(self.current) if self.current else None, "waiting": self.waiting,
                "last_error": self.last_error}

    # --- the work -------------------------------------------------------------------------------

    async def _run(self) -> None:
        ctx = self.ctx
        if not self._cleaned:
            await self._clean_up()
            self._cleaned = True
        done = 0
        try:
            while not self._stopping:
                placement = ctx.placement()
                n = len(placement.positions)
                if "" in placement.positions:
                    self.waiting = "every position must have a supplier first"
                    break
                k = ctx.data_blocks(n)
                versions = await ctx.run_in_thread(ctx.catalog.versions, COMPLETE)
                # A file in a pack follows its pack (which is copied like any version).
                todo = [v for v in versions if (v["k"], v["n"]) != (k, n) and "pack" not in v]
                self.versions_pending = len(todo)
                if not todo:
                    self.waiting = ""
                    break
                if self.busy():
                    self.waiting = "an upload is running"
                    break
                self.waiting = ""
                await self._copy(todo[0], placement, k, n)
                done += 1
                self.versions_done += 1
            self.last_error = ""
        except Exception as err:
            if not self._stopping:
                self.last_error = str(err)
                self.log.info("re-layout stopped: {err}", err=err)
            if not isinstance(err, (BitnodeError, defer.CancelledError)):
                raise
        finally:
            if done:
                self.on_changed()

    async def _copy(self, version: dict, placement: Any, k: int, n: int) -> None:
        ctx, catalog = self.ctx, self.ctx.catalog
        old_id = version["version_id"]
        key_id, _ = split_remote_path(version["remote_path"])
        self.current = {"version_id": old_id, "remote_path": version["remote_path"],
                        "from": f"{version['k']}-of-{version['n']}", "to": f"{k}-of-{n}",
                        "phase": "reading", "bytes_total": version["size"], "bytes_done": 0}
        segments = await ctx.run_in_thread(catalog.segments, old_id)
        key = await ctx.run_in_thread(ctx.unwrap_key, key_id, version["wrapped_key"])
        temp = os.path.join(self.temp_dir, f"{TEMP_PREFIX}{old_id}")
        new_id = ""
        try:
            self._worker = Downloader(ctx.run_in_thread, ctx.clock, placement.readers_for_n(version["n"]),
                                      version["k"], version["n"], max_in_flight=ctx.segments_in_flight(),
                                      fetch_timeout=ctx.fetch_timeout())
            await self._worker.download(segments, old_id, key, ctx.customer_id, temp,
                                        on_progress=self._progress)
            del key
            new_key = segment_crypto.new_version_key()
            wrapped = await ctx.run_in_thread(ctx.wrap_key, key_id, new_key)
            new_id = ctx.version_tag(key_id) + new_version_id(version["created"] or ctx.clock.seconds())
            await self._remember(old_id, new_id)
            ids, servers = placement.for_n(n)
            await ctx.run_in_thread(catalog.begin_copy_version, old_id, new_id, k, n, wrapped, ids)
            self.current.update(phase="writing", bytes_done=0, new_version_id=new_id)
            self._worker = Uploader(ctx.run_in_thread, ctx.clock, servers, k, n,
                                    segment_size=version["segment_size"], max_in_flight=ctx.segments_in_flight(),
                                    store_timeout=ctx.store_timeout())
            await self._worker.upload(temp, new_id, new_key, ctx.customer_id, on_progress=self._progress,
                                      on_segment=lambda meta: ctx.run_in_thread(catalog.record_segment, new_id,
                                                                                meta, ids))
            await ctx.run_in_thread(catalog.replace_version, old_id, new_id)
        except BaseException:
            if new_id:
                await abandon_version(ctx, new_id)
            await self._forget(old_id)
            raise
        finally:
            self._worker = None
            await ctx.run_in_thread(remove_if_exists, temp)
        await self._forget(old_id)
        self.bytes_done += version["size"]
        self.log.info("re-laid out {path}: {old} ({frm}) is now {new} ({to})", path=version["remote_path"],
                      old=old_id, new=new_id, frm=self.current["from"], to=self.current["to"])
        ctx.on_catalog_changed()
        outcome = await delete_versions(ctx, [old_id])
        if outcome["failed"]:
            await defer.maybeDeferred(self.remember_deletes, [old_id])

    def _progress(self, progress: Any) -> None:
        if self.current is not None:
            self.current["bytes_done"] = progress.bytes_done

    # --- crash safety -------------------------------------------------------------------------------

    async def _pending(self) -> dict:
        return json.loads(await self.ctx.run_in_thread(self.ctx.catalog.get_meta, PENDING_META, "{}"))

    async def _remember(self, old_id: str, new_id: str) -> None:
        pending = await self._pending()
        pending[old_id] = new_id
        await self.ctx.run_in_thread(self.ctx.catalog.set_meta, PENDING_META, json.dumps(pending))

    async def _forget(self, old_id: str) -> None:
        pending = await self._pending()
        if pending.pop(old_id, None) is not None:
            await self.ctx.run_in_thread(self.ctx.catalog.set_meta, PENDING_META, json.dumps(pending))

    async def _clean_up(self) -> None:
        """A copy a crash left half done is abandoned (the old version still stands); temp files go."""
        ctx = self.ctx
        await ctx.run_in_thread(remove_leftovers, self.temp_dir)
        for old_id, new_id in (await self._pending()).items():
            try:
                state = (await ctx.run_in_thread(ctx.catalog.version, new_id))["state"]
            except NotFound:
                state = ""
            if state and state != COMPLETE:
                await abandon_version(ctx, new_id)
            await self._forget(old_id)
