"""backup_monitor: check what the suppliers hold against the catalog, rebuild what is missing.

The machine, read top to bottom::

    READY --restart | suppliers-changed | timer-10min--> FIRE_HIRE
    FIRE_HIRE --suppliers-ready | timer-1min--> LIST_FILES      (fire_hire settled, or stop waiting)
    LIST_FILES --catalog-read--> LIST_BACKUPS                   (snapshot of the catalog's blocks)
    LIST_BACKUPS --lists-received--> REBUILDING                 (list_blocks of every supplier)
    LIST_BACKUPS --suppliers-changed--> FIRE_HIRE               (those listings are stale: start again now)
    REBUILDING --rebuilt--> READY, or FIRE_HIRE again when a restart came meanwhile
    any --failed--> READY (the error is kept in the figures)

Comparing, per block of every recorded segment (position p, current supplier
``cur = positions[p]``):

- ``cur`` lists the block with the catalog's SHA-256: it is held (the catalog
  is corrected if it named someone else);
- ``cur`` answered its listing but lacks the block or reports another hash:
  the block is missing (``set_block_holder(..., "")``) and is rebuilt on ``cur``;
- ``cur`` did not answer, or the position is empty: nothing can be said or
  done now, except that a holder who is no longer at that position has lost it;
  a retiring holder has ``retiring_list_timeout`` seconds to answer (less
  than a current supplier: a replaced supplier is often a dead one, and the
  rebuild should not wait a whole request timeout for it; one that is late is
  treated as silent, which is safe: its blocks are decoded from the others and
  it keeps them until they are on its successor);
- a *retiring* holder of p (a replaced supplier not released yet) that lists
  the block keeps it readable: it is recorded as the holder until the block
  is on ``cur``, and it is a source for rebuilds. A retiring holder that did
  not answer keeps its recorded blocks.

Rebuilding one segment: a missing block a retiring holder still lists is
copied from it as it is (no decoding). The others: fetch k held blocks at
once (data blocks first; each checked against the catalog hash and its
header, a bad one is itself marked missing and rebuilt, and the next source
is asked instead), decode the encrypted segment with zfec, encode it again,
pack the missing positions, check their SHA-256 equals the catalog's, store
each on the current supplier of its position and only after its ack record
the holder. No key is needed: the blocks are ciphertext. A segment with fewer
than k held blocks is reported as unrecoverable for now and left alone. The
monitor never deletes anything; it only adds copies.

``segments_in_flight()`` segments are checked and rebuilt at once (each
worker takes the next segment when its own is stored and acknowledged), so
fetches, decoding and the new supplier's writes overlap and its acks are
awaited in a window, not one by one; memory is bounded by that many segments
(at most n blocks each). Holders are recorded in the catalog in batches of
:data:`HOLDER_BATCH` (one transaction each) and always before the run ends: a
crash before that loses nothing, the next run finds the blocks listed on the
current supplier and records them.

After a whole run, each retiring holder's rebuild is reported (blocks of its
position on the current supplier, of all) and the holders nothing depends on
any more (every block of their position is on the current supplier, or they
answered and hold none of the missing ones) are released, once the catalog
backup is current (``backup_current()``; :meth:`BackupMonitor.release_ready`
is called again after each backup): only then are they told to delete. A run
that leaves holders waiting for that backup asks for it at once
(``backup_soon()``) instead of waiting for the backup delay.

The neighbours are injected: ``provider()`` returns the supplier provider
(``positions() -> list[str]``, ``server(supplier_id) -> IStorageServer``,
optionally ``settled() -> Deferred | None``, ``retiring() -> [{"supplier_id",
"position"}]``, ``rebuild_progress(report)``, ``release(supplier_id)``) or
raises Unavailable; tests use fakes and a Clock.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterator

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from automats import Automat
from bitnode.errors import BitnodeError, NotFound
from bitnode.storage import blockformat
from bitnode.storage.catalog import Catalog
from bitnode.storage.downloader import verify_block
from bitnode.storage.ports import BlockNotFound, block_path
from bitnode.storage.rebuild_plan import SegmentPlan, catalog_snapshot, regenerate_blocks

RunInThread = Callable[..., defer.Deferred]
MAX_REPORTED = 100
#: Holder changes recorded in the catalog in one transaction (a rebuild's catalog writes cost one fsync per batch).
HOLDER_BATCH = 256
#: Default of segments checked and rebuilt at once (the setting services/backups/rebuild-segments-in-flight).
REBUILD_SEGMENTS_IN_FLIGHT = 8
LOST = object()  # a fetch answer meaning: this supplier has no good copy


def _lists(listing: dict | None, path: str, sha256: str) -> bool:
    """Does a supplier's listing show this block with the catalog's hash?"""
    entry = listing.get(path) if listing is not None else None
    return entry is not None and entry[1] == sha256


def _new_figures() -> dict:
    return {"segments_checked": 0, "blocks_checked": 0, "blocks_held": 0, "blocks_unknown": 0,
            "blocks_missing": 0, "blocks_rebuilt": 0, "bytes_rebuilt": 0, "rebuild_failures": 0,
            "blocks_on_retiring": 0, "blocks_copied": 0, "holders_released": 0,
            "unrecoverable_segments": 0, "suppliers_listed": 0, "suppliers_unreachable": [],
            "holders_corrected": 0, "unrecoverable": [], "errors": [],
            # the REBUILDING pass: seconds (by the node's clock), segments worked on at once (most seen)
            "rebuild_seconds": None, "segments_in_flight": 0, "segments_in_flight_max": 0}


def _all(coroutines: list) -> defer.Deferred:
    """Run coroutines at once; fires with their results in order (they catch their own errors)."""
    return defer.gatherResults([defer.Deferred.fromCoroutine(c) for c in coroutines], consumeErrors=True)


class BackupMonitor(Automat):
    """Keeps every recorded block on the supplier of its position."""

    name = "backup_monitor"
    initial = "READY"
    timers = {"timer-10min": (600.0, {"READY"}), "timer-1min": (60.0, {"FIRE_HIRE"})}
    transitions = [
        # state           event                guard             next            actions
        ("READY",        "restart",           None,             "FIRE_HIRE",    ["begin_run", "wait_for_suppliers"]),
        ("READY",        "suppliers-changed", None,             "FIRE_HIRE",    ["begin_run", "wait_for_suppliers"]),
        ("READY",        "timer-10min",       None,             "FIRE_HIRE",    ["begin_run", "wait_for_suppliers"]),
        ("FIRE_HIRE",    "suppliers-ready",   None,             "LIST_FILES",   ["read_catalog"]),
        # fire_hire may take long to settle: check with the suppliers we have.
        ("FIRE_HIRE",    "timer-1min",        None,             "LIST_FILES",   ["read_catalog"]),
        ("LIST_FILES",   "catalog-read",      None,             "LIST_BACKUPS", ["list_suppliers"]),
        ("LIST_BACKUPS", "lists-received",    None,             "REBUILDING",   ["rebuild"]),
        ("REBUILDING",   "rebuilt",           "restart_wanted", "FIRE_HIRE",    ["end_run", "begin_run",
                                                                                 "wait_for_suppliers"]),
        ("REBUILDING",   "rebuilt",           None,             "READY",        ["end_run"]),
        # The positions changed while we listed (supplier_change: the old one retires, then the new one is
        # hired): the listings in flight are of the old positions, so start again now instead of after them.
        ("LIST_BACKUPS", "suppliers-changed", None,             "FIRE_HIRE",    ["end_run", "begin_run", "stop_listing",
                                                                                 "wait_for_suppliers"]),
        ("*",            "failed",            "restart_wanted", "FIRE_HIRE",    ["note_failure", "end_run",
                                                                                 "begin_run", "wait_for_suppliers"]),
        ("*",            "failed",            None,             "READY",        ["note_failure", "end_run"]),
        # News while busy: run once more when this run ends.
        ("*",            "restart",           None,             "*",            ["want_restart"]),
        ("*",            "suppliers-changed", None,             "*",            ["want_restart"]),
        # A settle notice that arrives after the timer moved us on.
        ("*",            "suppliers-ready",   None,             "*",            []),
        ("*",            "shutdown",          None,             "CLOSED",       ["stop_work", "destroy"]),
    ]

    def __init__(self, clock: IReactorTime, run_in_thread: RunInThread, catalog: Catalog, customer_id: str,
                 provider: Callable[[], Any], request_timeout: float = 60.0,
                 retiring_list_timeout: Callable[[], float] = lambda: 10.0,
                 on_catalog_changed: Callable[[], None] = lambda: None,
                 backup_current: Callable[[], bool] = lambda: True,
                 backup_soon: Callable[[], None] = lambda: None,
                 segments_in_flight: Callable[[], int] = lambda: REBUILD_SEGMENTS_IN_FLIGHT, **kwargs: Any):
        super().__init__(clock, **kwargs)
        self.backup_current = backup_current
        self.backup_soon = backup_soon
        self.segments_in_flight = segments_in_flight
        self.run_in_thread = run_in_thread
        self.catalog = catalog
        self.customer_id = customer_id
        self.provider = provider
        self.request_timeout = request_timeout
        self.retiring_list_timeout = retiring_list_timeout
        self.on_catalog_changed = on_catalog_changed
        self.figures = _new_figures()
        self.runs = 0
        self.last_started: float | None = None
        self.last_finished: float | None = None
        self.last_error = ""
        self._restart = False
        self._stopping = False
        self._plans: list[SegmentPlan] = []
        self._positions: list[str] = []
        self._listings: dict[str, dict] = {}
        self._retiring: dict[int, list[str]] = {}
        self._retiring_counts: dict[str, dict] = {}
        self._still_needed: set[str] = set()
        self._releasable: list[str] = []
        self._holders: list[tuple[str, int, int, str]] = []  # holder changes not in the catalog yet, in order
        self._worker_failed = False
        #: per retiring holder: blocks of its position on the current supplier, of all (the last run's count)
        self.retiring: dict[str, dict] = {}
        self._pending: set[defer.Deferred] = set()
        self._work: defer.Deferred | None = None

    # --- public ----------------------------------------------------------------------------

    def status(self) -> dict:
        """Progress figures of the current (or last) run, for the API."""
        return {"state": self.state, "runs": self.runs, "last_started": self.last_started,
                "last_finished": self.last_finished, "last_error": self.last_error, **self.figures,
                "retiring": {s: dict(c) for s, c in self.retiring.items()}, "releasable": list(self._releasable)}

    def shutdown(self) -> defer.Deferred:
        """Stop; fires when running work has let go (nothing half-recorded)."""
        work = self._work
        self.event("shutdown")
        if work is None or work.called:
            return defer.succeed(None)
        done = defer.Deferred()
        work.addBoth(lambda _: done.callback(None))
        return done

    # --- guards -------------------------------------------------------------------------------

    def restart_wanted(self, *_: Any) -> bool:
        """A restart or a suppliers change arrived during the run."""
        return self._restart

    # --- actions ------------------------------------------------------------------------------

    def want_restart(self, *_: Any) -> None:
        """Remember to run again."""
        self._restart = True

    def begin_run(self, *_: Any) -> None:
        """New figures for a new run."""
        self._restart = False
        self.runs += 1
        self.last_started = self.clock.seconds()
        self.figures = _new_figures()

    def end_run(self, *_: Any) -> None:
        """Drop what the run held in memory."""
        self.last_finished = self.clock.seconds()
        self._plans, self._listings = [], {}

    def note_failure(self, error: BaseException) -> None:
        """Keep why the run stopped."""
        self.last_error = str(error)
        self.log.info("{id}: check stopped: {error}", id=self.id, error=error)

    def wait_for_suppliers(self, *_: Any) -> None:
        """Let fire_hire finish hiring and firing before we look."""
        try:
            provider = self.provider()
            settled = getattr(provider, "settled", None)
            waiting = settled() if settled is not None else None
        except Exception as err:  # noqa: BLE001 - no provider: this run fails
            self.event("failed", err)
            return
        if waiting is None:
            self.event("suppliers-ready")
        else:
            waiting.addBoth(lambda _: self.event("suppliers-ready") if not self.destroyed else None)

    def read_catalog(self, *_: Any) -> None:
        """LIST_FILES: take a snapshot of every recorded block."""
        self._start(self._read_catalog())

    async def _read_catalog(self) -> None:
        self._plans = await self.run_in_thread(catalog_snapshot, self.catalog)
        self.event("catalog-read")

    def list_suppliers(self, *_: Any) -> None:
        """LIST_BACKUPS: ask every current supplier what it holds."""
        self._start(self._list_suppliers())

    async def _list_suppliers(self) -> None:
        run = self.runs
        provider = self.provider()
        self._positions = list(provider.positions())
        self._retiring = {}
        for holder in getattr(provider, "retiring", list)():
            self._retiring.setdefault(int(holder["position"]), []).append(holder["supplier_id"])
        retiring = [s for former in self._retiring.values() for s in former]
        calls = []
        current = {p for p in self._positions if p}
        for supplier_id in dict.fromkeys([*current, *retiring]):
            d = defer.maybeDeferred(lambda s=supplier_id: provider.server(s).list_blocks(self.customer_id, ""))
            timeout = self.request_timeout if supplier_id in current else float(self.retiring_list_timeout())
            calls.append((supplier_id, self._track(d, timeout)))
        outcomes = await defer.DeferredList([d for _, d in calls], consumeErrors=True)
        if run != self.runs:
            return  # abandoned: the positions changed meanwhile and a new run began
        for (supplier_id, _), (ok, value) in zip(calls, outcomes, strict=True):
            if ok:
                self._listings[supplier_id] = value
                self.figures["suppliers_listed"] += 1
            else:
                self.figures["suppliers_unreachable"].append(supplier_id)
        self.event("lists-received")

    def rebuild(self, *_: Any) -> None:
        """REBUILDING: compare and rebuild, ``segments_in_flight()`` segments at a time."""
        self._start(self._rebuild())

    async def _rebuild(self) -> None:
        provider = self.provider()
        started = self.clock.seconds()
        self._retiring_counts = {s: {"done": 0, "total": 0} for former in self._retiring.values() for s in former}
        self._still_needed = set()
        self._holders = []
        self._worker_failed = False
        plans = iter(self._plans)  # shared by the workers: each takes the next segment
        width = max(1, int(self.segments_in_flight()))
        workers = [defer.Deferred.fromCoroutine(self._check_segments(plans, provider)) for _ in range(width)]
        outcomes = await defer.DeferredList(workers, consumeErrors=True)
        # What was stored is recorded even when a worker failed (the next run would find it anyway).
        await self._record_holders()
        self.figures["rebuild_seconds"] = round(self.clock.seconds() - started, 3)
        for ok, value in outcomes:
            if not ok:
                value.raiseException()
        if self._stopping:
            return
        if any(value for _, value in outcomes):
            self.on_catalog_changed()
        self._settle_retiring(provider)
        self.event("rebuilt")

    async def _check_segments(self, plans: Iterator[SegmentPlan], provider: Any) -> bool:
        """One worker: check (and rebuild) the next segment until none is left; did the catalog change?"""
        changed = False
        figures = self.figures
        for plan in plans:
            if self._stopping or self._worker_failed:
                break
            figures["segments_in_flight"] += 1
            figures["segments_in_flight_max"] = max(figures["segments_in_flight_max"], figures["segments_in_flight"])
            try:
                changed = await self._check_segment(plan, provider) or changed
            except NotFound:
                continue  # the version was deleted meanwhile
            except BaseException:
                self._worker_failed = True  # the others stop too: the run fails
                raise
            finally:
                figures["segments_in_flight"] -= 1
            if len(self._holders) >= HOLDER_BATCH:
                await self._record_holders()
        return changed

    def _note_holder(self, plan: SegmentPlan, pos: int, supplier_id: str) -> None:
        """A block's holder changed: recorded with the next batch (:meth:`_record_holders`)."""
        self._holders.append((plan.version_id, plan.index, pos, supplier_id))

    async def _record_holders(self) -> None:
        """Write the holder changes gathered so far, in one transaction."""
        updates, self._holders = self._holders, []
        if updates:
            await self.run_in_thread(self.catalog.set_block_holders, updates)

    def _settle_retiring(self, provider: Any) -> None:
        """A whole run is done: report each retiring holder's rebuild; those nothing needs may go."""
        self.retiring = {s: dict(c) for s, c in self._retiring_counts.items()}
        report = getattr(provider, "rebuild_progress", None)
        if report is not None:
            report(dict(self.retiring))
        self._releasable = sorted(set(self.retiring) - self._still_needed)
        if self._releasable and not self.release_ready():
            self.backup_soon()  # they wait only for a catalog backup naming their successors: no need to delay it

    def release_ready(self) -> list[str]:
        """Release the retiring holders the last run found unneeded, once the catalog backup is current.

        The node calls it again after each catalog backup: a holder is let go
        only when a new machine restoring that backup would not need it.
        """
        if not self._releasable or not self.backup_current():
            return []
        try:
            release = getattr(self.provider(), "release", None)
        except BitnodeError:
            return []
        released, self._releasable = self._releasable, []
        if release is None:
            return []
        for supplier_id in released:
            self.retiring.pop(supplier_id, None)
            if release(supplier_id):
                self.figures["holders_released"] += 1
                self.log.info("{id}: {s} released: no block in the catalog needs it any more", id=self.id,
                              s=supplier_id)
        return released

    def stop_listing(self, *_: Any) -> None:
        """The listings in flight are of old positions: cancel them (after begin_run: their coroutine sees a
        new run and stops)."""
        for d in list(self._pending):
            d.cancel()

    def stop_work(self, *_: Any) -> None:
        """Shutdown: no new step starts, requests in flight are cancelled."""
        self._stopping = True
        for d in list(self._pending):
            d.cancel()

    # --- one segment ------------------------------------------------------------------------------

    async def _check_segment(self, plan: SegmentPlan, provider: Any) -> bool:
        figures = self.figures
        figures["segments_checked"] += 1
        sources: dict[int, str] = {}  # position -> a supplier listing its block (the current one first)
        keepers: dict[int, str] = {}  # position -> the retiring holder listing its block
        targets, updates = [], []
        for pos, (sha, holder) in enumerate(plan.blocks):
            figures["blocks_checked"] += 1
            path = block_path(plan.version_id, plan.index, pos)
            current = self._current(pos)
            former = self._retiring.get(pos, ())
            listing = self._listings.get(current) if current else None
            if _lists(listing, path, sha):
                sources[pos] = current
                figures["blocks_held"] += 1
                if holder != current:
                    updates.append((pos, current))
                continue
            keeper = next((f for f in former if _lists(self._listings.get(f), path, sha)), "")
            if keeper:
                sources[pos] = keepers[pos] = keeper
                figures["blocks_on_retiring"] += 1
                if holder != keeper:
                    updates.append((pos, keeper))
            elif holder and not self._may_still_hold(holder, current, former):
                updates.append((pos, ""))  # its holder lost it, or is no longer at this position
            if listing is None:
                figures["blocks_unknown"] += 1
            else:
                figures["blocks_missing"] += 1
                targets.append(pos)
        for pos, who in updates:
            self._note_holder(plan, pos, who)
            self.figures["holders_corrected"] += 1
        on_current = {p for p, s in sources.items() if s == self._current(p)}
        if targets:
            on_current |= await self._rebuild_segment(plan, provider, sources, targets)
        self._count_retiring(plan, on_current, keepers)
        return bool(updates or targets)

    def _current(self, pos: int) -> str:
        """The supplier at a position now ("" when empty, or when the position went away)."""
        return self._positions[pos] if pos < len(self._positions) else ""

    def _may_still_hold(self, holder: str, current: str, former: tuple[str, ...]) -> bool:
        """A recorded holder that did not answer its listing may still have the block (one that answered has not)."""
        return (holder == current or holder in former) and holder not in self._listings

    def _count_retiring(self, plan: SegmentPlan, on_current: set[int], keepers: dict[int, str]) -> None:
        """Per retiring holder: blocks of its position now on the current supplier, and whether it is still needed."""
        for pos, former in self._retiring.items():
            if pos >= plan.n:
                continue
            for supplier_id in former:
                counts = self._retiring_counts.setdefault(supplier_id, {"done": 0, "total": 0})
                counts["total"] += 1
                if pos in on_current:
                    counts["done"] += 1
                elif keepers.get(pos) == supplier_id or supplier_id not in self._listings:
                    self._still_needed.add(supplier_id)  # it has (or may have) a copy nobody else has

    async def _rebuild_segment(self, plan: SegmentPlan, provider: Any, sources: dict[int, str],
                               targets: list[int]) -> set[int]:
        """Make the missing blocks on their current suppliers; returns the positions stored."""
        copies = [pos for pos in sorted(targets) if sources.get(pos)]  # a retiring holder still has it
        copied = await _all([self._copy(plan, provider, pos, sources[pos]) for pos in copies])
        stored = {pos for pos, ok in zip(copies, copied, strict=True) if ok}
        for pos in copies:
            if pos not in stored:
                del sources[pos]
        targets = [pos for pos in targets if pos not in stored]
        payloads: dict[int, bytes] = {}
        nonces: set[bytes | None] = set()
        candidates = sorted(sources)  # data blocks first: decoding them is a plain join
        while targets and len(payloads) < plan.k and candidates and not self._stopping:
            wanted = plan.k - len(payloads)
            batch, candidates = candidates[:wanted], candidates[wanted:]
            fetched_all = await _all([self._fetch_verified(plan, provider, pos, sources[pos]) for pos in batch])
            for pos, fetched in zip(batch, fetched_all, strict=True):
                if fetched is LOST:
                    # A listed block that is corrupt or gone when fetched is lost too: rebuild it with the others.
                    self._note_holder(plan, pos, "")
                    self.figures["blocks_missing"] += 1
                    if sources[pos] == self._current(pos):
                        targets.append(pos)
                elif fetched is not None:
                    _, payloads[pos], nonce = fetched
                    nonces.add(nonce)
        if self._stopping or not targets:
            return stored
        if len(payloads) < plan.k:
            self.figures["unrecoverable_segments"] += 1
            if len(self.figures["unrecoverable"]) < MAX_REPORTED:
                self.figures["unrecoverable"].append({"version_id": plan.version_id, "segment": plan.index,
                                                      "available": len(payloads), "needed": plan.k})
            return stored
        if len(nonces) > 1:
            self._problem(f"{plan.version_id}/{plan.index}: its blocks name different nonces")
            return stored
        blocks = await self.run_in_thread(regenerate_blocks, payloads, plan, sorted(targets), nonces.pop())
        payloads.clear()
        ready = []
        for pos in sorted(targets):
            if hashlib.sha256(blocks[pos]).hexdigest() != plan.blocks[pos][0]:
                self._problem(f"{plan.version_id}/{plan.index}/{pos}: rebuilt block differs from the catalog")
            else:
                ready.append(pos)
        acked = await _all([self._store(plan, provider, pos, blocks[pos]) for pos in ready])
        for pos, ok in zip(ready, acked, strict=True):
            if ok:
                stored.add(pos)
                self.figures["blocks_rebuilt"] += 1
                self.figures["bytes_rebuilt"] += len(blocks[pos])
        return stored

    async def _copy(self, plan: SegmentPlan, provider: Any, pos: int, keeper: str) -> bool:
        """Copy a block as it is from the retiring holder ``keeper`` to the current supplier; stored?"""
        if self._stopping:
            return False
        fetched = await self._fetch_verified(plan, provider, pos, keeper)
        if not isinstance(fetched, tuple) or not await self._store(plan, provider, pos, fetched[0]):
            return False
        self.figures["blocks_copied"] += 1
        self.figures["bytes_rebuilt"] += len(fetched[0])
        return True

    async def _store(self, plan: SegmentPlan, provider: Any, pos: int, data: bytes) -> bool:
        """Store one block on the current supplier of its position; once acknowledged, note it as the holder."""
        supplier_id = self._positions[pos]
        try:
            d = defer.maybeDeferred(provider.server(supplier_id).store_block, self.customer_id,
                                    block_path(plan.version_id, plan.index, pos), data)
            await self._track(d)
        except Exception as err:  # noqa: BLE001 - counted; the next run tries again
            self._problem(f"storing {plan.version_id}/{plan.index}/{pos} on {supplier_id}: {err}")
            return False
        self._note_holder(plan, pos, supplier_id)
        return True

    async def _fetch_verified(self, plan: SegmentPlan, provider: Any, pos: int,
                              supplier_id: str) -> tuple | object | None:
        """The verified (block, payload, nonce); LOST if the supplier has no good copy; None if it did not answer."""
        try:
            d = defer.maybeDeferred(provider.server(supplier_id).fetch_block, self.customer_id,
                                    block_path(plan.version_id, plan.index, pos))
            data = await self._track(d)
            payload, nonce = await self.run_in_thread(verify_block, data, plan.blocks[pos][0], plan.version_id,
                                                      plan.index, pos, plan.k, plan.n, plan.plaintext_length)
            return data, payload, nonce
        except blockformat.BlockCorrupt as err:
            self._problem(f"{plan.version_id}/{plan.index}/{pos} on {supplier_id} is corrupt: {err}")
            return LOST
        except BlockNotFound:
            self._problem(f"{plan.version_id}/{plan.index}/{pos} is no longer on {supplier_id}")
            return LOST
        except Exception as err:  # noqa: BLE001 - treated as lost for this run
            self._problem(f"fetching {plan.version_id}/{plan.index}/{pos} from {supplier_id}: {err}")
            return None

    # --- helpers ------------------------------------------------------------------------------------

    def _track(self, d: defer.Deferred, timeout: float | None = None) -> defer.Deferred:
        """Time out and remember a request (shutdown cancels what is still pending)."""
        d.addTimeout(self.request_timeout if timeout is None else timeout, self.clock)
        self._pending.add(d)

        def forget(result):
            self._pending.discard(d)
            return result

        return d.addBoth(forget)

    def _problem(self, text: str) -> None:
        self.figures["rebuild_failures"] += 1
        if len(self.figures["errors"]) < MAX_REPORTED:
            self.figures["errors"].append(text)

    def _start(self, coroutine) -> None:
        d = defer.Deferred.fromCoroutine(coroutine)

        def failed(failure):
            if self.destroyed:
                return
            if not failure.check(BitnodeError, defer.CancelledError, defer.TimeoutError):
                self.log.failure("{id}: check step crashed", failure, id=self.id)
            self.event("failed", failure.value)

        d.addErrback(failed)
        self._work = d
