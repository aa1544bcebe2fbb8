"""Where a share's data lives on the owner's suppliers, and who may read it there (pure functions).

A *share* is a key ``share_<32 hex>$owner@host_port`` (its alias starts with
:data:`SHARE_PREFIX`). Files uploaded under it (``share_...$owner:path``) are
stored like any other file of the owner, on the owner's suppliers, in the
owner's space; three conventions make them readable by other users:

- **Tagged versions.** A version of a file under a share key gets the id
  ``<alias>.<normal version id>`` (:func:`version_tag`), so every block of the
  share is under a first path component that starts with ``<alias>.``. An
  alias never contains a dot, so ``share_ab.`` cannot be mistaken for
  ``share_abc.``.
- **The index.** The owner keeps ``<alias>.index/current`` on every supplier:
  the share's part of its catalog, encrypted with the share key and signed
  with the owner's master key (:mod:`bitnode.access.share_index`).
- **The readers list** (the grant the suppliers check). The owner keeps
  ``acl.<alias>/readers`` on every supplier, stored in plain JSON (format 1)::

      {"format": 1, "owner": "alice@host_port", "alias": "share_...",
       "readers": ["bob@host_port", ...], "updated": <seconds>}

  It arrives in a ``Data`` packet signed by the owner, into the owner's own
  space where nobody else can write, and the supplier keeps it on disk like
  any block: that signed, persisted object *is* the grant. Its first
  component ``acl.<alias>`` is outside every share's scope, so readers never
  read the list itself.

A supplier serves a packet whose owner is not its sender only for reads
(``Retrieve`` of a path, ``ListFiles`` of a prefix ending in ``/``) inside one
share's scope, and only when that share's readers list names the sender
(:func:`shared_alias` and :func:`decode_readers`, used by
:mod:`bitnode.supplier.shared_reads`). Everything else of the owner stays the
owner's alone.
"""

from __future__ import annotations

import json
import secrets

from bitnode import boundedjson, globalid
from bitnode.errors import BadRequest

SHARE_PREFIX = "share_"
INDEX_SUFFIX = ".index"
INDEX_NAME = "current"
ACL_PREFIX = "acl."
ACL_NAME = "readers"
ACL_FORMAT = 1
MAX_ACL_BYTES = 1024 * 1024
MAX_READERS = 1000


def new_share_alias() -> str:
    """A fresh random share alias: ``share_`` and 32 hex digits."""
    return SHARE_PREFIX + secrets.token_hex(16)


def is_share_alias(alias: str) -> bool:
    """Whether ``alias`` names a share key (``share_<something>``)."""
    return isinstance(alias, str) and alias.startswith(SHARE_PREFIX) and len(alias) > len(SHARE_PREFIX)


def is_share_key(key_id: str) -> bool:
    """Whether ``key_id`` is a valid key id of a share; never raises."""
    try:
        return is_share_alias(globalid.KeyId.parse(key_id).alias)
    except BadRequest:
        return False


def share_owner(key_id: str) -> str:
    """The global id of the owner of ``key_id`` (BadRequest when it is not a share key)."""
    parsed = globalid.KeyId.parse(key_id)
    if not is_share_alias(parsed.alias):
        raise BadRequest(f"{key_id} is not a share key (its alias must start with {SHARE_PREFIX!r})")
    return str(parsed.owner)


def share_alias(key_id: str) -> str:
    """The alias of share key ``key_id`` (BadRequest when it is not one)."""
    share_owner(key_id)
    return globalid.KeyId.parse(key_id).alias


def version_tag(key_id: str) -> str:
    """What a new version id under ``key_id`` starts with: ``<alias>.`` for a share key, else ""."""
    return share_alias(key_id) + "." if is_share_key(key_id) else ""


def index_path(alias: str) -> str:
    """Where the owner keeps a share's index on each supplier."""
    return f"{alias}{INDEX_SUFFIX}/{INDEX_NAME}"


def index_prefix(alias: str) -> str:
    """The prefix of a share's index on a supplier (for deleting it)."""
    return f"{alias}{INDEX_SUFFIX}/"


def readers_path(alias: str) -> str:
    """Where the owner keeps a share's readers list on each supplier."""
    return f"{ACL_PREFIX}{alias}/{ACL_NAME}"


def readers_prefix(alias: str) -> str:
    """The prefix of a share's readers list on a supplier (for deleting it)."""
    return f"{ACL_PREFIX}{alias}/"


def shared_alias(path: str) -> str | None:
    """The share whose scope holds a supplier path or prefix, or None.

    In scope: a path whose first component is ``<share alias>.<something>``
    and, when it is a prefix, one that ends in ``/`` below that component.
    ``""``, a bare first component and the readers list are out of scope.
    """
    if not isinstance(path, str) or "/" not in path:
        return None
    first, _, rest = path.partition("/")
    alias, dot, tail = first.partition(".")
    if not dot or not tail or not is_share_alias(alias):
        return None
    try:
        globalid.validate_alias(alias)
    except BadRequest:
        return None
    return alias


def encode_readers(owner: str, alias: str, readers: list[str], updated: float) -> bytes:
    """The stored readers list of one share (see the module docstring)."""
    if not is_share_alias(alias):
        raise BadRequest(f"{alias!r} is not a share alias")
    if len(readers) > MAX_READERS:
        raise BadRequest(f"a share may have at most {MAX_READERS} readers")
    doc = {"format": ACL_FORMAT, "owner": owner, "alias": alias, "readers": sorted(set(readers)),
           "updated": float(updated)}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_readers(data: bytes, owner: str, alias: str) -> frozenset[str]:
    """The readers a stored list names; BadRequest when it is malformed or for another share."""
    if len(data) > MAX_ACL_BYTES:
        raise BadRequest("readers list too large")
    try:
        doc = boundedjson.loads(data, "readers list")
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("readers list is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != ACL_FORMAT:
        raise BadRequest("readers list has an unknown format")
    if doc.get("owner") != owner or doc.get("alias") != alias:
        raise BadRequest("readers list is for another share")
    readers = doc.get("readers")
    if not isinstance(readers, list) or not all(isinstance(r, str) for r in readers):
        raise BadRequest("readers list is malformed")
    return frozenset(readers)
