"""Small files of a folder upload go up in packs, and come back from them.

A folder upload (:func:`bitnode.storage.folders.upload_folder`) under my own
key puts every file of at most ``pack-file-max`` bytes into packs of at most
``pack-max-bytes`` (settings of service_backups; :func:`plan_packs`). A pack
is uploaded by a :class:`PackUploadJob`, the upload job's machine with three
steps of its own:

- prepare: the pack is written to a temporary file (:func:`pack_format.write_pack`,
  each file read once), one version key is made and wrapped for the whole pack,
  and the pack is begun in the catalog as a version of the folder;
- upload: as any version, segment by segment (each recorded once acknowledged);
- complete: ONE catalog transaction (:meth:`Catalog.finish_pack
  <bitnode.storage.catalog_packs.CatalogPacks.finish_pack>`) makes the pack
  complete and every file in it a complete version, then the job waits like
  any upload for a catalog backup naming them on k suppliers (SECURING), and
  only then is DONE.

So a folder of 1,000 files of 16 KiB costs four or five packs: a few blocks
per supplier, a few RSA key wraps, a few catalog transactions and one
catalog backup, where it cost 1,000 of each.

A pack interrupted by a stop or a crash is abandoned at the next start (its
files were never recorded: nothing of it was reported done); the folder is
uploaded again by whoever asked.

Reading: the default pack size is one segment, so a file of a pack is read by
fetching that pack's one segment (k blocks) and cutting the file out of it
(:class:`PackDownloadJob`; a folder download reads each of its packs once for
all its files). Every file is checked against the pack's index (offset,
length, SHA-256) before it is written (temp file, fsync, rename).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable

from bitnode.errors import BadRequest, BitnodeError, Conflict
from bitnode.main.fileutil import remove_if_exists
from bitnode.storage import local_files, pack_format, segment_crypto
from bitnode.storage.catalog import COMPLETE, PackMember
from bitnode.storage.download_job import DownloadJob
from bitnode.storage.downloader import Downloader
from bitnode.storage.job_context import (
    StorageContext,
    abandon_version,
    delete_versions,
    new_version_id,
    remove_temp_files,
)
from bitnode.storage.jobs import UploadJob
from bitnode.storage.ports import Progress, TransferCancelled

PACK_TEMP_PREFIX = "pack-"
#: Restored files of a pack written before one file-system sync puts them all on disk (each holds a folder
#: descriptor until then: this bounds them).
FILES_PER_SYNC = 256
#: Packing is for small files: the largest file that may go into a pack, unless the setting says otherwise.
DEFAULT_PACK_FILE_MAX = 1024 * 1024
#: A pack's size, unless the setting says otherwise: one default segment, so reading one file reads one segment.
DEFAULT_PACK_MAX_BYTES = 4 * 1024 * 1024


def temp_dir_of(ctx: StorageContext) -> str:
    """Where a node's temporary pack files go."""
    return ctx.temp_dir or os.environ.get("TMPDIR", "/tmp")


def plan_packs(files: Iterable[Any], file_max: int, pack_max: int) -> tuple[list[list[Any]], list[Any]]:
    """Split a folder's files (objects with ``size`` and ``relative``) into packs and files uploaded alone.

    A file of at most ``file_max`` bytes goes into a pack; a pack is at
    most ``pack_max`` bytes, its index included (unless one file alone is
    more), and holds at most :data:`pack_format.MAX_PACK_FILES` files;
    the order of ``files`` is kept. A lone small file still makes a pack of
    one (a segment and a catalog backup, like a file alone, and no key wrap).
    """
    packs: list[list[Any]] = []
    alone: list[Any] = []
    current: list[Any] = []
    size = pack_format.INDEX_FIXED_BYTES
    for entry in files:
        if entry.size > file_max:
            alone.append(entry)
            continue
        # What the file adds to the pack, its index entry included: a pack of pack_max fits one segment of it.
        cost = entry.size + pack_format.index_entry_bytes(entry.relative)
        if current and (size + cost > pack_max or len(current) >= pack_format.MAX_PACK_FILES):
            packs.append(current)
            current, size = [], pack_format.INDEX_FIXED_BYTES
        current.append(entry)
        size += cost
    if current:
        packs.append(current)
    return packs, alone


def packs_figures(found: list[dict], files_left: int) -> dict:
    """The packs counters service_info shows, from :meth:`Catalog.packs` and the count of files that left packs:
    packs, files in them, their bytes, and dead bytes (of files deleted or replaced since; reclaimed when no
    file of the pack is left)."""
    complete = [p for p in found if p["state"] == COMPLETE]
    total = sum(p["size"] for p in complete)
    return {"packs": len(complete), "uploading": len(found) - len(complete),
            "files": sum(p["files"] for p in complete), "bytes": total,
            "dead_bytes": total - sum(p["live_bytes"] for p in complete), "files_left_packs": files_left}


def remove_leftovers(temp_dir: str) -> int:
    """Remove pack files a crash left in ``temp_dir``; how many. Worker thread."""
    return remove_temp_files(temp_dir, PACK_TEMP_PREFIX)


class PackUploadJob(UploadJob):
    """Uploads a pack of small files of one folder upload (see the module docstring).

    ``remote_path`` is the folder the files go under; ``sources`` the files
    (:class:`pack_format.PackSource`, paths below that folder); ``local_folder``
    is what the API shows as the job's local path.
    """

    name = "pack_upload_job"
    #: A pack is one segment: it takes 1/segments-in-flight of an upload slot (TransferManager).
    small_slot = True

    def __init__(self, ctx: StorageContext, manager: Any, remote_path: str, local_folder: str,
                 sources: list[pack_format.PackSource]):
        super().__init__(ctx, manager, remote_path, local_folder)
        if self.ctx.version_tag(self.key_id):
            raise BadRequest("packs are for files under my own key")
        self.local_folder = local_folder
        self.sources = list(sources)
        self.built: pack_format.BuiltPack | None = None
        self.pack_path = ""
        #: Files in the pack (the sources until it is written, then those read).
        self.files = len(self.sources)

    def info(self) -> dict:
        """The upload job's info, with the local folder, the pack's files and the count of them."""
        out = super().info()
        out.update(local_path=self.local_folder, pack=True, files=self.files)
        return out

    def finish(self, *args: Any) -> None:
        """The end, as any upload's; the pack's file lists are let go (the history keeps finished jobs)."""
        self.sources, self.built = [], None
        super().finish(*args)

    async def _prepare(self) -> None:
        """Nothing to do before a slot: the pack is written when it runs (a folder of many packs holds one
        temporary pack at a time, not all of them)."""
        self.event("prepared")

    async def _upload(self) -> None:
        if self.version_id is None:
            try:
                await self._begin_pack()
            except TransferCancelled:
                self.event("stopped")
                return
            except Exception as err:  # noqa: BLE001 - any failure to make the pack fails the job
                if self.pack_path:
                    await self.ctx.run_in_thread(remove_if_exists, self.pack_path)
                self.event("failed", err)
                return
        await super()._upload()

    async def _begin_pack(self) -> None:
        """Write the pack to its temporary file, make and wrap its key, begin it in the catalog."""
        ctx = self.ctx
        placement = ctx.placement()
        n = len(placement.positions)
        k = ctx.data_blocks(n)
        now = ctx.clock.seconds()
        pack_id = new_version_id(now)
        path = os.path.join(temp_dir_of(ctx), f"{PACK_TEMP_PREFIX}{pack_id}")
        self.pack_path = self.local_path = path
        built = await ctx.run_in_thread(pack_format.write_pack, path, self.sources)
        self.built = built
        self.files = len(built.files)
        if not built.files:
            raise BadRequest("no file of this pack could be read: "
                             + "; ".join(f"{s['local_path']}: {s['error']}" for s in built.skipped[:3]))
        key = segment_crypto.new_version_key()
        wrapped = await ctx.run_in_thread(ctx.wrap_key, self.key_id, key)
        self._check_halted()
        await ctx.run_in_thread(ctx.catalog.begin_pack, self.key_id, self.path, pack_id, built.size,
                                ctx.segment_size(), k, n, wrapped, list(placement.positions), now)
        self.version_id, self.key, self.bytes_total = pack_id, key, built.size
        self.versions_made += 1
        self.sources = []  # the built pack says what is in it now
        ctx.on_catalog_changed()

    async def _complete(self) -> None:
        """The pack and every file in it complete, in one transaction; older versions of those files go."""
        ctx = self.ctx
        now = ctx.clock.seconds()
        members = [PackMember(f.entry.path, new_version_id(now), f.entry.offset, f.entry.length, f.mode,
                              f.mtime_ns, f.local_path) for f in self.built.files]
        outcome = await ctx.run_in_thread(ctx.catalog.finish_pack, self.version_id, members, now,
                                          ctx.keep_versions())
        await ctx.run_in_thread(remove_if_exists, self.pack_path)
        self.result.update(files=outcome["files"], skipped=list(self.built.skipped) + outcome["skipped"])
        if outcome["dropped"]:
            deleted = await delete_versions(ctx, outcome["dropped"])
            self.result["pruned_versions"] = outcome["dropped"]
            if deleted["failed"]:
                self.log.warn("{id}: old versions not deleted everywhere: {failed}", id=self.id,
                              failed=deleted["failed"])

    def may_make_version(self, *_: Any) -> bool:
        """A pack is read once into its temporary file: it never changes under the upload."""
        return False

    def abandon_version(self, *_: Any) -> None:
        """The pack will never complete: its blocks and row go (as any version's), and its temporary file."""
        super().abandon_version()
        if self.pack_path:
            self._spawn(self.ctx.run_in_thread(remove_if_exists, self.pack_path))


async def abandon_interrupted(ctx: StorageContext, version: dict) -> dict:
    """A pack a stop or a crash left uploading: its files were never recorded; it goes."""
    await abandon_version(ctx, version["version_id"])
    return {"version_id": version["version_id"], "remote_path": version["remote_path"], "action": "abandoned",
            "error": "a pack of a folder upload interrupted by a stop or crash: its files were not stored; "
                     "upload the folder again"}


# --- reading -----------------------------------------------------------------------------------------


def extract_members(pack_path: str, pack_folder: str, members: list[dict], targets: list[str],
                    root: str | None) -> list[dict]:
    """Write each member of the local pack file to its target (temp file, fsync, rename). Worker thread.

    Every member is checked against the pack's index: same offset and
    length, same SHA-256. Returns the members that could not be written,
    ``{"remote_path", "error"}``; the others are in place.
    """
    entries = {e.path: e for e in pack_format.read_index(pack_path)}
    problems = []

    def problem(member: dict, err: BaseException) -> None:
        problems.append({"remote_path": member["remote_path"], "error": getattr(err, "strerror", None) or str(err)})

    with open(pack_path, "rb") as fh:
        for start in range(0, len(members), FILES_PER_SYNC):
            batch: list[tuple[dict, local_files.PartFile]] = []
            try:
                for member, target in zip(members[start:start + FILES_PER_SYNC],
                                          targets[start:start + FILES_PER_SYNC], strict=True):
                    relative = member["path"][len(pack_folder) + 1:]
                    entry = entries.get(relative)
                    try:
                        if entry is None or (entry.offset, entry.length) != (member["offset"], member["length"]):
                            raise pack_format.PackFormatError(
                                f"{relative!r} is not where the catalog says in its pack")
                        data = pack_format.read_member(fh, entry)
                        part = local_files.create_part(target, root)
                    except (OSError, BitnodeError) as err:
                        problem(member, err)
                        continue
                    batch.append((member, part))
                    try:
                        part.write(data)
                    except OSError as err:
                        batch.pop()
                        part.abort()
                        problem(member, err)
            except BaseException:
                for _, part in batch:
                    part.abort()
                raise
            outcome = local_files.finish_many([p for _, p in batch],
                                              [(m.get("mode"), m.get("mtime_ns")) for m, _ in batch])
            for (member, _), err in zip(batch, outcome, strict=True):
                if err is not None:
                    problem(member, err)
    return problems


async def fetch_pack(ctx: StorageContext, pack: dict, dest: str,
                     hold: Callable[[Downloader | None], None] = lambda worker: None) -> Any:
    """Restore the whole pack version ``pack`` to the local file ``dest``.

    ``hold(downloader)`` is told the Downloader while it runs (None after), so its owner can cancel it.
    """
    if pack["state"] != COMPLETE:
        raise Conflict(f"pack {pack['version_id']} is not complete ({pack['state']})")
    key_id = pack["remote_path"].partition(":")[0]
    segments = await ctx.run_in_thread(ctx.catalog.segments, pack["version_id"])
    key = await ctx.run_in_thread(ctx.unwrap_key, key_id, pack["wrapped_key"])
    placement = ctx.placement()
    servers = placement.readers_for_n(pack["n"])
    downloader = Downloader(ctx.run_in_thread, ctx.clock, servers, pack["k"], pack["n"],
                            max_in_flight=ctx.segments_in_flight(), fetch_timeout=ctx.fetch_timeout())
    hold(downloader)
    try:
        return await downloader.download(segments, pack["version_id"], key, ctx.customer_id, dest)
    finally:
        hold(None)


async def download_members(job: DownloadJob, pack_id: str, members: list[dict], targets: list[str],
                           root: str | None) -> dict:
    """Fetch the pack ``pack_id`` once and write ``members`` of it to ``targets``; the job's result."""
    ctx = job.ctx
    pack = await ctx.run_in_thread(ctx.catalog.version, pack_id)
    folder = pack["remote_path"].partition(":")[2]
    temp = os.path.join(temp_dir_of(ctx), f"{PACK_TEMP_PREFIX}read-{job.id}-{pack_id}")
    try:
        job._check_halted()
        fetched = await fetch_pack(ctx, pack, temp, lambda worker: setattr(job, "downloader", worker))
        problems = await ctx.run_in_thread(extract_members, temp, folder, members, targets, root)
    finally:
        await ctx.run_in_thread(remove_if_exists, temp)
    written = sum(m["length"] for m in members) - sum(
        m["length"] for m in members if m["remote_path"] in {p["remote_path"] for p in problems})
    if problems and len(problems) == len(members):
        raise BadRequest(f"no file of pack {pack_id} could be restored: {problems[0]['error']}")
    return {"pack_id": pack_id, "files": len(members) - len(problems), "bytes": written,
            "pack_bytes": fetched.bytes_written, "problems": problems,
            "corrupt_blocks": [list(b) for b in fetched.corrupt_blocks]}


class PackDownloadJob(DownloadJob):
    """Restores files of one pack (a folder download's files in that pack) with one read of the pack.

    Not journaled: a stop cancels it (the folder is downloaded again); its
    files are written one by one, each only once whole and checked.
    """

    name = "pack_download_job"

    def __init__(self, ctx: StorageContext, manager: Any, remote_path: str, local_path: str, pack_id: str,
                 members: list[dict], targets: list[str], root: str | None):
        super().__init__(ctx, manager, remote_path, local_path, None, root)
        self.pack_id = pack_id
        self.members = members
        self.targets = targets
        self.files = len(members)
        self.bytes_total = sum(m["length"] for m in members)

    def info(self) -> dict:
        """The download job's info, with the pack and its files' count."""
        out = super().info()
        out.update(pack_id=self.pack_id, files=self.files)
        return out

    def finish(self, *args: Any) -> None:
        """The end, as any download's; the file lists are let go (the history keeps finished jobs)."""
        self.members, self.targets = [], []
        super().finish(*args)

    def resumable(self, *_: Any) -> bool:
        """Never journaled: a stop cancels it."""
        return False

    def note_in_journal(self, *_: Any) -> None:
        """Not journaled (see the class docstring)."""

    def drop_from_journal(self, *_: Any) -> None:
        """Not journaled (see the class docstring)."""

    async def _download(self) -> None:
        try:
            self.result = await download_members(self, self.pack_id, self.members, self.targets, self.root)
        except TransferCancelled:
            self.event("stopped")
            return
        except Exception as err:  # noqa: BLE001 - reported as the job's failure
            self.event("failed", err)
            return
        self.progress = Progress(self.bytes_total, self.bytes_total, 1, 1, 0.0, None, 0.0)
        self.event("downloaded")
