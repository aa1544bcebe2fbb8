"""The supplier's front desk: who its customers are, and what it answers each storage command.

Transport-neutral on purpose: :meth:`SupplierDesk.handle` takes the verified
customer id (the packet's signed owner), the command and the payload, and
fires with the reply ``(command, payload)``. The gateway glue turns packets
into calls and replies into packets; tests call it directly.

Customers and their quotas live in ``customers.json`` (format 1) next to the
blocks, written atomically before the ``Ack`` of a ``RequestService`` goes out.
A customer is accepted when the donated space still covers every quota; the
answer to anything from a non-customer is ``Fail`` with a reason.
"""

from __future__ import annotations

import json
import os
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger

from bitnode.errors import BadRequest, BitnodeError, InsufficientStorage
from bitnode.main.fileutil import atomic_write
from bitnode.storage import wire
from bitnode.storage.ports import BlockNotFound, version_prefix
from bitnode.supplier.disk_store import DiskStore
from bitnode.transport.commands import Command

CONTRACTS_FORMAT = 1
Reply = tuple[str, bytes]


class SupplierDesk:
    """Accepts customers within the donated space and serves their storage commands."""

    log = Logger()

    def __init__(self, store: DiskStore, contracts_file: str, donated_bytes: Callable[[], int],
                 clock, accepting: Callable[[], bool] = lambda: True):
        self.store = store
        self.contracts_file = contracts_file
        self.donated_bytes = donated_bytes
        self.clock = clock
        self.accepting = accepting
        self.customers: dict[str, dict] = {}
        self.rejected: set[str] = set()
        self._load()

    # --- contracts ------------------------------------------------------------------

    def _load(self) -> None:
        try:
            with open(self.contracts_file, encoding="utf-8") as handle:
                data = json.load(handle)
            if data.get("format") != CONTRACTS_FORMAT:
                raise ValueError("unknown format")
            self.customers = {k: dict(v) for k, v in data["customers"].items()}
            self.rejected = set(data.get("rejected", []))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, AttributeError) as err:
            # Keep the broken file for a human; start with no contracts rather than refuse to run.
            os.replace(self.contracts_file, self.contracts_file + ".broken")
            self.log.error("contracts file unreadable ({err}); moved aside", err=err)
        for customer_id, contract in self.customers.items():
            self.store.set_quota(customer_id, contract["quota_bytes"])

    def _save(self) -> None:
        data = {"format": CONTRACTS_FORMAT, "customers": self.customers, "rejected": sorted(self.rejected)}
        atomic_write(self.contracts_file, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"), mode=0o600)

    def allocated_bytes(self) -> int:
        """The sum of every customer's quota."""
        return sum(c["quota_bytes"] for c in self.customers.values())

    def accept(self, customer_id: str, needed_bytes: int) -> dict:
        """Take a customer (or change its quota); InsufficientStorage / BadRequest with the reason."""
        if not isinstance(needed_bytes, int) or needed_bytes <= 0:
            raise BadRequest("needed_bytes must be a positive integer")
        if not self.accepting():
            raise BitnodeError("supplier service is not running")
        if customer_id in self.rejected:
            raise BadRequest("rejected: this supplier does not serve you any more")
        current = self.customers.get(customer_id, {}).get("quota_bytes", 0)
        free = self.donated_bytes() - self.allocated_bytes() + current
        if needed_bytes > free:
            raise InsufficientStorage(f"no space: {free} bytes free, {needed_bytes} asked")
        contract = dict(self.customers.get(customer_id, {"since": self.clock.seconds()}))
        contract["quota_bytes"] = needed_bytes
        self.customers[customer_id] = contract
        self._save()
        self.store.set_quota(customer_id, needed_bytes)
        return {"accepted": True, "quota_bytes": needed_bytes}

    def cancel(self, customer_id: str, reject: bool = False) -> defer.Deferred:
        """End a contract and delete the customer's data (``reject``: refuse it from now on)."""
        self.customers.pop(customer_id, None)
        if reject:
            self.rejected.add(customer_id)
        self._save()
        self.store.set_quota(customer_id, None)
        return self.store.remove_customer(customer_id)

    # --- commands ------------------------------------------------------------------------

    def handle(self, customer_id: str, command: str, payload: bytes) -> defer.Deferred:
        """The reply to one storage command from ``customer_id`` (already authenticated)."""
        d = defer.maybeDeferred(self._dispatch, customer_id, command, payload)
        d.addErrback(self._to_fail, customer_id, command)
        return d

    def _dispatch(self, customer_id: str, command: str, payload: bytes):
        if command == Command.REQUEST_SERVICE:
            request = wire.decode_json(payload)
            return Command.ACK, wire.encode_json(self.accept(customer_id, request.get("needed_bytes")))
        if command == Command.CANCEL_SERVICE:
            return self.cancel(customer_id).addCallback(
                lambda freed: (Command.ACK, wire.encode_json({"cancelled": True, "freed_bytes": freed})))
        if customer_id not in self.customers:
            raise BadRequest("not a customer: send RequestService first")
        if command == Command.DATA:
            path, block = wire.decode_data(payload, copy=False)  # written out as is: no copy of the block
            return self.store.store_block(customer_id, path, block).addCallback(
                lambda _: (Command.ACK, wire.encode_json({"stored": path, "size": len(block)})))
        if command == Command.RETRIEVE:
            path = wire.decode_path(payload)
            return self.store.fetch_block(customer_id, path).addCallback(
                lambda block: (Command.DATA, wire.encode_data(path, block)))
        if command == Command.LIST_FILES:
            prefix = wire.decode_path(payload)
            return self.store.list_blocks(customer_id, prefix).addCallback(
                lambda blocks: (Command.FILES, wire.encode_files(blocks)))
        if command in (Command.DELETE_FILE, Command.DELETE_BACKUP):
            path = wire.decode_path(payload)
            if command == Command.DELETE_BACKUP:
                path = version_prefix(path.rstrip("/"))
            return self.store.delete(customer_id, path).addCallback(
                lambda count: (Command.ACK, wire.encode_json({"deleted": count})))
        raise BadRequest(f"a supplier does not serve {command}")

    def _to_fail(self, failure, customer_id: str, command: str) -> Reply:
        if failure.check(BlockNotFound):
            reason = "not found"
        elif failure.check(BitnodeError):
            reason = failure.getErrorMessage()
        else:
            self.log.failure("supplier failed on {command} from {customer}", failure,
                             command=command, customer=customer_id)
            reason = "internal error"
        return Command.FAIL, reason.encode("utf-8")
