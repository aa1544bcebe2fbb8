"""On-disk cache of other users' identity documents, pinned to their first key.

One file per identity: ``<cache_dir>/<global id>.xml`` (``alice@id.net_8084.xml``).
A canonical global id maps one-to-one to a canonical IDURL and uses only
``[a-z0-9_.@-]``, so it is a safe file name.

Rules of :meth:`IdentityCache.put`:

- the signature must verify, else :class:`InvalidSignature` (a ``BadRequest``);
- the first RSA key seen for an IDURL is pinned: a document for the same IDURL
  with another key is refused with :class:`KeyMismatch` (a ``Forbidden``);
- a higher revision replaces the stored one (returns True);
- the same revision with the same signed content is a no-op (returns False);
  the same revision with *different* content is refused with
  :class:`RevisionConflict` (a ``Conflict``): the owner signed two versions;
- a lower revision is ignored (returns False).

The pin is the stored document's key: :meth:`IdentityCache.remove` forgets it,
which is the way to accept a user's new key after checking it out of band.

The cache is bounded: at most ``max_entries`` identities, in memory and on
disk.  The least recently used one (read or stored) is forgotten first, its
file removed; at start-up only the newest ``max_entries`` files are loaded
and older ones removed.  Peers we talk to are used all the time, so what a
flood of strangers pushes out is other strangers first.  Files are written
(and removed) by ``writer`` — the node's thread pool — in the background, in
order, never on the reactor; :meth:`IdentityCache.flush` waits for them.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from bitnode import globalid
from bitnode.errors import BadRequest, Conflict, Forbidden, NotFound
from bitnode.main.fileutil import atomic_write, ensure_dir, read_limited
from bitnode.userid.identity import MAX_XML_BYTES, Identity

_SUFFIX = ".xml"


class InvalidSignature(BadRequest):
    """An identity document's signature does not verify."""


class KeyMismatch(Forbidden):
    """An identity document carries a different key than the one pinned for its IDURL."""


class RevisionConflict(Conflict):
    """Two different documents claim the same revision of one identity."""


#: Identities kept unless told otherwise.
DEFAULT_MAX_ENTRIES = 10_000


class IdentityCache:
    """Verified, key-pinned identities of other users, persisted under ``cache_dir``.

    Loads the stored documents at construction (the newest ``max_entries``);
    a file that does not parse, verify or match its name is logged, listed in
    :attr:`load_errors` and skipped (left on disk for inspection).

    :param writer: ``writer(fn, *args) -> Deferred`` runs file writes off the
        reactor (the node's ``run_in_thread``); None writes at once (tests, or
        code already in a thread).  May be set later (:attr:`writer`).
    """

    log = Logger()

    def __init__(self, cache_dir: str, max_entries: int = DEFAULT_MAX_ENTRIES,
                 writer: Optional[Callable[..., Deferred]] = None):
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._dir = cache_dir
        self.max_entries = max_entries
        self.writer = writer
        self._items: OrderedDict[str, Identity] = OrderedDict()
        self.load_errors: list[str] = []
        self.evicted = 0
        self.pruned = 0
        self._pending: dict[str, Optional[bytes]] = {}  # global id -> XML to write, or None to remove
        self._writing: Optional[Deferred] = None
        ensure_dir(cache_dir)
        self._load()

    # -- queries --------------------------------------------------------

    def get(self, idurl_or_global_id: str) -> Identity:
        """The cached identity for an IDURL or a global id; :class:`NotFound` if absent."""
        key = str(globalid.to_global_id(idurl_or_global_id))
        try:
            identity = self._items[key]
        except KeyError:
            raise NotFound(f"identity {idurl_or_global_id} is not cached") from None
        self._items.move_to_end(key)
        return identity

    def has(self, idurl_or_global_id: str) -> bool:
        """True when an identity is cached for this IDURL or global id (does not count as a use)."""
        try:
            return str(globalid.to_global_id(idurl_or_global_id)) in self._items
        except BadRequest:
            return False

    def list(self) -> list[Identity]:
        """All cached identities, sorted by global id."""
        return [self._items[key] for key in sorted(self._items)]

    def __len__(self) -> int:
        return len(self._items)

    # -- changes --------------------------------------------------------

    def put(self, identity: Identity) -> bool:
        """Store ``identity`` if it is new or newer; True when the cache changed.

        See the module docstring for the rules and the errors.
        """
        if not isinstance(identity, Identity):
            raise BadRequest("expected an Identity")
        if not identity.verify():
            raise InvalidSignature(f"identity {identity.idurl} has an invalid signature")
        key = identity.global_id
        current = self._items.get(key)
        if current is not None:
            if current.rsa_public_key() != identity.rsa_public_key():
                raise KeyMismatch(
                    f"identity {identity.idurl} has key {identity.fingerprint()[:16]}, "
                    f"but {current.fingerprint()[:16]} is pinned for it"
                )
            if identity.revision < current.revision:
                return False
            if identity.revision == current.revision:
                if identity.signed_content() == current.signed_content():
                    return False
                raise RevisionConflict(
                    f"identity {identity.idurl} revision {identity.revision} differs from the cached one"
                )
        self._items[key] = identity
        self._items.move_to_end(key)
        self._store(key, identity.to_xml())
        while len(self._items) > self.max_entries:
            old, _forgotten = self._items.popitem(last=False)
            self.evicted += 1
            self._store(old, None)
        return True

    def remove(self, idurl_or_global_id: str) -> None:
        """Forget an identity and its pinned key; :class:`NotFound` if absent."""
        key = str(self.get(idurl_or_global_id).global_id)
        del self._items[key]
        self._store(key, None)

    def flush(self) -> Deferred:
        """A Deferred that fires once every change so far is on disk."""
        if self._writing is None:
            return succeed(None)
        done: Deferred = Deferred()

        def wake(result: Any) -> Any:
            done.callback(None)
            return result

        self._writing.addBoth(wake)
        return done

    def stats(self) -> dict:
        """Identities held, the limit, and how many were pushed out (LRU) or pruned at start-up."""
        return {"identities": len(self._items), "max_entries": self.max_entries, "evicted": self.evicted,
                "pruned_at_start": self.pruned, "writes_pending": len(self._pending)}

    # -- disk -----------------------------------------------------------

    def _path(self, global_id: str) -> str:
        return os.path.join(self._dir, global_id + _SUFFIX)

    def _store(self, key: str, xml: Optional[bytes]) -> None:
        """Write (or, with None, remove) a file: now without a writer, else in the background, in order."""
        if self.writer is None:
            self._write_batch({key: xml})
            return
        self._pending[key] = xml
        if self._writing is None:
            self._write_next()

    def _write_next(self) -> None:
        batch, self._pending = self._pending, {}
        if not batch:
            self._writing = None
            return
        d = self.writer(self._write_batch, batch)
        self._writing = d

        def written(result: Any) -> None:
            if isinstance(result, Failure):
                self.log.warn("could not write the identity cache: {err}", err=result.getErrorMessage())
            self._write_next()

        d.addBoth(written)

    def _write_batch(self, batch: dict[str, Optional[bytes]]) -> None:
        """Thread side: the files of one batch (atomic writes; removals)."""
        for key, xml in batch.items():
            if xml is None:
                try:
                    os.unlink(self._path(key))
                except FileNotFoundError:
                    pass
            else:
                atomic_write(self._path(key), xml)

    def _load(self) -> None:
        names = [name for name in os.listdir(self._dir) if not name.startswith(".") and name.endswith(_SUFFIX)]
        if len(names) > self.max_entries:
            # keep the newest; the rest is only a cache of what identity servers publish
            def mtime(name: str) -> float:
                try:
                    return os.stat(os.path.join(self._dir, name)).st_mtime
                except OSError:
                    return 0.0

            names.sort(key=mtime, reverse=True)
            for name in names[self.max_entries:]:
                try:
                    os.unlink(os.path.join(self._dir, name))
                    self.pruned += 1
                except OSError:
                    pass
            names = names[: self.max_entries]
        for filename in sorted(names):
            path = os.path.join(self._dir, filename)
            try:
                identity = self._load_one(path, filename[: -len(_SUFFIX)])
            except (OSError, BadRequest) as err:
                self._report(filename, str(err))
                continue
            self._items[identity.global_id] = identity

    def _load_one(self, path: str, stem: str) -> Identity:
        identity = Identity.from_xml(read_limited(path, MAX_XML_BYTES))
        if not identity.verify():
            raise InvalidSignature("signature does not verify")
        if identity.global_id != stem:
            raise BadRequest(f"file holds the identity of {identity.global_id}")
        return identity

    def _report(self, filename: str, reason: str) -> None:
        message = f"{filename}: {reason}"
        self.load_errors.append(message)
        self.log.warn("skipping unreadable cached identity {problem}", problem=message)
