"""A reader of someone else's share, talking to the share owner's suppliers.

Everything a grantee sends an owner's supplier is a storage packet whose
*owner* field names the share's owner (whose space is meant) and whose
*creator* (the signer) is me. A supplier serves such a packet only when it
is a read inside the share's scope and the owner's readers list there names
me (:mod:`bitnode.storage.share_scope`, :mod:`bitnode.supplier.shared_access`);
otherwise it answers ``Fail "forbidden: ..."``, which
:class:`~bitnode.customer.remote_store.RemoteStorageServer` turns into a 403.

:class:`ShareReader` gives the other share parts what they need:

- :meth:`find_suppliers`: the owner's positions, from the owner's signed
  ``suppliers`` DHT record (injected ``lookup(owner_id)``, in a node
  :func:`bitnode.customer.suppliers_record.lookup_suppliers`);
- :meth:`connect`: an Identity ping to each supplier (a node drops packets
  from senders it does not know yet);
- :meth:`fetch_index`: the share index from every supplier at once; each
  copy's signature is checked against the owner's published identity key,
  the newest serial that verifies is decrypted with the share key (the
  generation the index names: the current one or one kept from before a
  rotation; :class:`KeyOutdated` when this node does not hold it);
- :meth:`fetch_entries`: the same for the entries of each writer, checked
  against that writer's identity key; a writer whose entries cannot be read
  is reported, not fatal;
- :meth:`server`: an ``IStorageServer`` per supplier for the Downloader (and
  the Uploader of a writer).

No retries here: the coordinator decides when to try again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer

from bitnode import globalid
from bitnode.access import share_index
from bitnode.customer.remote_store import RemoteStorageServer
from bitnode.errors import BadRequest, BitnodeError, Forbidden, NotFound, Unavailable
from bitnode.storage import share_scope
from bitnode.storage.ports import BlockNotFound
from bitnode.transport.commands import Command
from bitnode.transport.packet import Packet
from bitnode.transport.packet_out import PeerRefused


@dataclass(eq=False, repr=False)
class ShareReader:
    """Reads share ``key_id`` of ``owner_id`` from the owner's suppliers.

    :param gateway: returns the running gateway (raises Unavailable when off).
    :param lookup: ``lookup(owner_id)`` → Deferred of the owner's suppliers
        record (``{"suppliers": [global id or ""], ...}``).
    :param fetch_identity: ``fetch_identity(global_id)`` → Deferred of an Identity.
    :param share_key: returns the share's private key (NotFound when not held).
    :param timeout: seconds a supplier has to answer one request.
    :param previous_keys: returns the earlier generations of the share key held here, newest first.
    """

    clock: Any
    run_in_thread: Callable[..., defer.Deferred]
    gateway: Callable[[], Any]
    key_id: str
    lookup: Callable[[str], defer.Deferred]
    fetch_identity: Callable[[str], defer.Deferred]
    share_key: Callable[[], Any]
    timeout: Callable[[], float] = lambda: 60.0
    previous_keys: Callable[[], list] = lambda: []
    #: the owner and the alias of the share, from ``key_id`` (BadRequest when it names no share)
    owner_id: str = field(init=False)
    alias: str = field(init=False)
    _servers: dict[str, RemoteStorageServer] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.owner_id = share_scope.share_owner(self.key_id)
        self.alias = share_scope.share_alias(self.key_id)

    # --- the owner's suppliers --------------------------------------------------------------

    def find_suppliers(self) -> defer.Deferred:
        """The owner's positions (global ids, "" for empty ones); NotFound without a record."""

        def positions(record: dict) -> list[str]:
            found = list(record.get("suppliers") or [])
            if not any(found):
                raise NotFound(f"{self.owner_id} has no suppliers: the share cannot be read")
            return found

        return defer.maybeDeferred(self.lookup, self.owner_id).addCallback(positions)

    def connect(self, positions: list[str]) -> defer.Deferred:
        """Ping every supplier; fires with how many answered, Unavailable when none did."""
        return defer.Deferred.fromCoroutine(self._connect(positions))

    async def _connect(self, positions: list[str]) -> int:
        gateway = self.gateway()
        wanted = [s for s in positions if s]
        outcomes = await defer.DeferredList([defer.maybeDeferred(gateway.ping, s, self.timeout()) for s in wanted],
                                            consumeErrors=True)
        answered = sum(1 for ok, _ in outcomes if ok)
        if not answered:
            reasons = "; ".join(f.getErrorMessage() for ok, f in outcomes if not ok)
            raise Unavailable(f"none of {self.owner_id}'s suppliers answered: {reasons}")
        return answered

    def request(self, supplier_id: str, owner_id: str, command: str, payload: bytes,
                payload_sha256: bytes | None = None) -> defer.Deferred:
        """RemoteStorageServer's transport: a packet for ``owner_id``'s space, signed by me.

        ``payload_sha256``: the payload's SHA-256 when the caller computed it already (a writer's upload).
        """
        try:
            gateway = self.gateway()
            packet = Packet.create(gateway.clock, command, owner_id, gateway.my_id,
                                   str(globalid.to_global_id(supplier_id)), payload,
                                   gateway.identity.packet_signer(), payload_sha256=payload_sha256)
        except BitnodeError as err:
            return defer.fail(err)
        d = gateway.send(packet, timeout=self.timeout())
        return d.addCallbacks(lambda answer: (answer.command, answer.payload), _fail_answer)

    def server(self, supplier_id: str) -> RemoteStorageServer:
        """The IStorageServer of one of the owner's suppliers, read as me."""
        server = self._servers.get(supplier_id)
        if server is None:
            server = self._servers[supplier_id] = RemoteStorageServer(self.request, supplier_id)
        return server

    # --- the index ---------------------------------------------------------------------------

    def fetch_index(self, positions: list[str]) -> defer.Deferred:
        """The newest index that verifies, opened (:func:`share_index.open_index <bitnode.access.share_index.open_index>`).

        Forbidden when the suppliers refuse me (not a reader, or no longer
        one), NotFound when none holds an index, BadRequest when the copies
        found do not verify, Unavailable when nobody answered, KeyOutdated when
        it is sealed for a generation of the share key this node does not hold.
        """
        return defer.Deferred.fromCoroutine(self._fetch_signed(positions, share_scope.index_path(self.alias), ""))

    def fetch_entries(self, positions: list[str], writers: list[str]) -> defer.Deferred:
        """The newest entries of each writer, opened: ``({writer: opened}, {writer: "why not"})``."""
        return defer.Deferred.fromCoroutine(self._fetch_entries(positions, writers))

    async def _fetch_entries(self, positions: list[str], writers: list[str]) -> tuple[dict, dict]:
        calls = [defer.Deferred.fromCoroutine(self._fetch_signed(positions, share_scope.entries_path(self.alias, w), w))
                 for w in writers]
        outcomes = await defer.DeferredList(calls, consumeErrors=True)
        found, problems = {}, {}
        for writer, (ok, value) in zip(writers, outcomes, strict=True):
            if ok:
                found[writer] = value
            elif not value.check(NotFound):  # no entries yet: nothing to say
                problems[writer] = value.getErrorMessage()
        return found, problems

    async def _fetch_signed(self, positions: list[str], path: str, writer: str) -> dict:
        """The newest copy of ``path`` that verifies against its signer (the owner, or ``writer``), opened."""
        wanted = [s for s in positions if s]
        calls = []
        for supplier_id in wanted:
            d = self.server(supplier_id).fetch_block(self.owner_id, path)
            d.addTimeout(self.timeout(), self.clock)
            calls.append(d)
        outcomes = await defer.DeferredList(calls, consumeErrors=True)
        copies = [value for ok, value in outcomes if ok]
        problems = [value for ok, value in outcomes if not ok]
        if not copies:
            raise _no_copy(self.key_id, self.owner_id, problems, writer)
        signer = await self.fetch_identity(writer or self.owner_id)
        signer_key = signer.rsa_public_key()
        best: share_index.SignedIndex | None = None
        bad = []
        for data in copies:
            try:
                signed = await self.run_in_thread(share_index.verify_index, signer_key, data, self.owner_id,
                                                  self.key_id, writer)
            except BadRequest as err:
                bad.append(str(err))
                continue
            if best is None or signed.serial > best.serial:
                best = signed
        if best is None:
            what = f"the entries of {writer} in" if writer else "the index of"
            raise BadRequest(f"no copy of {what} {self.key_id} verifies: {'; '.join(bad)}")
        return await self.run_in_thread(share_index.open_index, self.key_for(best.key), best)

    def fetch_envelopes(self, positions: list[str]) -> defer.Deferred:
        """Every copy of my key envelope the suppliers hold (checked by the caller); NotFound when none has one."""
        return defer.Deferred.fromCoroutine(self._fetch_envelopes(positions))

    async def _fetch_envelopes(self, positions: list[str]) -> list[bytes]:
        path = share_scope.envelope_path(self.alias, self.gateway().my_id)
        calls = []
        for supplier_id in [s for s in positions if s]:
            d = self.server(supplier_id).fetch_block(self.owner_id, path)
            d.addTimeout(self.timeout(), self.clock)
            calls.append(d)
        outcomes = await defer.DeferredList(calls, consumeErrors=True)
        copies = list(dict.fromkeys(value for ok, value in outcomes if ok))
        if not copies:
            raise _no_copy(self.key_id, self.owner_id, [value for ok, value in outcomes if not ok], "",
                           "my key envelope of")
        return copies

    def key_for(self, fingerprint: str | None) -> Any:
        """The generation of the share key with ``fingerprint`` (the current one for None).

        Forbidden when no share key is held, KeyOutdated when that generation is not.
        """
        try:
            current = self.share_key()
        except NotFound:
            raise Forbidden(f"the private key of {self.key_id} is not here: the share cannot be read") from None
        if fingerprint is None or current.fingerprint() == fingerprint:
            return current
        for previous in self.previous_keys():
            if previous.fingerprint() == fingerprint:
                return previous
        raise KeyOutdated(f"{self.key_id} was sealed with a new generation of its key ({fingerprint[:16]}...), "
                          "not held here yet", fingerprint)

    def keys(self) -> list:
        """Every generation of the share key held here, current first (what a version key may be wrapped with)."""
        try:
            return [self.share_key(), *self.previous_keys()]
        except NotFound:
            return []


class KeyOutdated(Forbidden):
    """A share document is sealed for a generation of the share key this node does not hold (yet)."""

    def __init__(self, message: str, fingerprint: str):
        super().__init__(message)
        self.fingerprint = fingerprint


def _no_copy(key_id: str, owner_id: str, problems: list, writer: str = "", what: str = "") -> BitnodeError:
    """The clearest error when no supplier gave an index (or a writer's entries, or my key envelope)."""
    what = what or (f"the entries of {writer} in" if writer else "the index of")
    if any(p.check(Forbidden) for p in problems):
        refusal = next(p for p in problems if p.check(Forbidden)).getErrorMessage()
        return Forbidden(f"{owner_id}'s suppliers refuse to serve share {key_id} to this node "
                         f"(not granted, or revoked): {refusal}")
    if problems and all(p.check(BlockNotFound, NotFound) for p in problems):
        return NotFound(f"{writer or owner_id} has not published {what} {key_id} yet")
    reasons = "; ".join(p.getErrorMessage() for p in problems) or "no supplier to ask"
    return Unavailable(f"{what} {key_id} could not be read from {owner_id}'s suppliers: {reasons}")


def _fail_answer(failure):
    """A supplier's Fail is an answer RemoteStorageServer maps to the matching error."""
    failure.trap(PeerRefused)
    return Command.FAIL.value, failure.value.reason.encode("utf-8")
