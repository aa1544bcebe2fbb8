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
"""

from __future__ import annotations

import os

from twisted.logger import Logger

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


class IdentityCache:
    """Verified, key-pinned identities of other users, persisted under ``cache_dir``.

    Loads every stored document at construction; a file that does not parse,
    verify or match its name is logged, listed in :attr:`load_errors` and
    skipped (left on disk for inspection).
    """

    log = Logger()

    def __init__(self, cache_dir: str):
        self._dir = cache_dir
        self._items: dict[str, Identity] = {}
        self.load_errors: list[str] = []
        ensure_dir(cache_dir)
        self._load()

    # -- queries --------------------------------------------------------

    def get(self, idurl_or_global_id: str) -> Identity:
        """The cached identity for an IDURL or a global id; :class:`NotFound` if absent."""
        key = str(globalid.to_global_id(idurl_or_global_id))
        try:
            return self._items[key]
        except KeyError:
            raise NotFound(f"identity {idurl_or_global_id} is not cached") from None

    def has(self, idurl_or_global_id: str) -> bool:
        """True when an identity is cached for this IDURL or global id."""
        try:
            self.get(idurl_or_global_id)
        except (NotFound, BadRequest):
            return False
        return True

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
        atomic_write(self._path(key), identity.to_xml())
        self._items[key] = identity
        return True

    def remove(self, idurl_or_global_id: str) -> None:
        """Forget an identity and its pinned key; :class:`NotFound` if absent."""
        key = str(self.get(idurl_or_global_id).global_id)
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass
        del self._items[key]

    # -- disk -----------------------------------------------------------

    def _path(self, global_id: str) -> str:
        return os.path.join(self._dir, global_id + _SUFFIX)

    def _load(self) -> None:
        for filename in sorted(os.listdir(self._dir)):
            if filename.startswith(".") or not filename.endswith(_SUFFIX):
                continue
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
