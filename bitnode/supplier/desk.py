"""The supplier's front desk: who its customers are, and what it answers each storage command.

Transport-neutral on purpose: :meth:`SupplierDesk.handle` takes the verified
customer id (the packet's signed owner), the command and the payload, and
fires with the reply ``(command, payload)``. The gateway glue turns packets
into calls and replies into packets; tests call it directly.

Customers and their quotas live in the :class:`~bitnode.supplier.contracts.ContractBook`
(``customers.json``), written atomically, off the reactor, before the ``Ack``
of a ``RequestService`` goes out. A customer is accepted when the donated
space still covers every quota. What a customer gets is capped: a *new*
customer at most ``new_customer_quota`` bytes (the answer says how much was
granted: ``{"accepted": true, "quota_bytes": granted, "asked_bytes": asked, "customers": n}``, ``n``
the customers it serves now, for customers that pick the least loaded of several suppliers),
and a customer asking again at most the larger of its current quota, that
cap, and twice what it really stores — space is earned by use, so a stranger
cannot reserve the whole donation with one packet. The answer to anything
from a non-customer is ``Fail`` with a reason. Every command of a customer
renews its contract.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bitnode import globalid
from bitnode.errors import BadRequest, BitnodeError, InsufficientStorage
from bitnode.storage import wire
from bitnode.storage.ports import BlockNotFound, version_prefix
from bitnode.supplier.contracts import Contract, ContractBook
from bitnode.supplier.disk_store import DiskStore
from bitnode.transport.commands import Command

Reply = tuple[str, bytes]


def _sync(fn, *args, **kwargs) -> defer.Deferred:
    return defer.maybeDeferred(fn, *args, **kwargs)


class SupplierDesk:
    """Accepts customers within the donated space and serves their storage commands.

    :param new_customer_quota: the most a new customer is granted (0: no cap).
    :param on_ended: ``on_ended(customer_id, reason)`` after a contract ended and its data went.
    """

    log = Logger()

    def __init__(self, store: DiskStore, contracts_file: str, donated_bytes: Callable[[], int],
                 clock, accepting: Callable[[], bool] = lambda: True, run_in_thread=_sync,
                 new_customer_quota: Callable[[], int] = lambda: 0,
                 on_ended: Callable[[str, str], Any] = lambda customer_id, reason: None):
        self.store = store
        self.donated_bytes = donated_bytes
        self.clock = clock
        self.accepting = accepting
        self.new_customer_quota = new_customer_quota
        self.on_ended = on_ended
        self.book = ContractBook(contracts_file, run_in_thread, clock)
        #: Blocks in one ``Files`` answer (more follow in further pages).
        self.list_page = wire.LIST_PAGE
        #: Customers' folders found without a contract (a lost or broken contracts file) and taken on.
        self.orphans_adopted = self._adopt_orphans()
        for customer_id, contract in self.book.customers.items():
            self.store.set_quota(customer_id, contract.quota_bytes)

    @property
    def customers(self) -> dict[str, Contract]:
        """Every customer's contract by global id."""
        return self.book.customers

    @property
    def rejected(self) -> set[str]:
        """Customers refused for good (customer_reject)."""
        return self.book.rejected

    # --- contracts ------------------------------------------------------------------

    def _adopt_orphans(self) -> list[str]:
        """Give data without a contract one (quota 0, silent from now), so it expires like any other.

        Without it, the folders of customers lost from the contracts file would stay forever. A
        customer that comes back asks for service again and gets its quota back. Runs at start.
        """
        adopted = []
        for name in self.store.customers():
            if name in self.book.customers or name.startswith("x-"):
                continue
            try:
                customer_id = str(globalid.to_global_id(name))
            except BitnodeError:
                continue
            if customer_id == name:
                self.book.set_quota(customer_id, 0)
                adopted.append(customer_id)
        if adopted:
            self.log.warn("{n} customer folder(s) had no contract; taken on to expire: {ids}", n=len(adopted),
                          ids=", ".join(adopted))
        return adopted

    def allocated_bytes(self) -> int:
        """The sum of every customer's quota."""
        return self.book.allocated_bytes()

    def accept(self, customer_id: str, needed_bytes: int) -> defer.Deferred:
        """Take a customer (or change its quota); fires with the answer once the contract is on disk.

        Fails with InsufficientStorage / BadRequest and the reason.
        """
        return defer.Deferred.fromCoroutine(self._accept(customer_id, needed_bytes))

    async def _accept(self, customer_id: str, needed_bytes: int) -> dict:
        if not isinstance(needed_bytes, int) or isinstance(needed_bytes, bool) or needed_bytes <= 0:
            raise BadRequest("needed_bytes must be a positive integer")
        if not self.accepting():
            raise BitnodeError("supplier service is not running")
        if customer_id in self.book.rejected:
            raise BadRequest("rejected: this supplier does not serve you any more")
        contract = self.book.customers.get(customer_id)
        cap = int(self.new_customer_quota())
        if contract is None:
            allowance = cap
        else:
            used = await self.store.used_bytes(customer_id)
            allowance = max(contract.quota_bytes, cap, 2 * used) if cap else 0
        granted = min(needed_bytes, allowance) if allowance else needed_bytes
        current = contract.quota_bytes if contract is not None else 0
        free = self.donated_bytes() - self.allocated_bytes() + current
        if granted > free:
            raise InsufficientStorage(f"no space: {free} bytes free, {granted} asked")
        self.book.set_quota(customer_id, granted)
        await self.book.save()
        self.store.set_quota(customer_id, granted)
        # How many customers it serves: a customer choosing among several suppliers keeps the least loaded.
        return {"accepted": True, "quota_bytes": granted, "asked_bytes": needed_bytes,
                "customers": len(self.book.customers)}

    def cancel(self, customer_id: str, reject: bool = False, reason: str = "") -> defer.Deferred:
        """End a contract and delete the customer's data (``reject``: refuse it from now on); fires with bytes freed."""
        return defer.Deferred.fromCoroutine(self._cancel(customer_id, reject, reason))

    async def _cancel(self, customer_id: str, reject: bool, reason: str) -> int:
        self.book.end(customer_id, reject)
        await self.book.save()
        self.store.set_quota(customer_id, None)
        freed = await self.store.remove_customer(customer_id)
        self.on_ended(customer_id, reason or ("rejected" if reject else "cancelled"))
        return freed

    # --- commands ------------------------------------------------------------------------

    def handle(self, customer_id: str, command: str, payload: bytes, renew: bool = True,
               prefix_sha256: Callable[[int], str | None] | None = None) -> defer.Deferred:
        """The reply to one storage command in ``customer_id``'s space (the sender authenticated).

        ``renew=False`` for a read by someone else (a share reader): only the customer's own
        traffic renews its contract. ``prefix_sha256(n)``: the hex SHA-256 of ``payload[:n]``
        from the hash state kept as the packet streamed in, or None
        (:meth:`~bitnode.transport.packet.Packet.streamed_prefix_sha256`): a stored block's index
        hash then costs no second pass over it.
        """
        d = defer.maybeDeferred(self._dispatch, customer_id, command, payload, renew, prefix_sha256)
        d.addErrback(self._to_fail, customer_id, command)
        return d

    def _dispatch(self, customer_id: str, command: str, payload: bytes, renew: bool = True,
                  prefix_sha256: Callable[[int], str | None] | None = None):
        if renew:
            self.book.renew(customer_id)
        if command == Command.REQUEST_SERVICE:
            request = wire.decode_json(payload)
            return self.accept(customer_id, request.get("needed_bytes")).addCallback(
                lambda answer: (Command.ACK, wire.encode_json(answer)))
        if command == Command.CANCEL_SERVICE:
            return self.cancel(customer_id).addCallback(
                lambda freed: (Command.ACK, wire.encode_json({"cancelled": True, "freed_bytes": freed})))
        if customer_id not in self.book.customers:
            raise BadRequest("not a customer: send RequestService first")
        if command == Command.DATA:
            path, block = wire.decode_data(payload, copy=False)  # written out as is: no copy of the block
            sha256 = wire.streamed_block_sha256(payload, prefix_sha256)
            return self.store.store_block(customer_id, path, block, sha256=sha256).addCallback(
                lambda _: (Command.ACK, wire.encode_json({"stored": path, "size": len(block)})))
        if command == Command.RETRIEVE:
            path = wire.decode_path(payload)
            return self.store.fetch_block(customer_id, path).addCallback(
                lambda block: (Command.DATA, wire.encode_data(path, block)))
        if command == Command.LIST_FILES:
            prefix, after = wire.decode_list_request(payload)
            page = self.list_page
            return self.store.list_blocks(customer_id, prefix, after, page).addCallback(
                lambda blocks: (Command.FILES, wire.encode_files(blocks, next(reversed(blocks)) if len(blocks) >= page else "")))
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
