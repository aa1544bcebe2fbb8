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

A user is their key, and may have several names. A document lists several
sources (identity servers); its first one is the primary and gives the
global id. When a user moves their primary (``id_rotator``), the new
document's global id differs from the cached one. The cache follows:

- a document whose *other* sources include a name pinned here to the **same
  key** is that user's newer document: it replaces the old one, and the old
  name becomes an **alias** of the new (``get(old)`` answers the new
  document; ``names(new)`` lists both). A higher revision is still needed.
- a name pinned to **another key** is never taken over: the claim is
  ignored (counted as ``foreign_claims``), and a document whose *primary* is
  such a name is refused with :class:`KeyMismatch`.
- a source we never saw is only a claim: it becomes an alias only when the
  caller confirmed it (``put(doc, also_known_as=name)``: the document was
  served for that name).

Aliases are kept in ``aliases.json`` beside the documents (format 1:
``{"version": 1, "aliases": {old global id: current global id}}``) and go
with their user when the user is evicted or removed.

The cache is bounded: at most ``max_entries`` identities, in memory and on
disk.  The least recently used one (read or stored) is forgotten first, its
file removed; at start-up only the newest ``max_entries`` files are loaded
and older ones removed.  Peers we talk to are used all the time, so what a
flood of strangers pushes out is other strangers first.  Files are written
(and removed) by ``writer`` — the node's thread pool — in the background, in
order, never on the reactor; :meth:`IdentityCache.flush` waits for them.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from bitnode import globalid
from bitnode.errors import BadRequest, Conflict, Forbidden, NotFound
from bitnode.main.fileutil import atomic_write, ensure_dir, read_limited
from bitnode.userid.identity import MAX_SOURCES, MAX_XML_BYTES, Identity

_SUFFIX = ".xml"
ALIASES_FILE = "aliases.json"
ALIASES_FORMAT = 1


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
        self._aliases: dict[str, str] = {}  # an old name -> the global id its user has now
        self.load_errors: list[str] = []
        self.evicted = 0
        self.pruned = 0
        self.moved = 0
        self.foreign_claims = 0
        #: ``on_moved(old_global_id, new_global_id)``: a cached user moved their primary (set by the owner).
        self.on_moved: Optional[Callable[[str, str], None]] = None
        self._pending: dict[str, Optional[bytes]] = {}  # file name -> bytes to write, or None to remove
        self._writing: Optional[Deferred] = None
        ensure_dir(cache_dir)
        self._load()
        self._load_aliases()

    # -- queries --------------------------------------------------------

    def get(self, idurl_or_global_id: str) -> Identity:
        """The cached identity for an IDURL or a global id (or an old name of it); :class:`NotFound` if absent."""
        key = self._current(str(globalid.to_global_id(idurl_or_global_id)))
        try:
            identity = self._items[key]
        except KeyError:
            raise NotFound(f"identity {idurl_or_global_id} is not cached") from None
        self._items.move_to_end(key)
        return identity

    def has(self, idurl_or_global_id: str) -> bool:
        """True when an identity is cached for this IDURL or global id (does not count as a use)."""
        try:
            return self._current(str(globalid.to_global_id(idurl_or_global_id))) in self._items
        except BadRequest:
            return False

    def current_id(self, idurl_or_global_id: str) -> str:
        """The global id a known user has now (their name if it is not an old one); BadRequest if malformed."""
        return self._current(str(globalid.to_global_id(idurl_or_global_id)))

    def names(self, idurl_or_global_id: str) -> list[str]:
        """Every name of the user: the current global id first, then the old ones (just the name if unknown)."""
        current = self.current_id(idurl_or_global_id)
        return [current] + sorted(old for old, new in self._aliases.items() if new == current)

    def same_user(self, first: str, second: str) -> bool:
        """True when two names are the same user as far as the cache knows (equal, or one an alias)."""
        try:
            return self.current_id(first) == self.current_id(second)
        except BadRequest:
            return False

    def _current(self, key: str) -> str:
        return self._aliases.get(key, key)

    def list(self) -> list[Identity]:
        """All cached identities, sorted by global id."""
        return [self._items[key] for key in sorted(self._items)]

    def __len__(self) -> int:
        return len(self._items)

    def aliases(self) -> dict[str, str]:
        """Old name -> current global id, for every user who moved."""
        return dict(self._aliases)

    # -- changes --------------------------------------------------------

    def put(self, identity: Identity, also_known_as: str | None = None) -> bool:
        """Store ``identity`` if it is new or newer; True when the cache changed.

        ``also_known_as``: a name this document was served for (a fetch of
        that IDURL answered it); it becomes an alias when the document lists
        it among its sources. See the module docstring for the rules and the
        errors.
        """
        if not isinstance(identity, Identity):
            raise BadRequest("expected an Identity")
        if not identity.verify():
            raise InvalidSignature(f"identity {identity.idurl} has an invalid signature")
        key = identity.global_id
        previous = self._previous(identity, also_known_as)
        current = self._items.get(previous) if previous is not None else None
        if current is not None:
            if identity.revision < current.revision:
                return False
            if identity.revision == current.revision:
                if identity.signed_content() == current.signed_content():
                    self._adopt(identity, also_known_as)
                    return False
                raise RevisionConflict(
                    f"identity {identity.idurl} revision {identity.revision} differs from the cached one"
                )
        if previous is not None and previous != key:
            self._move(previous, key)
        self._aliases.pop(key, None)
        self._items[key] = identity
        self._items.move_to_end(key)
        self._store(key + _SUFFIX, identity.to_xml())
        self._adopt(identity, also_known_as)
        while len(self._items) > self.max_entries:
            old, _forgotten = self._items.popitem(last=False)
            self.evicted += 1
            self._store(old + _SUFFIX, None)
            self._drop_aliases_of(old)
        return True

    def _previous(self, identity: Identity, also_known_as: str | None) -> str | None:
        """The global id under which this user's document is cached now, or None; KeyMismatch for a taken name."""
        key = identity.global_id
        holder = self._current(key)
        pinned = self._items.get(holder)
        if pinned is not None:
            if pinned.rsa_public_key() != identity.rsa_public_key():
                raise KeyMismatch(
                    f"identity {identity.idurl} has key {identity.fingerprint()[:16]}, "
                    f"but {pinned.fingerprint()[:16]} is pinned for it"
                )
            return holder
        # Not under its primary: the same user under one of its other names?
        for name in self._other_names(identity, also_known_as):
            holder = self._current(name)
            pinned = self._items.get(holder)
            if pinned is not None and pinned.rsa_public_key() == identity.rsa_public_key():
                return holder
        return None

    def _other_names(self, identity: Identity, also_known_as: str | None) -> list[str]:
        names = [str(globalid.idurl_to_global_id(source)) for source in identity.sources[1:]]
        if also_known_as is not None:
            names.append(str(globalid.to_global_id(also_known_as)))
        return [name for name in dict.fromkeys(names) if name != identity.global_id]

    def _move(self, old: str, new: str) -> None:
        """The user cached under ``old`` is now ``new``: forget the old document, alias every old name."""
        self._items.pop(old, None)
        self._store(old + _SUFFIX, None)
        for name, target in list(self._aliases.items()):
            if target == old:
                self._aliases[name] = new
        self._aliases[old] = new
        self._aliases_changed()
        self.moved += 1
        self.log.info("identity {old} moved to {new}", old=old, new=new)
        if self.on_moved is not None:
            try:
                self.on_moved(old, new)
            except Exception:
                self.log.failure("on_moved({old}, {new}) failed", old=old, new=new)

    def _adopt(self, identity: Identity, also_known_as: str | None) -> None:
        """Make the document's other names aliases where that is safe (see the module docstring)."""
        key = identity.global_id
        confirmed = str(globalid.to_global_id(also_known_as)) if also_known_as is not None else None
        listed = set(self._other_names(identity, None))
        changed = False
        for name in self._other_names(identity, also_known_as):
            if self._current(name) == key:
                continue
            holder = self._items.get(self._current(name))
            if holder is not None and holder.rsa_public_key() != identity.rsa_public_key():
                self.foreign_claims += 1
                continue
            if name == confirmed and name in listed:
                self._aliases[name] = key
                changed = True
        if changed:
            self._aliases_changed()
        while len(self._aliases) > self.max_entries * MAX_SOURCES:
            self._aliases.pop(next(iter(self._aliases)))
            self._aliases_changed()

    def _drop_aliases_of(self, key: str) -> None:
        names = [name for name, target in self._aliases.items() if target == key]
        for name in names:
            del self._aliases[name]
        if names:
            self._aliases_changed()

    def _aliases_changed(self) -> None:
        data = {"version": ALIASES_FORMAT, "aliases": dict(sorted(self._aliases.items()))}
        self._store(ALIASES_FILE, json.dumps(data, indent=1).encode("utf-8"))

    def remove(self, idurl_or_global_id: str) -> None:
        """Forget an identity, its old names and its pinned key; :class:`NotFound` if absent."""
        key = str(self.get(idurl_or_global_id).global_id)
        del self._items[key]
        self._store(key + _SUFFIX, None)
        self._drop_aliases_of(key)

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
                "pruned_at_start": self.pruned, "writes_pending": len(self._pending), "aliases": len(self._aliases),
                "moved": self.moved, "foreign_claims": self.foreign_claims}

    # -- disk -----------------------------------------------------------

    def _path(self, global_id: str) -> str:
        return os.path.join(self._dir, global_id + _SUFFIX)

    def _store(self, filename: str, data: Optional[bytes]) -> None:
        """Write (or, with None, remove) a file: now without a writer, else in the background, in order."""
        if self.writer is None:
            self._write_batch({filename: data})
            return
        self._pending[filename] = data
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
        for filename, data in batch.items():
            path = os.path.join(self._dir, filename)
            if data is None:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            else:
                atomic_write(path, data)

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

    def _load_aliases(self) -> None:
        path = os.path.join(self._dir, ALIASES_FILE)
        try:
            data = json.loads(read_limited(path, self.max_entries * MAX_SOURCES * 600 + 1024).decode("utf-8"))
            if not isinstance(data, dict) or data.get("version") != ALIASES_FORMAT:
                raise ValueError("unknown format")
            entries = data["aliases"]
            if not isinstance(entries, dict):
                raise ValueError("aliases is not an object")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, UnicodeDecodeError) as err:
            self._report(ALIASES_FILE, str(err))
            return
        for old, new in entries.items():
            try:
                old_id, new_id = str(globalid.GlobalId.parse(old)), str(globalid.GlobalId.parse(new))
            except BadRequest:
                continue
            # an alias of a user we no longer hold (or a name that is a user itself) is dropped
            if new_id in self._items and old_id not in self._items and old_id != new_id:
                self._aliases[old_id] = new_id

    def _report(self, filename: str, reason: str) -> None:
        message = f"{filename}: {reason}"
        self.load_errors.append(message)
        self.log.warn("skipping unreadable cached identity {problem}", problem=message)
