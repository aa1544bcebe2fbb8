"""API methods of the storage market: my suppliers, my customers, space.

Thin: each method checks the service it needs runs and calls it
(:mod:`bitnode.customer.customer_service`, :mod:`bitnode.supplier.supplier_service`).

Result shapes:

- suppliers_list: ``[{"position", "supplier_id", "idurl", "state", "online",
  "quota_bytes", "used_bytes", "retiring", "waiting", "rebuild"}]``: first one
  row per position (``state`` is the supplier_connector's, or ``EMPTY`` for a
  free position; quota and used bytes come from the supplier's last answer to
  RequestService; ``rebuild`` lists the former holders of that position whose
  blocks are being rebuilt on it, ``{"from", "done", "total"}`` in blocks),
  then one row per former holder (``retiring: true``; ``state`` ``RETIRING``:
  still holds blocks we read, with ``reason``, ``fault``, ``since``,
  ``rebuild``; ``RELEASING``: its CancelService is still to be delivered).
  ``waiting`` is why fire_hire does nothing now ("" when it does not wait).
  ``verbose`` adds ``automat``, ``offline_for``, ``last_seen``, ``failures``,
  ``refusal``. With another customer's id: the positions of that customer's
  DHT record, ``state`` ``DHT_RECORD``;
- supplier_change: ``{"position", "old_supplier_id", "new_supplier_id", "replacing": true,
  "roster", "retiring", "waiting"}`` (the old supplier retires: it is read from, and keeps
  its blocks, until they are rebuilt on the new one; the legacy ``index_or_idurl`` is a
  position or a supplier's IDURL / global id);
- suppliers_ping: suppliers_list's rows after every supplier answered RequestService again;
- suppliers_dht_lookup: ``{"customer_id", "customer_idurl", "revision",
  "ecc_map", "suppliers", "idurls", "writer_verified", "created", "expires"}``;
- customers_list: ``[{"customer_id", "idurl", "quota_bytes", "used_bytes",
  "online"}]``, ``verbose`` adds ``since``;
- customer_reject: ``{"customer_id", "rejected": true, "freed_bytes", "notified"}``;
- customers_ping: ``[{"customer_id", "online", "round_trip" | "error"}]``;
- space_donated: ``{"running", "donated_bytes", "allocated_bytes", "used_bytes",
  "free_bytes", "customers_num", "customers": [...]}``;
- space_consumed: ``{"running", "needed_bytes", "suppliers_num", "wanted_suppliers",
  "data_blocks", "quota_per_supplier", "used_bytes", "suppliers": [...]}``;
- space_local: disk figures of the basedir's drive and the sizes of the basedir's parts.
"""

from __future__ import annotations

import os
from typing import Any

import psutil
from twisted.internet import defer

from bitnode import globalid
from bitnode.customer.customer_service import CustomerService
from bitnode.customer.suppliers_record import lookup_suppliers
from bitnode.dht.dht_service import DHTService
from bitnode.errors import Conflict, Unavailable
from bitnode.supplier.disk_store import tree_size
from bitnode.supplier.supplier_service import SupplierService
from bitnode.userid.id_service import NO_IDENTITY, IdentityService


class MarketMethods:
    """suppliers_*, customers_*, space_* methods; mixed into :class:`bitnode.interface.api.API`."""

    def _market_service(self, kind: type, must_run: bool = True) -> Any:
        driver = self.node.service_driver
        if must_run:
            return driver.running(kind)
        service = driver.installed(kind)
        if service is None:
            raise Unavailable(f"{kind.name} is not installed")
        return service

    def _lookup_suppliers(self, customer_id: str) -> defer.Deferred:
        driver = self.node.service_driver
        return lookup_suppliers(driver.find(DHTService), driver.running(IdentityService), customer_id)

    def _my_id(self) -> str:
        identity = self.node.service_driver.find(IdentityService)
        if identity is None:
            raise Conflict(NO_IDENTITY)
        return identity.require_global_id()

    # --- my suppliers ---------------------------------------------------------------------

    def suppliers_list(self, customer_id: str | None = None, verbose: bool = False) -> Any:
        """My suppliers by position (or, for another customer, those its DHT record names)."""
        if customer_id and str(globalid.to_global_id(customer_id)) != self._my_id():
            return self._lookup_suppliers(customer_id).addCallback(_record_rows)
        return self._market_service(CustomerService).suppliers(verbose)

    def supplier_change(self, position: int | None = None, supplier_id: str | None = None,
                        new_supplier_id: str | None = None, index_or_idurl: str | None = None) -> dict:
        """Fire one supplier and hire ``new_supplier_id`` (or a random node) in its position."""
        return self._market_service(CustomerService).change(position, supplier_id, new_supplier_id, index_or_idurl)

    def suppliers_ping(self) -> defer.Deferred:
        """Ask every supplier for service again and answer their states."""
        return self._market_service(CustomerService).ping_suppliers()

    def suppliers_dht_lookup(self, customer_id: str | None = None) -> defer.Deferred:
        """The suppliers a customer (default: me) published in the DHT, checked against its identity key."""
        return self._lookup_suppliers(customer_id or self._my_id())

    # --- my customers ------------------------------------------------------------------------

    def customers_list(self, verbose: bool = False) -> defer.Deferred:
        """The customers whose blocks this node keeps, with each contract's quota, usage and expiry."""
        d = self._market_service(SupplierService).customers()
        if not verbose:
            d.addCallback(lambda rows: [{k: v for k, v in row.items() if k not in ("since", "silent_for")}
                                        for row in rows])
        return d

    def customer_reject(self, customer_id: str) -> defer.Deferred:
        """Stop serving a customer: delete its data, refuse it from now on, tell it."""
        return self._market_service(SupplierService).reject(customer_id)

    def customers_ping(self) -> defer.Deferred:
        """Ping every customer."""
        return self._market_service(SupplierService).ping_customers()

    # --- space --------------------------------------------------------------------------------

    def space_donated(self) -> defer.Deferred:
        """Donated space, what is promised to customers and what their blocks really take."""
        return self._market_service(SupplierService, must_run=False).space()

    def space_consumed(self) -> dict:
        """Space asked of my suppliers and what they said I use."""
        customer = self.node.service_driver.find(CustomerService)
        if customer is not None:
            return customer.space()
        settings = self.node.settings
        return {"running": False, "needed_bytes": settings.get("services/customer/needed-space"),
                "suppliers_num": 0, "wanted_suppliers": settings.get("services/customer/suppliers-number"),
                "used_bytes": 0, "suppliers": []}

    def space_local(self) -> defer.Deferred:
        """The basedir's drive (total, free) and the bytes of the basedir's parts."""
        basedir = self.node.basedir
        return self.node.run_in_thread(_local_space, basedir.root, basedir.metadata, basedir.logs)


def _record_rows(found: dict) -> list[dict]:
    return [{"position": i, "supplier_id": s, "idurl": found["idurls"][i], "state": "DHT_RECORD",
             "online": None, "quota_bytes": None, "used_bytes": None}
            for i, s in enumerate(found["suppliers"])]


def _local_space(root: str, metadata: str, logs: str) -> dict:
    """Disk figures (blocking: runs in the thread pool)."""
    disk = psutil.disk_usage(root)
    return {
        "basedir": root,
        "disk_total_bytes": disk.total,
        "disk_used_bytes": disk.used,
        "disk_free_bytes": disk.free,
        "disk_free_percent": round(100.0 * disk.free / disk.total, 3) if disk.total else 0.0,
        "basedir_bytes": tree_size(root),
        "customers_bytes": tree_size(os.path.join(root, "customers")),
        "metadata_bytes": tree_size(metadata),
        "temp_bytes": tree_size(os.path.join(metadata, "tmp")),
        "logs_bytes": tree_size(logs),
    }
