"""A supplier keeps its customers' signed suppliers records alive in the DHT.

A customer hands each of its suppliers its latest signed suppliers value (a
``Contacts`` packet, see :mod:`bitnode.customer.suppliers_record`). The
:class:`RecordKeeper` checks it — signed by the customer's master key, the one
of the identity that sent the packet, naming that customer, and newer than the
one kept — writes it to ``<folder>/<customer id>.json`` (atomically, before the
Ack) and from then on stores it again in the DHT every ``ttl/2`` seconds
(``ttl`` is what the customer signed), for as long as the customer is one of
this supplier's customers. So the customer's record outlives the customer's
machine: a recovery from the key alone, days later, still finds its suppliers.

When the DHT holds a newer value than the one kept (the customer changed its
suppliers while this one was offline), the store is refused; the keeper then
reads the DHT's value, keeps it if it verifies under the same key and is
newer, and stores that one. A failed store is tried again after
:data:`RETRY_AFTER` seconds (at most ``ttl/2``).

When a customer is gone (its contract ended), its record is dropped at the
next due time. :meth:`RecordKeeper.latest` answers what is kept.

Contracts (:mod:`bitnode.supplier.contracts`): ``signed_at`` is when the
customer itself signed a value (it re-signs at each of its publishes, at least
every ``ttl/2`` while it runs; a supplier's re-store never changes it). So a
newly kept value — handed over, or found newer in the DHT — renews the
customer's contract as of ``signed_at`` (``renew``); and before a silent
customer's data is removed, the supplier reads :meth:`RecordKeeper.latest`
once more (``SupplierService._renew_from_record``): a kept value that still
lists this supplier counts as a sign of life at its ``signed_at``.

Neighbours: ``clock``, ``run_in_thread``, ``dht()`` (an object with
``set_value`` / ``get_value`` like service_entangled_dht, or raises
Unavailable), ``master_key_of(customer_id)`` (Deferred of the RSA public key
of the customer's identity), ``is_customer(customer_id)``, and optionally
``renew(customer_id, when)``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bitnode import globalid
from bitnode.dht import bound_values, records
from bitnode.dht.records import RecordConflict
from bitnode.errors import BadRequest, BitnodeError, Conflict, Forbidden
from bitnode.main.fileutil import atomic_write, ensure_dir, read_limited, remove_if_exists

FILE_FORMAT = 1
MAX_FILE = 64 * 1024
#: Seconds before a failed DHT store is tried again (at most half the record's ttl).
RETRY_AFTER = 60.0


def _read_all(folder: str) -> dict[str, dict]:
    """Every kept record in ``folder``: ``{customer id: {"value", "stored_at"}}``. Worker thread."""
    ensure_dir(folder)
    kept = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".json"):
            continue
        try:
            data = json.loads(read_limited(os.path.join(folder, name), MAX_FILE))
            if data.get("format") != FILE_FORMAT or not isinstance(data.get("value"), dict):
                raise ValueError("unknown format")
            kept[str(globalid.to_global_id(name[:-5]))] = {"value": data["value"],
                                                            "stored_at": float(data.get("stored_at") or 0.0)}
        except (OSError, ValueError, BadRequest):
            continue  # unreadable: the customer hands its record over again at its next publish
    return kept


def _write(path: str, value: dict, stored_at: float) -> None:
    data = {"format": FILE_FORMAT, "value": value, "stored_at": stored_at}
    atomic_write(path, json.dumps(data, sort_keys=True).encode("utf-8"), mode=0o600)


@dataclass(eq=False, repr=False)
class RecordKeeper:
    """Keeps and re-stores the suppliers records of this supplier's customers (see the module docstring)."""

    log = Logger()

    clock: Any
    run_in_thread: Callable
    folder: str
    dht: Callable[[], Any]
    master_key_of: Callable[[str], defer.Deferred]
    is_customer: Callable[[str], bool]
    renew: Callable[[str, float], Any] = lambda customer_id, when: None
    #: customer id -> {"value": the signed value, "stored_at": when we last stored it in the DHT}
    kept: dict[str, dict] = field(init=False, default_factory=dict)
    due: dict[str, float] = field(init=False, default_factory=dict)
    counters: Counter[str] = field(init=False, default_factory=Counter)
    refused: Counter[str] = field(init=False, default_factory=Counter)
    _call: Any = field(init=False, default=None)
    _running: bool = field(init=False, default=False)
    _busy: set[defer.Deferred] = field(init=False, default_factory=set)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> defer.Deferred:
        """Read the kept records (off the reactor), then store each when due."""
        self._running = True
        return self.run_in_thread(_read_all, self.folder).addCallback(self._loaded)

    def _loaded(self, kept: dict[str, dict]) -> None:
        now = self.clock.seconds()
        for customer_id, entry in kept.items():
            self.kept.setdefault(customer_id, entry)
            # A value never stored by us (or stored long ago) is due now; else half its ttl after.
            self.due.setdefault(customer_id, max(now, entry["stored_at"] + entry["value"]["ttl"] / 2))
        self._schedule()

    def stop(self) -> defer.Deferred:
        """No more stores; fires once the ones under way ended."""
        self._running = False
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return defer.DeferredList(list(self._busy), consumeErrors=True)

    def status(self) -> dict:
        """Counters for service_info."""
        return {"records_kept": len(self.kept), "next_due": min(self.due.values(), default=None),
                **{k: self.counters[k] for k in ("received", "stored", "store_failed", "newer_from_dht",
                                                 "dropped")},
                "refused": dict(self.refused)}

    def latest(self, customer_id: str) -> dict | None:
        """The newest signed value kept for ``customer_id`` (None without one)."""
        entry = self.kept.get(str(globalid.to_global_id(customer_id)))
        return dict(entry["value"]) if entry is not None else None

    # --- a customer hands its record over ---------------------------------------------

    def receive(self, customer_id: str, value: Any) -> defer.Deferred:
        """Check and keep the value ``customer_id`` sent; fires with what the Ack says (Forbidden/BadRequest)."""
        return self._track(defer.Deferred.fromCoroutine(self._receive(str(globalid.to_global_id(customer_id)),
                                                                      value)))

    async def _receive(self, customer_id: str, value: Any) -> dict:
        if not self._running:
            raise BadRequest("the supplier service is stopping")
        if not self.is_customer(customer_id):
            self.refused["not_a_customer"] += 1
            raise Forbidden("not a customer: send RequestService first")
        master = await self.master_key_of(customer_id)
        key = bound_values.key_for(records.SUPPLIERS, master)
        try:
            await self.run_in_thread(bound_values.check_suppliers, key, value)
            if str(globalid.to_global_id(value["customer_idurl"])) != customer_id:
                raise bound_values.InvalidBoundValue("the record names another customer")
        except (bound_values.InvalidBoundValue, BadRequest) as err:
            self.refused["invalid"] += 1
            raise BadRequest(f"suppliers record refused: {err}") from None
        kept = self.kept.get(customer_id)
        if kept is not None and _order(kept["value"]) == _order(value):
            return {"kept": True, "revision": value["revision"]}
        if kept is not None and _order(kept["value"]) > _order(value):
            self.refused["older"] += 1
            raise Conflict(f"a newer suppliers record of yours is kept here (revision {kept['value']['revision']})")
        # The customer stored it in the DHT itself just now: our first store is due at half its ttl.
        now = self.clock.seconds()
        await self._keep(customer_id, value, now)
        self.counters["received"] += 1
        self.renew(customer_id, min(now, value["signed_at"]))
        self.due[customer_id] = now + value["ttl"] / 2
        self._schedule()
        return {"kept": True, "revision": value["revision"]}

    async def _keep(self, customer_id: str, value: dict, stored_at: float) -> None:
        await self.run_in_thread(_write, self._path(customer_id), value, stored_at)
        self.kept[customer_id] = {"value": value, "stored_at": stored_at}

    def _path(self, customer_id: str) -> str:
        return os.path.join(self.folder, f"{customer_id}.json")

    # --- storing again in the DHT ---------------------------------------------------------

    def _schedule(self) -> None:
        if not self._running:
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self.due:
            delay = max(0.0, min(self.due.values()) - self.clock.seconds())
            self._call = self.clock.callLater(delay, self._run_due)

    def _run_due(self) -> None:
        self._call = None
        now = self.clock.seconds()
        for customer_id in [c for c, when in self.due.items() if when <= now]:
            del self.due[customer_id]  # back when its store ended
            d = self._track(defer.Deferred.fromCoroutine(self._renew(customer_id)))
            d.addErrback(self._renew_crashed, customer_id)
        self._schedule()

    def _renew_crashed(self, failure: Any, customer_id: str) -> None:
        self.log.failure("storing the suppliers record of {customer} again failed", failure, customer=customer_id)
        self._due_in(customer_id, RETRY_AFTER)

    async def _renew(self, customer_id: str) -> None:
        entry = self.kept.get(customer_id)
        if entry is None:
            return
        if not self.is_customer(customer_id):
            del self.kept[customer_id]
            self.counters["dropped"] += 1
            await self.run_in_thread(remove_if_exists, self._path(customer_id))
            return
        value = entry["value"]
        try:
            value = await self._store(customer_id, value)
        except BitnodeError as err:
            self.counters["store_failed"] += 1
            self.log.info("suppliers record of {customer} not stored again (retry soon): {err}",
                          customer=customer_id, err=err)
            self._due_in(customer_id, min(RETRY_AFTER, value["ttl"] / 2))
            return
        self.counters["stored"] += 1
        now = self.clock.seconds()
        await self._keep(customer_id, value, now)
        self._due_in(customer_id, value["ttl"] / 2)

    async def _store(self, customer_id: str, value: dict) -> dict:
        """Store ``value`` (or a newer one the DHT has) again; fires with the value stored."""
        key = bound_values.suppliers_key_of(value)
        dht = self.dht()
        try:
            await dht.set_value(key, value, expire=value["ttl"], record_type=records.SUPPLIERS)
            return value
        except RecordConflict:
            found = (await dht.get_value(key, records.SUPPLIERS))["value"]
        # Verified by the DHT under the same key (so signed by the same customer): take it if newer.
        if _order(found) <= _order(value):
            raise RecordConflict(f"the DHT refused the suppliers record of {customer_id}")
        self.counters["newer_from_dht"] += 1
        self.renew(customer_id, min(self.clock.seconds(), found["signed_at"]))
        await dht.set_value(key, found, expire=found["ttl"], record_type=records.SUPPLIERS)
        return found

    def _due_in(self, customer_id: str, delay: float) -> None:
        if self._running and customer_id in self.kept:
            self.due[customer_id] = self.clock.seconds() + delay
            self._schedule()

    def _track(self, d: defer.Deferred) -> defer.Deferred:
        self._busy.add(d)

        def done(result: Any) -> Any:
            self._busy.discard(d)
            return result

        return d.addBoth(done)


def _order(value: dict) -> tuple:
    return bound_values.order(records.SUPPLIERS, value)
