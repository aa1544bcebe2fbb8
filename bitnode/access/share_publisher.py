"""The owner's side of a share on its suppliers: the readers list and the index, kept current.

For each share I own that has readers, every one of my suppliers holds
(:mod:`bitnode.storage.share_scope`):

- ``acl.<alias>/readers`` and ``acl.<alias>/writers``: who may read the
  share there (every member) and who may also write (the read-write members):
  the grants the supplier checks, re-sent when a member is added, changed or
  removed and to every supplier after my suppliers changed;
- ``<alias>.index/current``: the share's catalog rows sealed for its members
  (:mod:`bitnode.access.share_index`) with the members and their access, the
  reshare rule and the writers' versions I removed; re-sent when any of that
  changed (a file was uploaded, replaced or deleted under the share key, a
  member added...) — the digest of it all says whether it did — and after my
  suppliers changed.

Both are small objects stored whole on each supplier (no erasure coding: any
single supplier that answers is enough to read them). A publish counts as
done when at least one supplier took it; the others are listed with their
errors and get it at the next publish. :meth:`SharePublisher.withdraw`
removes both from every supplier (share deleted): from then on the
suppliers refuse every reader.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer

from bitnode.access import share_absorb, share_index
from bitnode.errors import NotFound, Unavailable
from bitnode.storage import share_scope
from bitnode.storage.ports import BlockNotFound


class SharePublisher:
    """Writes and removes the readers lists and indexes of my shares on my suppliers.

    :param storage: returns service_backups (``catalog``, ``placement()``,
        ``require_ready()``); raises Unavailable/Conflict when it cannot serve.
    :param keystore: returns my key store (master private key, share public keys).
    :param timeout: seconds one supplier has to take or delete one object.
    """

    def __init__(self, clock: Any, run_in_thread: Callable[..., defer.Deferred], storage: Callable[[], Any],
                 keystore: Callable[[], Any], timeout: Callable[[], float] = lambda: 30.0):
        self.clock = clock
        self.run_in_thread = run_in_thread
        self.storage = storage
        self.keystore = keystore
        self.timeout = timeout

    async def publish(self, key_id: str, members: dict[str, str], last_serial: int, last_digest: str,
                      readers_changed: bool = False, force: bool = False, timeout: float | None = None,
                      reshare: str = share_index.DEFAULT_RESHARE, absorbed: dict | None = None) -> dict:
        """Send what changed of one share to every supplier.

        ``members`` is ``{global id: "ro" | "rw"}``; ``absorbed`` the writers'
        versions I took in (:mod:`bitnode.access.share_absorb`): those I have
        deleted since go into the index as ``removed``.

        Fires with ``{"key_id", "serial", "sha256", "index_sent", "readers_sent",
        "suppliers", "stored", "errors"}``; ``serial``/``sha256`` are the index now
        published (the old ones when it was not sent). Unavailable when no
        supplier took anything that had to be sent.
        """
        storage = self.storage()
        storage.require_ready()
        store = self.keystore()
        owner = store.owner
        alias = share_scope.share_alias(key_id)
        export = await self.run_in_thread(storage.catalog.export)
        subset = await self.run_in_thread(share_index.share_subset, export, key_id)
        removed = await self.run_in_thread(share_absorb.removed_versions, storage.catalog, key_id, absorbed or {})
        digest = await self.run_in_thread(share_index.subset_digest, {
            "catalog": subset, "members": members, "reshare": reshare, "removed": removed,
            "key": store.public_key(key_id).fingerprint()})
        send_index = force or digest != last_digest
        send_readers = force or readers_changed
        outcome = {"key_id": key_id, "serial": last_serial, "sha256": last_digest, "index_sent": False,
                   "readers_sent": False, "suppliers": 0, "stored": 0, "errors": []}
        if not (send_index or send_readers):
            return outcome
        placement = storage.placement()
        objects = []
        if send_readers:
            now = self.clock.seconds()
            objects.append((share_scope.readers_path(alias), share_scope.encode_readers(owner, alias, list(members), now)))
            objects.append((share_scope.writers_path(alias), share_scope.encode_writers(
                owner, alias, [m for m, mode in members.items() if mode == "rw"], now)))
        serial = last_serial + 1
        if send_index:
            sealed = await self.run_in_thread(share_index.seal_index, store.private_key(store.master_key_id),
                                              store.public_key(key_id), owner, key_id, serial,
                                              self.clock.seconds(), subset, "", members, reshare, removed)
            objects.append((share_scope.index_path(alias), sealed))
        stored, errors, _ = await to_every_supplier(self.clock, placement, self._seconds(timeout),
                                                   lambda server: _store_all(server, owner, objects))
        outcome.update(suppliers=sum(1 for s in placement.positions if s), stored=stored, errors=errors)
        if not stored:
            raise Unavailable(f"share {key_id}: none of my suppliers took its readers list and index: "
                              + "; ".join(e["error"] for e in errors))
        outcome.update(readers_sent=send_readers, index_sent=send_index)
        if send_index:
            outcome.update(serial=serial, sha256=digest)
        return outcome

    async def withdraw(self, key_id: str, timeout: float | None = None) -> dict:
        """Remove a share's readers list and index from every supplier: ``{"suppliers", "removed", "errors"}``."""
        storage = self.storage()
        storage.require_ready()
        owner = self.keystore().owner
        alias = share_scope.share_alias(key_id)
        placement = storage.placement()
        prefixes = (share_scope.readers_prefix(alias), share_scope.index_prefix(alias))  # lists; index, entries, keys

        def remove(server):
            return defer.gatherResults([defer.maybeDeferred(server.delete, owner, p) for p in prefixes],
                                       consumeErrors=True)

        removed, errors, _ = await to_every_supplier(self.clock, placement, self._seconds(timeout), remove)
        return {"suppliers": sum(1 for s in placement.positions if s), "removed": removed, "errors": errors}

    async def put_objects(self, objects: list[tuple[str, bytes]], removed: list[str], timeout: float | None = None
                          ) -> dict:
        """Store ``objects`` (path, bytes) on every supplier and delete the ``removed`` paths there (key envelopes)."""
        storage = self.storage()
        storage.require_ready()
        owner = self.keystore().owner
        placement = storage.placement()

        def put(server):
            calls = [defer.maybeDeferred(server.store_block, owner, path, data) for path, data in objects]
            calls += [defer.maybeDeferred(server.delete, owner, path).addErrback(_gone_is_fine) for path in removed]
            return defer.gatherResults(calls, consumeErrors=True)

        done, errors, _ = await to_every_supplier(self.clock, placement, self._seconds(timeout), put)
        return {"suppliers": sum(1 for s in placement.positions if s), "stored": done, "errors": errors}

    def _seconds(self, timeout: float | None) -> float:
        return timeout if timeout is not None else self.timeout()


async def to_every_supplier(clock: Any, placement: Any, seconds: float, call: Callable[[Any], defer.Deferred]
                            ) -> tuple[int, list[dict], list[Any]]:
    """Run ``call(server)`` on every supplier at once: how many succeeded, errors per supplier, the failures."""
    calls, errors, failures = [], [], []
    for supplier_id, server in zip(placement.positions, placement.servers, strict=False):
        if not supplier_id:
            continue
        if server is None:
            errors.append({"supplier": supplier_id, "error": "not connected"})
            continue
        d = defer.maybeDeferred(call, server)
        d.addTimeout(seconds, clock)
        calls.append((supplier_id, d))
    outcomes = await defer.DeferredList([d for _, d in calls], consumeErrors=True)
    done = 0
    for (supplier_id, _), (ok, value) in zip(calls, outcomes, strict=True):
        if ok:
            done += 1
        else:
            failure = value.value.subFailure if isinstance(value.value, defer.FirstError) else value
            failures.append(failure)
            errors.append({"supplier": supplier_id, "error": failure.getErrorMessage()})
    return done, errors, failures


def _gone_is_fine(failure: Any) -> None:
    """Deleting what is not there is done."""
    failure.trap(BlockNotFound, NotFound)


def _store_all(server: Any, owner: str, objects: list[tuple[str, bytes]]) -> defer.Deferred:
    """Store every object on one supplier; fails with the first refusal."""
    return defer.gatherResults([defer.maybeDeferred(server.store_block, owner, path, data) for path, data in objects],
                               consumeErrors=True)
