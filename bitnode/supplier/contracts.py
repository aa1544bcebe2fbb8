"""A supplier's contracts: each customer's quota, when it was last heard from, and when its data goes.

The book is ``basedir/metadata/customers.json`` (format 2; format 1, which had
no ``last_seen``/``silent_for``, is still read)::

    {"format": 2,
     "customers": {"<global id>": {"quota_bytes": N, "since": t, "last_seen": t, "silent_for": s}},
     "rejected": ["<global id>", ...]}

A contract lives as long as its customer shows signs of life. Any
authenticated packet from the customer renews it (:meth:`ContractBook.renew`:
the supplier calls it for every packet the gateway accepts from a customer);
so does a newer revision of the customer's signed ``suppliers:`` record (the
record keeper calls the same method with the revision's signing time).

Silence is counted by :class:`ContractSweeper` (``silent_for``, seconds) only
while this supplier runs and is connected: a supplier that was itself off,
paused or cut off for a month does not wake up and judge everyone. A customer
silent for ``period`` seconds has an *expired* contract; after ``period +
grace`` its data is removed — unless, asked right then, the customer answers
a ping or its suppliers record is alive (the sweeper's ``alive`` neighbour),
which renews the contract instead. ``customers_list`` shows both moments
(:meth:`ContractBook.terms`).

Writes are atomic (temp file, fsync, rename) and run off the reactor; changes
made while a write runs share the next one (:meth:`ContractBook.save` fires
once a write holding them is on disk).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from bitnode.main.fileutil import atomic_write

CONTRACTS_FORMAT = 2
READABLE_FORMATS = (1, 2)
DAY = 24 * 3600.0
#: How often the sweeper writes the silence it counted (the book is also saved at every contract change and at stop).
SAVE_EVERY = DAY


@dataclass
class Contract:
    """One customer's terms and the signs of life counted for it."""

    quota_bytes: int
    since: float
    #: When the customer was last heard from (wall clock).
    last_seen: float
    #: Seconds of that silence counted while this supplier ran and was connected.
    silent_for: float = 0.0


@dataclass(frozen=True)
class ContractTerms:
    """How long a silent customer's data is kept (settings of service_supplier)."""

    period: float = 30 * DAY
    grace: float = 30 * DAY
    check_interval: float = 3600.0


def _contract(raw: Any, now: float) -> Contract:
    if not isinstance(raw, dict):
        raise ValueError("a contract must be an object")
    quota = raw["quota_bytes"]
    if not isinstance(quota, int) or isinstance(quota, bool) or quota < 0:
        raise ValueError("bad quota_bytes")
    since = float(raw.get("since") or now)
    return Contract(quota, since, float(raw.get("last_seen", now)), max(0.0, float(raw.get("silent_for", 0.0))))


class ContractBook:
    """The contracts file, loaded when built (call it in a worker thread) and saved off the reactor."""

    log = Logger()

    def __init__(self, path: str, run_in_thread: Callable[..., defer.Deferred], clock: Any):
        self.path = path
        self._run = run_in_thread
        self.clock = clock
        self.customers: dict[str, Contract] = {}
        self.rejected: set[str] = set()
        #: Why the file could not be read at start ("" when it could).
        self.load_problem = ""
        self._writing = False
        self._waiting: list[defer.Deferred] = []
        self.writes = 0
        self._load()

    def _load(self) -> None:
        now = self.clock.seconds()
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
            if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
                raise ValueError("unknown format")
            self.customers = {str(k): _contract(v, now) for k, v in data["customers"].items()}
            self.rejected = {str(r) for r in data.get("rejected", [])}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as err:
            # Keep the broken file for a human; start with no contracts rather than refuse to run.
            self.customers, self.rejected = {}, set()
            self.load_problem = f"contracts file unreadable ({err}); moved aside to {self.path}.broken"
            os.replace(self.path, self.path + ".broken")
            self.log.error("{problem}", problem=self.load_problem)

    # --- changes ------------------------------------------------------------------------

    def set_quota(self, customer_id: str, quota_bytes: int) -> Contract:
        """Create or change a contract (a new one counts as a sign of life); save it with :meth:`save`."""
        now = self.clock.seconds()
        contract = self.customers.get(customer_id)
        if contract is None:
            contract = self.customers[customer_id] = Contract(quota_bytes, now, now)
        contract.quota_bytes = quota_bytes
        self.renew(customer_id)
        return contract

    def end(self, customer_id: str, reject: bool = False) -> bool:
        """Drop a contract (``reject``: refuse the customer from now on); whether there was one."""
        existed = self.customers.pop(customer_id, None) is not None
        if reject:
            self.rejected.add(customer_id)
        return existed

    def renew(self, customer_id: str, when: float | None = None) -> bool:
        """A sign of life of ``customer_id`` at ``when`` (now by default; never later than now).

        Fires nothing and writes nothing (the sweeper saves the book on its
        rounds); False when it is not a customer.
        """
        contract = self.customers.get(customer_id)
        if contract is None:
            return False
        now = self.clock.seconds()
        when = now if when is None else min(float(when), now)
        if when >= contract.last_seen:
            contract.last_seen = when
            contract.silent_for = min(contract.silent_for, max(0.0, now - when))
        return True

    # --- reading ------------------------------------------------------------------------

    def allocated_bytes(self) -> int:
        """The sum of every customer's quota."""
        return sum(c.quota_bytes for c in self.customers.values())

    def terms(self, customer_id: str, terms: ContractTerms) -> dict:
        """What ``customers_list`` shows of one contract: quota, since, last seen, and its two deadlines.

        The deadlines assume this supplier keeps running and connected from now on
        (silence is only counted then).
        """
        contract = self.customers[customer_id]
        now = self.clock.seconds()
        expires = now + max(0.0, terms.period - contract.silent_for)
        removal = now + max(0.0, terms.period + terms.grace - contract.silent_for)
        return {"quota_bytes": contract.quota_bytes, "since": contract.since, "last_seen": contract.last_seen,
                "silent_for": round(contract.silent_for, 3), "contract_expires": round(expires, 3),
                "contract_expired": contract.silent_for >= terms.period, "data_removed_after": round(removal, 3)}

    # --- saving -------------------------------------------------------------------------

    def save(self) -> defer.Deferred:
        """Write the book atomically in a worker thread; fires once a write holding the current state is done."""
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        if not self._writing:
            self._write_next()
        return d

    def _snapshot(self) -> bytes:
        data = {"format": CONTRACTS_FORMAT, "customers": {k: asdict(v) for k, v in sorted(self.customers.items())},
                "rejected": sorted(self.rejected)}
        return json.dumps(data, indent=1, sort_keys=True).encode("utf-8")

    def _write_next(self) -> None:
        waiting, self._waiting = self._waiting, []
        self._writing = True
        d = self._run(atomic_write, self.path, self._snapshot(), 0o600)

        def done(result: Any) -> None:
            self._writing = False
            self.writes += 1
            for waiter in waiting:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(None)
            if self._waiting:
                self._write_next()

        d.addBoth(done)


class ContractSweeper:
    """Counts each customer's silence while this supplier can judge, and removes the data of the long silent.

    :param terms: the current :class:`ContractTerms` (read at each round).
    :param can_judge: whether this supplier is connected now (no silence is counted otherwise).
    :param alive: ``alive(customer_id)`` -> Deferred[bool]: a last check before removing: True when the
        customer answered now (the contract is renewed); it may also renew the contract itself with an
        older sign of life (its signed record). The data stays whenever the contract is no longer due.
    :param remove: ``remove(customer_id)`` -> Deferred: end the contract and delete the data.
    """

    log = Logger()

    def __init__(self, clock: Any, book: ContractBook, terms: Callable[[], ContractTerms],
                 can_judge: Callable[[], bool], alive: Callable[[str], defer.Deferred],
                 remove: Callable[[str], defer.Deferred]):
        self.clock = clock
        self.book = book
        self.terms = terms
        self.can_judge = can_judge
        self.alive = alive
        self.remove = remove
        self.counters = {"rounds": 0, "rounds_not_judged": 0, "removed": 0, "kept_alive": 0, "check_errors": 0}
        self._last = clock.seconds()
        self._saved_at = self._last
        self._call: Any = None
        self._checking: dict[str, defer.Deferred] = {}

    def start(self) -> None:
        """Count from now on, one round every ``check_interval`` seconds."""
        self._last = self.clock.seconds()
        self._schedule()

    def stop(self) -> defer.Deferred:
        """No more rounds; fires when the checks in progress are done."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return defer.DeferredList(list(self._checking.values()), consumeErrors=True)

    def reschedule(self) -> None:
        """The round interval changed: the next round comes one new interval from now."""
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._schedule()

    def _schedule(self) -> None:
        self._call = self.clock.callLater(self.terms().check_interval, self._round)

    def _round(self) -> None:
        self._call = None
        try:
            self.sweep()
        finally:
            self._schedule()

    def sweep(self) -> list[str]:
        """One round: count the silence since the last one, check whoever is due; the customers checked."""
        now = self.clock.seconds()
        elapsed, self._last = now - self._last, now
        terms = self.terms()
        self.counters["rounds"] += 1
        if elapsed <= 0:
            return []
        if not self.can_judge():
            self.counters["rounds_not_judged"] += 1
            return []
        # A longer gap than two rounds is this process paused or the machine asleep: it counts as two rounds.
        counted = min(elapsed, 2 * terms.check_interval)
        for contract in self.book.customers.values():
            contract.silent_for += min(counted, max(0.0, now - contract.last_seen))
        if now - self._saved_at >= SAVE_EVERY:
            # A crash loses at most this much counted silence: the data is kept that much longer, never less.
            self._saved_at = now
            self.book.save().addErrback(lambda f: self.log.failure("saving the contracts failed", f))
        due = [customer_id for customer_id, contract in sorted(self.book.customers.items())
               if contract.silent_for >= terms.period + terms.grace and customer_id not in self._checking]
        for customer_id in due:
            d = defer.Deferred.fromCoroutine(self._check(customer_id, terms))
            self._checking[customer_id] = d
            d.addBoth(lambda result, c=customer_id: self._checking.pop(c, None) and None)
        return due

    async def _check(self, customer_id: str, terms: ContractTerms) -> None:
        try:
            alive = await self.alive(customer_id)
        except Exception as err:  # a check that breaks keeps the data: removing is the one irreversible act
            self.counters["check_errors"] += 1
            self.log.warn("could not check silent customer {customer}: {err}", customer=customer_id, err=err)
            return
        contract = self.book.customers.get(customer_id)
        if contract is None:
            return
        if alive:
            self.book.renew(customer_id)
        if contract.silent_for < terms.period + terms.grace:
            self.counters["kept_alive"] += 1  # it answered, or a sign of life came meanwhile (its record)
            return
        self.log.info("customer {customer} silent for {days:.1f} days: removing its data",
                      customer=customer_id, days=contract.silent_for / DAY)
        await self.remove(customer_id)
        self.counters["removed"] += 1
