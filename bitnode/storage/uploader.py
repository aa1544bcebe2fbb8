"""Upload one file version: read, encrypt, erasure-code and send it segment by segment.

The file is cut into segments of ``segment_size`` bytes (an empty file is one
empty segment). For each segment a worker thread reads it, encrypts it
(:mod:`segment_crypto`), splits it into n blocks (:mod:`erasure`), wraps each
block in the stored format (:mod:`blockformat`) and hashes it, building each
block directly inside the ``Data`` payload that carries it (:mod:`wire`
layout 2: one copy and one SHA-256 pass give the block, its catalog hash and
the packet's payload hash); the reactor then sends block ``i`` to
``servers[i]``, handing the ready payload along (``data_payload``). At most ``max_in_flight`` segments
exist at any moment (being prepared or being sent), so memory is bounded by
``max_in_flight * segment_size * n / k`` whatever the file size.

When is a segment OK?  Only when at least ``required_blocks`` distinct block
positions were acknowledged by their supplier; ``required_blocks`` defaults to
k and can never be lower, so an "OK" segment is always restorable. Positions
that failed (error, timeout, no supplier) are listed in ``SegmentMeta.missing``
for the rebuilder.

A silent supplier must not cost a full store timeout per segment
(:mod:`bitnode.storage.patience`): once a segment has its ``required_blocks``,
a store still waiting after a few times the slowest recent acknowledgement
(at least ``grace_floor``) is given up and left to the rebuilder, and that
supplier is skipped for a while (a minute, doubling each time it lets us down
again) before it is tried again.

If any segment ends below ``required_blocks`` the upload
stops launching segments, lets the in-flight ones finish, and fails with
:class:`UploadFailed`, which carries the segments that did succeed and the
``resume_from`` index to pass to a later :meth:`Uploader.upload`.

Resuming is safe because a segment's nonce is derived from its content
(:func:`bitnode.storage.segment_crypto.synthetic_nonce`): an unchanged file
produces the very same blocks, and a file that changed without its size or
mtime showing it gets fresh nonces, never a reused one. A file whose size or
mtime changed since the first attempt becomes a new version with a new key.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bitnode.errors import BadRequest, Conflict, Unavailable
from bitnode.storage import blockformat, erasure, segment_crypto, wire
from bitnode.storage.catalog_format import MAX_SEGMENT_SIZE, segment_count
from bitnode.storage.patience import GraceWait, Patience
from bitnode.storage.ports import (
    IStorageServer,
    Progress,
    SegmentMeta,
    TransferCancelled,
    block_path,
    make_progress,
    validate_customer_id,
)

MiB = 1024 * 1024
DEFAULT_SEGMENT_SIZE = 4 * MiB
# Least wait for the stragglers of a segment that already has its required blocks: giving one
# up costs a rebuild later, so be generous.
GRACE_FLOOR = 10.0
# A supplier whose store was given up is skipped this long, doubling on each new give-up.
SKIP_FIRST = 60.0
SKIP_MAX = 600.0

RunInThread = Callable[..., defer.Deferred]
ProgressCallback = Callable[[Progress], None]
SegmentCallback = Callable[[SegmentMeta], "defer.Deferred | None"]


class UploadFailed(Unavailable):
    """Some segment could not be stored on enough suppliers.

    ``completed`` holds the segments that were stored OK (they stay valid),
    ``resume_from`` the first segment index to upload again, ``failures`` every
    block store that failed.
    """

    def __init__(
        self,
        message: str,
        completed: tuple[SegmentMeta, ...] = (),
        resume_from: int = 0,
        failures: tuple[StoreFailure, ...] = (),
    ):
        super().__init__(message)
        self.completed = completed
        self.resume_from = resume_from
        self.failures = failures


class FileChanged(Conflict):
    """The file is shorter or longer than when the upload started."""


@dataclass(frozen=True)
class StoreFailure:
    """One block a supplier did not acknowledge, and why."""

    segment_index: int
    block_index: int
    reason: str


@dataclass(frozen=True)
class PreparedSegment:
    """One segment ready to send: the n stored-format blocks, their hashes and their ``Data`` payloads.

    ``blocks[i]`` is a view into ``payloads[i].payload`` (no copy of its own).
    """

    index: int
    plaintext_length: int
    blocks: tuple[memoryview, ...]
    block_sha256: tuple[str, ...]
    payloads: tuple[wire.DataPayload, ...] = ()


@dataclass(frozen=True)
class UploadResult:
    """What a finished upload stored; ``segments`` is sorted by index."""

    version_id: str
    file_size: int
    segment_size: int
    segments_total: int
    resume_from: int
    segments: tuple[SegmentMeta, ...]
    failures: tuple[StoreFailure, ...]

    @property
    def degraded(self) -> tuple[int, ...]:
        """Indexes of segments stored OK but on fewer than n suppliers."""
        return tuple(s.index for s in self.segments if s.missing)


def prepare_segment(
    path: str,
    index: int,
    segment_size: int,
    file_size: int,
    version_id: str,
    version_key: bytes,
    k: int,
    n: int,
    timings: dict[str, float] | None = None,
) -> PreparedSegment:
    """Read, encrypt, encode, pack and hash one segment. Runs in a worker thread.

    ``timings``, if given, accumulates seconds spent per stage (read, encrypt,
    encode, pack_hash) for the benchmark.
    """
    offset = index * segment_size
    expected = max(0, min(segment_size, file_size - offset))
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(expected)
        if len(data) != expected or (index == segment_count(file_size, segment_size) - 1 and f.read(1)):
            raise FileChanged(f"{path} changed size during upload")
    t1 = time.perf_counter()
    nonce, encrypted = segment_crypto.encrypt_segment(version_key, version_id, index, data)
    del data
    t2 = time.perf_counter()
    raw_blocks = erasure.encode_views(encrypted, k, n)  # views: pack() below makes the one copy
    del encrypted
    t3 = time.perf_counter()
    # One copy and one SHA-256 pass per block: the block inside its Data payload, its payload hash, the
    # whole-block hash the catalog keeps and the payload hash the packet signs.
    payloads = []
    hashes = []
    for i, raw in enumerate(raw_blocks):
        path = block_path(version_id, index, i)
        trailer = wire.data_trailer(path)
        built, block_sha256, payload_sha256 = blockformat.pack_with_suffix(
            version_id, index, i, k, n, expected, raw, nonce, trailer)
        payloads.append(wire.DataPayload(path, built, len(built) - len(trailer), payload_sha256))
        hashes.append(block_sha256)
    del raw_blocks
    t4 = time.perf_counter()
    if timings is not None:
        for name, spent in (
            ("read", t1 - t0),
            ("encrypt", t2 - t1),
            ("encode", t3 - t2),
            ("pack_hash", t4 - t3),
        ):
            timings[name] = timings.get(name, 0.0) + spent
    return PreparedSegment(index, expected, tuple(p.block for p in payloads), tuple(hashes), tuple(payloads))


def file_size_of(path: str) -> int:
    """Size of a regular file (worker thread helper)."""
    st = os.stat(path)
    return st.st_size


def pipeline_limit(path: str, k: int = 3, n: int = 5, segment_size: int = DEFAULT_SEGMENT_SIZE) -> dict:
    """Measure read -> encrypt -> encode -> hash for a whole file, single thread, no network.

    Returns bytes, seconds, MiB/s and the seconds spent in each stage, so a
    benchmark can compare network upload speed with the in-process limit.
    """
    erasure.check_params(k, n)
    size = file_size_of(path)
    key = segment_crypto.new_version_key()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    for index in range(segment_count(size, segment_size)):
        prepare_segment(path, index, segment_size, size, "bench", key, k, n, timings)
    seconds = time.perf_counter() - start
    return {
        "bytes": size,
        "k": k,
        "n": n,
        "segment_size": segment_size,
        "seconds": seconds,
        "mib_per_s": (size / MiB) / seconds if seconds > 0 else float("inf"),
        "stages": timings,
    }


class Uploader:
    """Uploads file versions to a fixed set of n supplier positions.

    ``servers[i]`` receives block ``i`` of every segment; ``None`` means no
    supplier at that position (its blocks are counted missing). One upload
    runs at a time per Uploader. ``in_flight`` / ``peak_in_flight`` count the
    segments held in memory (being prepared or sent).
    """

    log = Logger()

    def __init__(
        self,
        run_in_thread: RunInThread,
        clock: IReactorTime,
        servers: list[IStorageServer | None],
        k: int,
        n: int,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        max_in_flight: int = 2,
        required_blocks: int | None = None,
        store_timeout: float = 120.0,
        grace_floor: float = GRACE_FLOOR,
    ):
        erasure.check_params(k, n)
        if len(servers) != n:
            raise BadRequest(f"need exactly n={n} server positions, got {len(servers)}")
        if not isinstance(segment_size, int) or not 1 <= segment_size <= MAX_SEGMENT_SIZE:
            raise BadRequest(f"segment size must be 1..{MAX_SEGMENT_SIZE} bytes")
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise BadRequest("max_in_flight must be at least 1")
        required = k if required_blocks is None else required_blocks
        if not k <= required <= n:
            raise BadRequest(f"required_blocks must be between k={k} and n={n}")
        if store_timeout <= 0:
            raise BadRequest("store_timeout must be positive")
        self.run_in_thread = run_in_thread
        self.clock = clock
        self.servers = list(servers)
        self.k = k
        self.n = n
        self.segment_size = segment_size
        self.max_in_flight = max_in_flight
        self.required_blocks = required
        self.store_timeout = store_timeout
        self.grace_floor = grace_floor
        self.in_flight = 0
        self.peak_in_flight = 0
        self._job: _UploadJob | None = None

    def upload(
        self,
        file_path: str,
        version_id: str,
        version_key: bytes,
        customer_id: str,
        resume_from: int = 0,
        on_progress: ProgressCallback | None = None,
        on_segment: SegmentCallback | None = None,
    ) -> defer.Deferred:
        """Upload ``file_path`` as ``version_id``; fires with an :class:`UploadResult`.

        Segments below ``resume_from`` are assumed stored and are neither read
        nor sent. ``on_segment(meta)`` is called for every segment stored on
        enough suppliers, before it counts as done; it may return a Deferred
        (the catalog persists the segment there, so a restart resumes after it)
        and if it fails the upload fails. Fails with :class:`UploadFailed`, :class:`TransferCancelled`,
        :class:`FileChanged` or the error that stopped it.
        """
        segment_crypto.validate_version_id(version_id)
        validate_customer_id(customer_id)
        if not isinstance(version_key, bytes) or len(version_key) != segment_crypto.KEY_SIZE:
            raise BadRequest("version key must be 32 bytes")
        if not isinstance(resume_from, int) or resume_from < 0:
            raise BadRequest(f"invalid resume_from: {resume_from!r}")
        if self._job is not None:
            raise Conflict("an upload is already running on this uploader")
        job = _UploadJob(self, file_path, version_id, version_key, customer_id, resume_from, on_progress)
        job.on_segment = on_segment
        self._job = job
        d = defer.Deferred.fromCoroutine(job.run())

        def done(result):
            self._job = None
            return result

        return d.addBoth(done)

    def cancel(self) -> None:
        """Cancel the running upload: nothing more is sent, pending stores are cancelled."""
        if self._job is not None:
            self._job.cancel()

    def _hold(self, delta: int) -> None:
        self.in_flight += delta
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)


class _UploadJob:
    """The state of one running upload (one per :meth:`Uploader.upload` call)."""

    def __init__(self, up: Uploader, path, version_id, key, customer_id, resume_from, on_progress):
        self.up = up
        self.path = path
        self.version_id = version_id
        self.key = key
        self.customer_id = customer_id
        self.resume_from = resume_from
        self.on_progress = on_progress
        self.on_segment: SegmentCallback | None = None
        self.cancelled = False
        self.error: BaseException | None = None
        self.done: dict[int, SegmentMeta] = {}
        self.failures: list[StoreFailure] = []
        self.pending: set[defer.Deferred] = set()
        self.patience = Patience(up.grace_floor, up.store_timeout)
        # position -> (skipped until, how long the next skip lasts)
        self.skipped: dict[int, tuple[float, float]] = {}
        self.started = up.clock.seconds()
        self.bytes_this_run = 0
        self.file_size = 0
        self.total = 0

    def cancel(self) -> None:
        self.cancelled = True
        for d in list(self.pending):
            d.cancel()

    def stopping(self) -> bool:
        return self.cancelled or self.error is not None

    async def run(self) -> UploadResult:
        up = self.up
        self.file_size = await up.run_in_thread(file_size_of, self.path)
        self.total = segment_count(self.file_size, up.segment_size)
        if self.resume_from > self.total:
            raise BadRequest(f"resume_from {self.resume_from} beyond the {self.total} segments")
        window = defer.DeferredSemaphore(up.max_in_flight)
        tasks = []
        for index in range(self.resume_from, self.total):
            await window.acquire()
            if self.stopping():
                window.release()
                break
            task = defer.Deferred.fromCoroutine(self.one_segment(index))
            task.addBoth(lambda _, w=window: w.release())
            tasks.append(task)
        await defer.DeferredList(tasks)
        if self.cancelled:
            raise TransferCancelled(f"upload of {self.version_id} cancelled")
        completed = tuple(self.done[i] for i in sorted(self.done))
        if self.error is not None and not isinstance(self.error, Unavailable):
            raise self.error
        if self.error is not None:
            resume = self.resume_from
            while resume in self.done:
                resume += 1
            raise UploadFailed(
                f"upload of {self.version_id} failed at segment {resume}: {self.error}",
                completed,
                resume,
                tuple(self.failures),
            )
        return UploadResult(
            self.version_id,
            self.file_size,
            up.segment_size,
            self.total,
            self.resume_from,
            completed,
            tuple(self.failures),
        )

    async def one_segment(self, index: int) -> None:
        up = self.up
        up._hold(+1)
        try:
            prepared: PreparedSegment = await up.run_in_thread(
                prepare_segment,
                self.path,
                index,
                up.segment_size,
                self.file_size,
                self.version_id,
                self.key,
                up.k,
                up.n,
            )
            if self.stopping():
                return
            acked = await self.send(prepared)
            meta = SegmentMeta(index, prepared.plaintext_length, prepared.block_sha256, acked)
            del prepared
            if self.cancelled:
                return
            if len(acked) < up.required_blocks:
                if self.error is None:
                    self.error = Unavailable(
                        f"segment {index}: only {len(acked)} of the required {up.required_blocks} blocks stored"
                    )
                return
            if self.on_segment is not None:
                await defer.maybeDeferred(self.on_segment, meta)
            self.done[index] = meta
            self.bytes_this_run += meta.plaintext_length
            self.report_progress()
        except Exception as exc:  # noqa: BLE001 - recorded and re-raised by run()
            if self.error is None and not self.cancelled:
                self.error = exc
        finally:
            up._hold(-1)

    async def send(self, prepared: PreparedSegment) -> tuple[int, ...]:
        up = self.up
        now = up.clock.seconds()
        present = []
        for pos, server in enumerate(up.servers):
            if server is None:
                self.failures.append(StoreFailure(prepared.index, pos, "no supplier"))
            else:
                present.append(pos)
        skipped = [pos for pos in present if self.skipped.get(pos, (0.0, 0.0))[0] > now]
        acked = await self.store_on(prepared, [pos for pos in present if pos not in skipped], up.required_blocks)
        if skipped and len(acked) < up.required_blocks and not self.stopping():
            # Too few without them: a slow supplier is better than none.
            acked += await self.store_on(prepared, skipped, up.required_blocks - len(acked))
        elif skipped:
            self.failures.extend(StoreFailure(prepared.index, pos, "skipped: too slow earlier in this upload")
                                 for pos in skipped)
        return tuple(sorted(acked))

    async def store_on(self, prepared: PreparedSegment, positions: list[int], enough: int) -> list[int]:
        """Send the segment's blocks to ``positions``; the positions that acknowledged."""
        up = self.up
        calls: dict[int, defer.Deferred] = {}
        for pos in positions:
            path = block_path(self.version_id, prepared.index, pos)
            d = defer.maybeDeferred(up.servers[pos].store_block, self.customer_id, path, prepared.blocks[pos],
                                    data_payload=prepared.payloads[pos])
            d.addTimeout(up.store_timeout, up.clock)
            self.pending.add(d)
            d.addBoth(self._forget, d)
            calls[pos] = d
        wait = GraceWait(up.clock, self.patience, calls, enough)
        outcomes = await wait.done
        acked = []
        for pos in positions:
            ok, value = outcomes[pos]
            if ok:
                acked.append(pos)
            elif pos in wait.given_up:
                self.give_up_on(pos)
                self.failures.append(StoreFailure(prepared.index, pos, "given up: no answer while the others answered"))
            elif not self.cancelled:
                self.failures.append(StoreFailure(prepared.index, pos, _reason(value)))
        return acked

    def give_up_on(self, pos: int) -> None:
        """Skip a supplier that kept a segment waiting: a minute first, twice as long each time after."""
        _, skip = self.skipped.get(pos, (0.0, SKIP_FIRST))
        self.skipped[pos] = (self.up.clock.seconds() + skip, min(SKIP_MAX, 2 * skip))

    def _forget(self, result, d: defer.Deferred):
        self.pending.discard(d)
        return result

    def report_progress(self) -> None:
        if self.on_progress is None:
            return
        up = self.up
        before = min(self.file_size, self.resume_from * up.segment_size)
        done_bytes = before + sum(m.plaintext_length for m in self.done.values())
        progress = make_progress(
            done_bytes,
            self.file_size,
            self.resume_from + len(self.done),
            self.total,
            self.started,
            up.clock.seconds(),
            self.bytes_this_run,
        )
        try:
            self.on_progress(progress)
        except Exception:  # noqa: BLE001 - a broken observer must not break the upload
            up.log.failure("upload progress callback failed")


def _reason(failure) -> str:
    if failure.check(defer.TimeoutError):
        return "timeout"
    return f"{failure.type.__name__}: {failure.getErrorMessage()}"
