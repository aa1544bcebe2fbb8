"""One hired supplier seen as an :class:`IStorageServer`, over storage command packets.

The customer's uploader and downloader talk to ``IStorageServer`` objects; this
one turns each call into a command for the supplier (:mod:`bitnode.storage.wire`
payloads) through an injected ``request(supplier_id, owner_id, command,
payload)`` that fires with the supplier's reply ``(command, payload)`` or
``(command, payload, prefix_sha256)`` (the hash kept while the reply
streamed in, which checks a fetched block without a second pass); when
the payload's SHA-256 is known already (a block the uploader built inside its
``Data`` payload) it is passed along as ``payload_sha256=`` so the packet is
signed without hashing the payload again. The
owner is whose space is meant (the packet's owner field); the supplier checks
the packet's signer may act for that owner — the gateway in a
node, a direct call to a :class:`~bitnode.supplier.desk.SupplierDesk` in tests.
A ``Fail`` reply becomes the matching typed error, so callers see the same
errors as from any other storage server.
"""

from __future__ import annotations

import functools
from typing import Callable

from twisted.internet import defer
from zope.interface import implementer

from bitnode.errors import BadRequest, Forbidden, InsufficientStorage, Unavailable
from bitnode.storage import wire
from bitnode.storage.blockformat import BlockCorrupt
from bitnode.storage.ports import (
    BlockNotFound,
    CheckedBlock,
    IStorageServer,
    validate_customer_id,
    validate_path,
)
from bitnode.transport.commands import Command

Request = Callable[..., defer.Deferred]
#: Pages of one listing at most (100 million blocks at wire.LIST_PAGE per page).
MAX_LIST_PAGES = 10_000


def _deferred(method):
    """Report argument errors as failed Deferreds, like every storage server does."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        return defer.maybeDeferred(method, *args, **kwargs)

    return wrapper


def error_from_fail(reason: str, path: str = "") -> Exception:
    """The typed error a supplier's ``Fail`` reason stands for."""
    if reason == "not found":
        return BlockNotFound(f"supplier has no block {path}")
    if reason.startswith("no space") or "quota" in reason:
        return InsufficientStorage(f"supplier refused: {reason}")
    if reason.startswith("invalid") or reason.startswith("not a customer") or "payload" in reason:
        return BadRequest(f"supplier refused: {reason}")
    if reason.startswith("rejected") or reason.startswith("forbidden"):
        # The supplier will not serve us (customer_reject, or a packet it may not accept): a refusal, not silence.
        return Forbidden(f"supplier refused: {reason}")
    return Unavailable(f"supplier failed: {reason}")


@implementer(IStorageServer)
class RemoteStorageServer:
    """The blocks ``customer_id`` keeps on supplier ``supplier_id``."""

    def __init__(self, request: Request, supplier_id: str):
        self.request = request
        self.supplier_id = supplier_id

    def _call(self, owner_id: str, command: str, payload: bytes, expect: str, path: str = "",
              payload_sha256: bytes | None = None, with_prefix: bool = False) -> defer.Deferred:
        if payload_sha256 is None:
            d = defer.maybeDeferred(self.request, self.supplier_id, owner_id, command, payload)
        else:
            d = defer.maybeDeferred(self.request, self.supplier_id, owner_id, command, payload,
                                    payload_sha256=payload_sha256)

        def answered(reply):
            reply_command, reply_payload, *streamed = reply
            if reply_command == Command.FAIL:
                raise error_from_fail(bytes(reply_payload).decode("utf-8", "replace"), path)
            if reply_command != expect:
                raise Unavailable(f"supplier answered {reply_command} to {command}")
            return (reply_payload, streamed[0] if streamed else None) if with_prefix else reply_payload

        return d.addCallback(answered)

    @_deferred
    def store_block(self, customer_id: str, block_path: str, data: bytes,
                    data_payload: wire.DataPayload | None = None) -> defer.Deferred:
        """Send a block; fires with None once the supplier acknowledged it.

        ``data_payload`` (the uploader's, for this very path) is sent as it is,
        with its known SHA-256; without it the payload is built here.
        """
        validate_customer_id(customer_id)
        validate_path(block_path)
        if data_payload is not None and data_payload.path == block_path:
            d = self._call(customer_id, Command.DATA, data_payload.payload, Command.ACK, block_path,
                           payload_sha256=data_payload.sha256)
        else:
            d = self._call(customer_id, Command.DATA, wire.encode_data(block_path, data), Command.ACK, block_path)
        return d.addCallback(lambda _: None)

    @_deferred
    def fetch_block(self, customer_id: str, block_path: str, expected_sha256: str | None = None) -> defer.Deferred:
        """Ask for a block; fires with its bytes or fails with BlockNotFound.

        With ``expected_sha256`` and an answer whose hash was kept as it
        streamed in (a layout-2 payload), the block is checked here at the
        cost of hashing the payload's tail only: a :class:`CheckedBlock` (a
        view, no copy) when it matches, :class:`BlockCorrupt` when not.
        """
        validate_customer_id(customer_id)
        validate_path(block_path)
        d = self._call(customer_id, Command.RETRIEVE, wire.encode_path(block_path), Command.DATA, block_path,
                       with_prefix=True)

        def unpack(answer):
            payload, prefix_sha256 = answer
            path, block = wire.decode_data(payload, copy=expected_sha256 is None)
            if path != block_path:
                raise Unavailable(f"supplier sent {path} for {block_path}")
            if expected_sha256 is None:
                return block
            streamed = wire.streamed_block_sha256(payload, prefix_sha256)
            if streamed is None:
                return bytes(block)  # no kept hash (layout 1): the caller hashes it
            if streamed != expected_sha256:
                raise BlockCorrupt(f"block {block_path} from {self.supplier_id}: hash differs from catalog")
            return CheckedBlock(block, streamed)

        return d.addCallback(unpack)

    @_deferred
    def list_blocks(self, customer_id: str, prefix: str) -> defer.Deferred:
        """What the supplier holds under ``prefix``: {path: (size, sha256)}, every page of it."""
        validate_customer_id(customer_id)
        validate_path(prefix, allow_prefix=True)
        return defer.Deferred.fromCoroutine(self._list_pages(customer_id, prefix))

    async def _list_pages(self, customer_id: str, prefix: str) -> dict[str, tuple[int, str]]:
        blocks: dict[str, tuple[int, str]] = {}
        after = ""
        for _ in range(MAX_LIST_PAGES):
            payload = await self._call(customer_id, Command.LIST_FILES, wire.encode_list_request(prefix, after),
                                       Command.FILES)
            page, next_after = wire.decode_files_page(payload)
            blocks.update(page)
            if not next_after:
                return blocks
            if next_after <= after:
                raise Unavailable(f"supplier {self.supplier_id} sent a listing page that does not advance")
            after = next_after
        raise Unavailable(f"supplier {self.supplier_id} lists more than {MAX_LIST_PAGES} pages")

    @_deferred
    def delete(self, customer_id: str, path_or_prefix: str) -> defer.Deferred:
        """Delete a block or a prefix; fires with how many blocks went."""
        validate_customer_id(customer_id)
        validate_path(path_or_prefix, allow_prefix=True)
        d = self._call(customer_id, Command.DELETE_FILE, wire.encode_path(path_or_prefix), Command.ACK, path_or_prefix)
        return d.addCallback(lambda payload: int(wire.decode_json(payload).get("deleted", 0)))

    @_deferred
    def request_service(self, customer_id: str, needed_bytes: int) -> defer.Deferred:
        """Ask to become this supplier's customer; fires with its answer dict or fails with the reason."""
        payload = wire.encode_json({"version": wire.WIRE_VERSION, "needed_bytes": needed_bytes})
        return self._call(customer_id, Command.REQUEST_SERVICE, payload, Command.ACK).addCallback(wire.decode_json)

    @_deferred
    def cancel_service(self, customer_id: str) -> defer.Deferred:
        """End the contract; the supplier deletes our data."""
        return self._call(customer_id, Command.CANCEL_SERVICE, b"", Command.ACK).addCallback(wire.decode_json)
