"""Repack: a pack that holds mostly deleted files is rewritten with only the files left in it.

Deleting a file of a pack (or replacing it by a newer version) only marks it:
its ``packed`` row goes, the pack's bytes stay on the suppliers. A pack none
of whose files is left is removed by service_backups at once; a pack whose
live bytes fell below ``services/backups/repack-below`` of its size (0.5 by
default; 0 turns repacking off) is repacked here, in the background, one
pack at a time and only while no upload runs:

1. the whole pack is read (through the position readers, as a download) into
   a private temporary file under ``metadata/tmp``;
2. a new pack of the files still in the catalog is written from it (each one
   checked against the old pack's index: offset, length, SHA-256), begun in
   the catalog as a pack of the same folder, and uploaded (new key, current
   k-of-n);
3. ONE catalog transaction (:meth:`Catalog.finish_repack
   <bitnode.storage.catalog_packs.CatalogPacks.finish_repack>`) makes the new
   pack complete and points its files at their new offsets in it;
4. the old pack's blocks are deleted on the suppliers, then its row.

A crash before step 3 leaves the new pack ``uploading``: it is abandoned at
the next start (:func:`bitnode.storage.packs.abandon_interrupted`) while the
old pack still serves every file. A crash after it leaves the old pack with
no file: the next look removes it like any dead pack. :meth:`Repacker.status`
(service_info ``packs.repack``) counts packs repacked and bytes reclaimed.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bitnode.errors import BitnodeError
from bitnode.main.fileutil import remove_if_exists
from bitnode.storage import pack_format, segment_crypto
from bitnode.storage.catalog import COMPLETE, split_remote_path
from bitnode.storage.job_context import (
    BackgroundPass,
    StorageContext,
    abandon_version,
    delete_versions,
    new_version_id,
)
from bitnode.storage.packs import PACK_TEMP_PREFIX, fetch_pack, temp_dir_of
from bitnode.storage.uploader import Uploader

#: Repack a pack whose files left in it hold less than this share of its bytes, unless the setting says otherwise.
DEFAULT_REPACK_BELOW = 0.5


def repack_candidates(found: list[dict], below: float) -> list[dict]:
    """The complete packs (of :meth:`Catalog.packs`) with files left whose live bytes are under ``below`` of
    their size, emptiest first."""
    if below <= 0:
        return []
    chosen = [p for p in found if p["state"] == COMPLETE and p["files"] and p["live_bytes"] < below * p["size"]]
    return sorted(chosen, key=lambda p: p["live_bytes"] / max(1, p["size"]))


class Repacker(BackgroundPass):
    """Repacks packs that are mostly dead bytes; see the module docstring.

    :param busy: True while the node is uploading (repacking waits).
    :param below: the share of live bytes under which a pack is repacked (0: never).
    :param on_changed: called after each pack repacked (the catalog changed: it is backed up).
    """

    log = Logger()

    def __init__(self, ctx: StorageContext, busy: Callable[[], bool], below: Callable[[], float],
                 on_changed: Callable[[], None] = lambda: None):
        super().__init__()
        self.ctx = ctx
        self.busy = busy
        self.below = below
        self.on_changed = on_changed
        self.packs_repacked = 0
        self.bytes_reclaimed = 0
        self.last_error = ""

    def status(self) -> dict:
        """Counters for service_info: packs repacked, bytes reclaimed on the suppliers, the one being done."""
        return {"running": self.running, "packs_repacked": self.packs_repacked,
                "bytes_reclaimed": self.bytes_reclaimed, "current": dict(self.current) if self.current else None,
                "last_error": self.last_error}

    async def _run(self) -> None:
        ctx = self.ctx
        tried: set[str] = set()
        try:
            while not self._stopping and not self.busy():
                found = await ctx.run_in_thread(ctx.catalog.packs)
                todo = [p for p in repack_candidates(found, self.below()) if p["pack_id"] not in tried]
                if not todo:
                    break
                tried.add(todo[0]["pack_id"])
                await self._repack(todo[0])
            self.last_error = ""
        except Exception as err:
            if not self._stopping:
                self.last_error = str(err)
                self.log.info("repack stopped: {err}", err=err)
            if not isinstance(err, (BitnodeError, defer.CancelledError, OSError)):
                raise

    async def _repack(self, pack: dict) -> None:
        ctx, catalog = self.ctx, self.ctx.catalog
        old_id = pack["pack_id"]
        key_id, folder = split_remote_path(pack["remote_path"])
        self.current = {"pack_id": old_id, "remote_path": pack["remote_path"], "size": pack["size"],
                        "live_bytes": pack["live_bytes"], "phase": "reading"}
        version = await ctx.run_in_thread(catalog.version, old_id)
        members = await ctx.run_in_thread(catalog.pack_members, old_id)
        temp = temp_dir_of(ctx)
        old_path = os.path.join(temp, f"{PACK_TEMP_PREFIX}repack-{old_id}")
        new_path = ""
        new_id = ""
        try:
            await fetch_pack(ctx, version, old_path, self._hold)
            keep = [(m["path"][len(folder) + 1:], m["offset"], m["length"]) for m in members]
            now = ctx.clock.seconds()
            new_id = new_version_id(now)
            new_path = os.path.join(temp, f"{PACK_TEMP_PREFIX}{new_id}")
            built = await ctx.run_in_thread(pack_format.write_repack, old_path, keep, new_path)
            self.current.update(phase="writing", new_pack_id=new_id)
            placement = ctx.placement()
            n = len(placement.positions)
            k = ctx.data_blocks(n)
            key = segment_crypto.new_version_key()
            wrapped = await ctx.run_in_thread(ctx.wrap_key, key_id, key)
            ids, servers = placement.for_n(n)
            await ctx.run_in_thread(catalog.begin_pack, key_id, folder, new_id, built.size, ctx.segment_size(),
                                    k, n, wrapped, ids, now)
            uploader = Uploader(ctx.run_in_thread, ctx.clock, servers, k, n, segment_size=ctx.segment_size(),
                                max_in_flight=ctx.segments_in_flight(), store_timeout=ctx.store_timeout())
            self._hold(uploader)
            try:
                await uploader.upload(new_path, new_id, key, ctx.customer_id,
                                      on_segment=lambda meta: ctx.run_in_thread(catalog.record_segment, new_id,
                                                                                meta, ids))
            finally:
                self._hold(None)
            offsets = {f.entry.path: f.entry.offset for f in built.files}
            moves = [(m["version_id"], offsets[m["path"][len(folder) + 1:]]) for m in members]
            await ctx.run_in_thread(catalog.finish_repack, old_id, new_id, moves, ctx.clock.seconds())
        except BaseException:
            if new_id:
                await abandon_version(ctx, new_id)
            raise
        finally:
            await ctx.run_in_thread(remove_if_exists, old_path)
            if new_path:
                await ctx.run_in_thread(remove_if_exists, new_path)
        ctx.on_catalog_changed()
        self.on_changed()
        outcome = await delete_versions(ctx, [old_id])
        if not outcome["failed"]:
            await ctx.run_in_thread(catalog.drop_version, old_id)
        self.packs_repacked += 1
        self.bytes_reclaimed += max(0, pack["size"] - built.size)
        self.log.info("repacked {path}: {old} ({size} bytes, {live} live) is now {new} ({files} files)",
                      path=pack["remote_path"], old=old_id, size=pack["size"], live=pack["live_bytes"], new=new_id,
                      files=len(built.files))

    def _hold(self, worker: Any) -> None:
        self._worker = worker
        if worker is not None and self._stopping:
            worker.cancel()
