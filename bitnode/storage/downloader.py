"""Download one file version: fetch any k blocks per segment, decode, decrypt, write.

For every segment the downloader keeps k block fetches running, taking block
positions from one queue ordered data blocks first (``0..k-1``), then parity.
Each fetch (with a timeout on the injected clock) is checked in a worker
thread against the SHA-256 the catalog recorded at upload and against the
block's own header; on an error, a timeout or a bad block it records a
:class:`BlockProblem` and the next position is fetched instead. With k good
blocks the segment is decoded and decrypted in a worker thread.

A silent supplier must not cost a full timeout per segment
(:mod:`bitnode.storage.patience`): when no fetch of a segment has finished for
a few times the slowest recent answer, one more block is fetched beside the
slow ones, and whichever k arrive first are used. Suppliers that failed or
kept a segment waiting are asked last for the rest of the download.

Plaintext goes to a temporary ``<name>.<8 hex>.part`` beside ``dest_path``,
created exclusively and without following links
(:mod:`bitnode.storage.local_files`), strictly in segment order; then the file
is fsynced and renamed over ``dest_path``. If anything fails (or the download
is cancelled) the ``.part`` file is removed: no half-written file is ever left
at either name. At most ``max_in_flight`` segments are held in
memory (fetching, decoding or waiting for their turn to be written).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from bitnode.errors import BadRequest, BitnodeError, Conflict, Unavailable
from bitnode.storage import blockformat, erasure, local_files, segment_crypto
from bitnode.storage.patience import Patience
from bitnode.storage.ports import (
    BlockNotFound,
    CheckedBlock,
    IStorageServer,
    Progress,
    SegmentMeta,
    TransferCancelled,
    block_path,
    make_progress,
    validate_customer_id,
)

RunInThread = Callable[..., defer.Deferred]
ProgressCallback = Callable[[Progress], None]
PART_SUFFIX = local_files.PART_SUFFIX
# Least wait before fetching a spare block beside a slow fetch: a spare costs one block of traffic.
HEDGE_FLOOR = 2.0


class DownloadFailed(Unavailable):
    """A segment could not be rebuilt: fewer than k good blocks were reachable."""

    def __init__(self, message: str, segment_index: int, problems: tuple[BlockProblem, ...] = ()):
        super().__init__(message)
        self.segment_index = segment_index
        self.problems = problems


@dataclass(frozen=True)
class BlockProblem:
    """A block that could not be used. ``kind``: corrupt, timeout, missing, error or no-supplier."""

    segment_index: int
    block_index: int
    kind: str
    detail: str


@dataclass(frozen=True)
class DownloadResult:
    """A finished download; ``used_blocks[i]`` are the positions decoded for segment i."""

    dest_path: str
    bytes_written: int
    segments_total: int
    used_blocks: tuple[tuple[int, ...], ...]
    problems: tuple[BlockProblem, ...]
    #: The first segment fetched: > 0 when an interrupted download went on from its checkpoint.
    resumed_from: int = 0

    @property
    def corrupt_blocks(self) -> tuple[tuple[int, int], ...]:
        """(segment, block) of every block that failed its hash check."""
        return tuple((p.segment_index, p.block_index) for p in self.problems if p.kind == "corrupt")


def verify_block(
    data: bytes,
    expected_sha256: str,
    version_id: str,
    segment_index: int,
    block_index: int,
    k: int,
    n: int,
    plaintext_length: int,
) -> tuple[bytes, bytes | None]:
    """Check a fetched block against the catalog hash and its header; return its payload and nonce.

    The nonce is the segment's (block format 3), None for an older block
    (encrypted with the format 1 nonce). Raises :class:`blockformat.BlockCorrupt`
    for any mismatch. A :class:`CheckedBlock` (its server matched the hash
    already) is not hashed again. Worker thread.
    """
    if isinstance(data, CheckedBlock):
        if data.sha256 != expected_sha256:
            raise blockformat.BlockCorrupt(
                f"block {block_index} of segment {segment_index}: hash differs from catalog")
        data = data.block
    elif hashlib.sha256(data).hexdigest() != expected_sha256:
        raise blockformat.BlockCorrupt(
            f"block {block_index} of segment {segment_index}: hash differs from catalog"
        )
    try:
        # The whole block matched the catalog's hash: its own payload hash is not computed a second time.
        header, payload = blockformat.unpack(data, trusted=True)
    except blockformat.BlockFormatError as exc:
        raise blockformat.BlockCorrupt(str(exc)) from exc
    expected = (version_id, segment_index, block_index, k, n, plaintext_length)
    got = (
        header.version_id,
        header.segment_index,
        header.block_index,
        header.k,
        header.n,
        header.segment_length,
    )
    if got != expected:
        raise blockformat.BlockCorrupt(f"block header {got} does not match {expected}")
    return payload, header.nonce or None


def decode_segment(
    payloads: dict[int, bytes],
    k: int,
    n: int,
    version_key: bytes,
    version_id: str,
    segment_index: int,
    plaintext_length: int,
    nonce: bytes | None = None,
) -> bytes:
    """Erasure-decode then decrypt one segment (``nonce`` from its blocks; None for old blocks). Worker thread."""
    encrypted = erasure.decode(payloads, k, n, plaintext_length + segment_crypto.TAG_SIZE)
    return segment_crypto.decrypt_segment(version_key, version_id, segment_index, plaintext_length, encrypted,
                                          nonce)


class Downloader:
    """Restores file versions from a fixed set of n supplier positions (``None`` = no supplier)."""

    log = Logger()

    def __init__(
        self,
        run_in_thread: RunInThread,
        clock: IReactorTime,
        servers: list[IStorageServer | None],
        k: int,
        n: int,
        max_in_flight: int = 2,
        fetch_timeout: float = 60.0,
        hedge_floor: float = HEDGE_FLOOR,
    ):
        erasure.check_params(k, n)
        if len(servers) != n:
            raise BadRequest(f"need exactly n={n} server positions, got {len(servers)}")
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise BadRequest("max_in_flight must be at least 1")
        if fetch_timeout <= 0:
            raise BadRequest("fetch_timeout must be positive")
        self.run_in_thread = run_in_thread
        self.clock = clock
        self.servers = list(servers)
        self.k = k
        self.n = n
        self.max_in_flight = max_in_flight
        self.fetch_timeout = fetch_timeout
        self.hedge_floor = hedge_floor
        self.in_flight = 0
        self.peak_in_flight = 0
        self._job: _DownloadJob | None = None

    def download(
        self,
        segments_meta: list[SegmentMeta] | tuple[SegmentMeta, ...],
        version_id: str,
        version_key: bytes,
        customer_id: str,
        dest_path: str,
        fetch_timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
        root: str | None = None,
        mode: int | None = None,
        mtime_ns: int | None = None,
        part_name: str | None = None,
        resume_at: tuple[int, int] | None = None,
        checkpoint_bytes: int = 0,
        on_checkpoint: Callable[[int, int], defer.Deferred | None] | None = None,
    ) -> defer.Deferred:
        """Restore a version to ``dest_path``; fires with a :class:`DownloadResult`.

        ``segments_meta`` must be every segment of the version (indexes 0..N-1).
        ``root``: the folder of a folder download; the folders between it and
        ``dest_path`` are made as needed and are never links
        (:func:`bitnode.storage.local_files.create_part`). ``mode`` and
        ``mtime_ns`` (kept at upload) are given to the file once complete.

        Going on after an interruption: ``part_name`` names the temporary
        file, ``resume_at = (segments, bytes)`` what of it is known to be on
        disk (it is cut there and the download goes on from that segment; a
        part that is missing or shorter starts over). Every
        ``checkpoint_bytes`` written (and when cancelled with
        ``keep_part``) the part is synced and ``on_checkpoint(segments,
        bytes)`` told, so a journal can record how far it is durable.
        Fails with :class:`DownloadFailed`, :class:`TransferCancelled` or
        :class:`segment_crypto.SegmentIntegrityError` (wrong key); the
        destination is then untouched and no ``.part`` file remains.
        """
        segment_crypto.validate_version_id(version_id)
        validate_customer_id(customer_id)
        if not isinstance(version_key, bytes) or len(version_key) != segment_crypto.KEY_SIZE:
            raise BadRequest("version key must be 32 bytes")
        segments = tuple(sorted(segments_meta, key=lambda m: m.index))
        self._check_segments(segments)
        timeout = self.fetch_timeout if fetch_timeout is None else fetch_timeout
        if timeout <= 0:
            raise BadRequest("fetch_timeout must be positive")
        if self._job is not None:
            raise Conflict("a download is already running on this downloader")
        job = _DownloadJob(
            self, segments, version_id, version_key, customer_id, dest_path, timeout, on_progress
        )
        job.root, job.finish_as, job.part_name = root, (mode, mtime_ns), part_name
        job.resume_at, job.checkpoint_bytes, job.on_checkpoint = resume_at, checkpoint_bytes, on_checkpoint
        self._job = job

        def done(result):
            self._job = None
            return result

        return defer.Deferred.fromCoroutine(job.run()).addBoth(done)

    def cancel(self, keep_part: bool = False) -> None:
        """Cancel the running download; pending fetches are cancelled and the .part removed.

        ``keep_part``: the part stays, synced, and ``on_checkpoint`` hears how
        far it is (a node stopping: the download goes on at its next start).
        """
        if self._job is not None:
            self._job.keep_part = self._job.keep_part or keep_part
            self._job.cancel()

    def _check_segments(self, segments: tuple[SegmentMeta, ...]) -> None:
        if not segments:
            raise BadRequest("a version has at least one segment")
        for expected, meta in enumerate(segments):
            if meta.index != expected:
                raise BadRequest(f"segment indexes must be 0..{len(segments) - 1}, missing {expected}")
            if len(meta.block_sha256) != self.n:
                raise BadRequest(
                    f"segment {meta.index} has {len(meta.block_sha256)} block hashes, n={self.n}"
                )
            if any(not 0 <= pos < self.n for pos in meta.stored):
                raise BadRequest(f"segment {meta.index} lists a block position out of range")

    def _hold(self, delta: int) -> None:
        self.in_flight += delta
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)


class _DownloadJob:
    """The state of one running download."""

    def __init__(
        self, dl: Downloader, segments, version_id, key, customer_id, dest_path, timeout, on_progress
    ):
        self.dl = dl
        self.segments: tuple[SegmentMeta, ...] = segments
        self.version_id = version_id
        self.key = key
        self.customer_id = customer_id
        self.dest_path = dest_path
        self.root: str | None = None
        self.finish_as: tuple[int | None, int | None] = (None, None)
        self.timeout = timeout
        self.on_progress = on_progress
        self.cancelled = False
        self.error: BaseException | None = None
        self.problems: list[BlockProblem] = []
        self.used: dict[int, tuple[int, ...]] = {}
        self.pending: set[defer.Deferred] = set()
        self.patience = Patience(dl.hedge_floor, timeout)
        # Positions that failed or kept a segment waiting: asked last from then on.
        self.suspects: set[int] = set()
        self.turns = [defer.Deferred() for _ in segments]
        self.part: local_files.PartFile | None = None
        self.part_name: str | None = None
        self.resume_at: tuple[int, int] | None = None
        self.checkpoint_bytes = 0
        self.on_checkpoint: Callable[[int, int], defer.Deferred | None] | None = None
        self.keep_part = False
        self.first = 0  # the first segment this run fetches
        self.segments_written = 0
        self.bytes_written = 0
        self.resumed_bytes = 0
        self.checkpointed = 0
        self.bytes_total = sum(m.plaintext_length for m in segments)
        self.started = dl.clock.seconds()

    def cancel(self) -> None:
        self.cancelled = True
        for d in list(self.pending):
            d.cancel()

    def stopping(self) -> bool:
        return self.cancelled or self.error is not None

    async def open_part(self) -> local_files.PartFile:
        """The part to write: the interrupted one cut to its checkpoint, else a new one."""
        dl = self.dl
        if self.resume_at is not None and self.part_name is not None:
            segments, size = self.resume_at
            # The journal's figures must fall on a segment boundary of this very version.
            if 0 <= segments <= len(self.segments) and size == sum(
                    m.plaintext_length for m in self.segments[:segments]):
                try:
                    part = await dl.run_in_thread(local_files.reopen_part, self.dest_path, self.root,
                                                  self.part_name, size)
                except (OSError, BitnodeError):
                    pass
                else:
                    self.first = self.segments_written = segments
                    self.bytes_written = self.resumed_bytes = self.checkpointed = size
                    return part
            await dl.run_in_thread(local_files.remove_part, self.dest_path, self.root, self.part_name)
        return await dl.run_in_thread(local_files.create_part, self.dest_path, self.root, self.part_name)

    async def checkpoint(self) -> None:
        """Sync the part and say how far it is on disk; a failing journal does not stop the download."""
        if self.on_checkpoint is None or self.part is None:
            return
        try:
            await self.dl.run_in_thread(self.part.sync)
            self.checkpointed = self.bytes_written
            await defer.maybeDeferred(self.on_checkpoint, self.segments_written, self.bytes_written)
        except Exception:  # noqa: BLE001 - the download goes on; a restart then starts it over
            self.dl.log.failure("download checkpoint of {version} failed", version=self.version_id)

    async def run(self) -> DownloadResult:
        dl = self.dl
        kept = False
        try:
            self.part = await self.open_part()
            if self.first < len(self.turns):
                self.turns[self.first].callback(None)
            window = defer.DeferredSemaphore(dl.max_in_flight)
            tasks = []
            for meta in self.segments[self.first:]:
                await window.acquire()
                if self.stopping():
                    window.release()
                    break
                task = defer.Deferred.fromCoroutine(self.one_segment(meta))
                task.addBoth(lambda _, w=window: w.release())
                tasks.append(task)
            await defer.DeferredList(tasks)
            if self.cancelled and self.keep_part and self.on_checkpoint is not None:
                await self.checkpoint()
                await dl.run_in_thread(self.part.keep)
                kept = True
            if self.cancelled:
                raise TransferCancelled(f"download of {self.version_id} cancelled")
            if self.error is not None:
                raise self.error
            await dl.run_in_thread(self.part.finish, *self.finish_as)
        except BaseException as exc:
            if self.part is not None and not kept:
                if self.on_checkpoint is not None and isinstance(exc, Unavailable):
                    # Suppliers missing: the caller may try again later from what is on disk.
                    await self.checkpoint()
                    await dl.run_in_thread(self.part.keep)
                else:
                    await dl.run_in_thread(self.part.abort)
            raise
        return DownloadResult(
            self.dest_path,
            self.bytes_written,
            len(self.segments),
            tuple(self.used.get(i, ()) for i in range(len(self.segments))),
            tuple(self.problems),
            self.first,
        )

    async def one_segment(self, meta: SegmentMeta) -> None:
        dl = self.dl
        dl._hold(+1)
        try:
            plaintext = await self.fetch_and_decode(meta)
            await self.turns[meta.index]
            if self.stopping():
                return
            await dl.run_in_thread(self.part.write, plaintext)
            self.bytes_written += len(plaintext)
            self.segments_written = meta.index + 1
            del plaintext
            self.report_progress(meta.index + 1)
            if self.checkpoint_bytes and self.bytes_written - self.checkpointed >= self.checkpoint_bytes:
                await self.checkpoint()  # before the next segment's turn: the figures match the file
        except Exception as exc:  # noqa: BLE001 - recorded and re-raised by run()
            if self.error is None and not self.cancelled:
                self.error = exc
        finally:
            dl._hold(-1)
            following = meta.index + 1
            if following < len(self.turns) and not self.turns[following].called:
                self.turns[following].callback(None)

    async def fetch_and_decode(self, meta: SegmentMeta) -> bytes:
        dl = self.dl
        good = await self.fetch_blocks(meta)
        if self.cancelled:
            raise TransferCancelled(f"download of {self.version_id} cancelled")
        if len(good) < dl.k:
            mine = tuple(p for p in self.problems if p.segment_index == meta.index)
            raise DownloadFailed(
                f"segment {meta.index} of {self.version_id}: only {len(good)} of {dl.k} needed blocks available",
                meta.index,
                mine,
            )
        chosen = erasure.choose_blocks(list(good), dl.k)
        self.used[meta.index] = tuple(chosen)
        nonces = {good[pos][1] for pos in chosen}
        payloads = {pos: good.pop(pos)[0] for pos in chosen}
        good.clear()
        if len(nonces) != 1:
            # Every block the catalog's hashes admit was written with the segment's one nonce.
            raise segment_crypto.SegmentIntegrityError(
                f"segment {meta.index} of {self.version_id}: its blocks name different nonces")
        return await dl.run_in_thread(
            decode_segment, payloads, dl.k, dl.n, self.key, self.version_id, meta.index, meta.plaintext_length,
            nonces.pop()
        )

    async def fetch_blocks(self, meta: SegmentMeta) -> dict[int, tuple[bytes, bytes | None]]:
        """Good blocks of one segment by position, as (payload, nonce): k of them unless too few could be had."""
        dl = self.dl
        queue: deque[int] = deque()
        # Data blocks first (decoding them is cheapest), suppliers that let us down last.
        for pos in sorted(meta.stored, key=lambda p: (p in self.suspects, p)):
            if dl.servers[pos] is None:
                self.problems.append(
                    BlockProblem(meta.index, pos, "no-supplier", "no supplier at this position")
                )
            else:
                queue.append(pos)
        good: dict[int, tuple[bytes, bytes | None]] = {}
        fetching: dict[int, defer.Deferred] = {}
        requests: set[defer.Deferred] = set()
        wake: list[defer.Deferred] = []

        def poke(hedge: bool) -> None:
            if wake:
                wake.pop().callback(hedge)

        def landed(outcome: tuple | Failure | None, pos: int) -> None:
            del fetching[pos]
            if isinstance(outcome, Failure):  # a bug, not a supplier's fault: say so, use another block
                dl.log.failure("fetching block {pos} of segment {index} failed", outcome, pos=pos, index=meta.index)
                self.problem(meta, pos, "error", f"{outcome.type.__name__}: {outcome.getErrorMessage()}")
            elif outcome is not None and len(good) < dl.k:
                good[pos] = outcome
            poke(False)

        def start(pos: int) -> None:
            fetching[pos] = defer.Deferred.fromCoroutine(self.fetch_one(meta, pos, requests))
            fetching[pos].addBoth(landed, pos)

        while not self.stopping() and len(good) < dl.k:
            while queue and len(fetching) + len(good) < dl.k:
                start(queue.popleft())
            if not fetching:
                break
            waiter = defer.Deferred()
            wake.append(waiter)
            timer = dl.clock.callLater(self.patience.delay(), poke, True)
            hedge = await waiter
            if timer.active():
                timer.cancel()
            if hedge:
                # Nothing arrived for a while: the fetches still running are slow.
                self.suspects.update(fetching)
                if queue:
                    start(queue.popleft())
        for request in list(requests):  # blocks nobody needs any more
            request.cancel()
        return good

    async def fetch_one(self, meta: SegmentMeta, pos: int, requests: set[defer.Deferred]) -> tuple | None:
        dl = self.dl
        path = block_path(self.version_id, meta.index, pos)
        started = dl.clock.seconds()
        d = defer.maybeDeferred(dl.servers[pos].fetch_block, self.customer_id, path, meta.block_sha256[pos])
        d.addTimeout(self.timeout, dl.clock)
        self.pending.add(d)
        requests.add(d)
        try:
            data = await d
        except defer.TimeoutError:
            self.suspects.add(pos)
            return self.problem(meta, pos, "timeout", f"no answer in {self.timeout}s")
        except defer.CancelledError:
            return None
        except BlockNotFound as exc:
            return self.problem(meta, pos, "missing", str(exc))
        except blockformat.BlockCorrupt as exc:  # the server checked it against the catalog's hash
            return self.problem(meta, pos, "corrupt", str(exc))
        except Exception as exc:  # noqa: BLE001 - any supplier failure means: try another block
            self.suspects.add(pos)
            return self.problem(meta, pos, "error", f"{exc.__class__.__name__}: {exc}")
        finally:
            self.pending.discard(d)
            requests.discard(d)
        self.patience.record(dl.clock.seconds() - started)
        self.suspects.discard(pos)  # slow but answering: the patience now allows for it
        if self.stopping():
            return None
        try:
            return await dl.run_in_thread(
                verify_block,
                data,
                meta.block_sha256[pos],
                self.version_id,
                meta.index,
                pos,
                dl.k,
                dl.n,
                meta.plaintext_length,
            )
        except blockformat.BlockCorrupt as exc:
            return self.problem(meta, pos, "corrupt", str(exc))

    def problem(self, meta: SegmentMeta, pos: int, kind: str, detail: str) -> None:
        self.problems.append(BlockProblem(meta.index, pos, kind, detail))
        return None

    def report_progress(self, segments_done: int) -> None:
        if self.on_progress is None:
            return
        now = self.dl.clock.seconds()
        progress = make_progress(
            self.bytes_written,
            self.bytes_total,
            segments_done,
            len(self.segments),
            self.started,
            now,
            self.bytes_written - self.resumed_bytes,
        )
        try:
            self.on_progress(progress)
        except Exception:  # noqa: BLE001 - a broken observer must not break the download
            self.dl.log.failure("download progress callback failed")
