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

- **The writers list.** ``acl.<alias>/writers``, the same form with the key
  ``"writers"``: the members the owner granted read-write. A writer uploads
  into the share with the owner's suppliers, under a part of the share's scope
  that is its own: its version ids start with ``<alias>.w<tag>-``
  (:func:`writer_version_tag`, ``tag`` = :func:`member_tag` of its global id),
  and it publishes its *entries* (its catalog rows of the share, sealed and
  signed like the index) at ``<alias>.index/w<tag>`` (:func:`entries_path`).
- **Key envelopes.** After a rotation (``share_revoke``) the owner leaves the
  new share key for each remaining member at ``<alias>.index/k<tag>``
  (:func:`envelope_path`), sealed to that member's master key.

A supplier serves a packet whose owner is not its sender only for reads
(``Retrieve`` of a path, ``ListFiles`` of a prefix ending in ``/``) inside one
share's scope, when that share's readers or writers list names the sender,
and for writes (``Data``, ``DeleteFile``, ``DeleteBackup``) of a writer the
writers list names, inside that writer's own part (:func:`writable_by`)
(:func:`shared_alias`, :func:`decode_readers`, :func:`decode_writers`, used by
:mod:`bitnode.supplier.shared_access`). Everything else of the owner stays the
owner's alone; what a writer stores counts against the owner's quota there.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets

from bitnode import boundedjson, globalid
from bitnode.errors import BadRequest

SHARE_PREFIX = "share_"
INDEX_SUFFIX = ".index"
INDEX_NAME = "current"
ACL_PREFIX = "acl."
ACL_NAME = "readers"
WRITERS_NAME = "writers"
#: Hex digits of a member's tag (:func:`member_tag`).
TAG_HEX = 16
_WRITER_TAIL_RE = re.compile(rf"w[0-9a-f]{{{TAG_HEX}}}-.")
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
    """The prefix of a share's readers and writers lists on a supplier (for deleting them)."""
    return f"{ACL_PREFIX}{alias}/"


def member_tag(global_id: str) -> str:
    """A short stable name of a member in paths: the first 16 hex digits of SHA-256 of its global id."""
    return hashlib.sha256(str(global_id).encode("utf-8")).hexdigest()[:TAG_HEX]


def writer_prefix(alias: str, writer: str) -> str:
    """What every version id a writer uploads into share ``alias`` starts with: ``<alias>.w<tag>-``."""
    return f"{alias}.w{member_tag(writer)}-"


def writer_version_tag(key_id: str, writer: str) -> str:
    """The version tag of ``writer`` (not the owner) under share key ``key_id``."""
    return writer_prefix(share_alias(key_id), writer)


def is_writer_version(version_id: str, alias: str, writer: str) -> bool:
    """Whether ``version_id`` is one that ``writer`` uploaded into share ``alias``."""
    return isinstance(version_id, str) and version_id.startswith(writer_prefix(alias, writer))


def is_owner_version(version_id: str, alias: str) -> bool:
    """Whether ``version_id`` is one of the owner's own in share ``alias`` (not a writer's)."""
    prefix = alias + "."
    return (isinstance(version_id, str) and version_id.startswith(prefix)
            and not _WRITER_TAIL_RE.match(version_id[len(prefix):]))


def entries_path(alias: str, writer: str) -> str:
    """Where a writer keeps its entries of share ``alias`` on the owner's suppliers."""
    return f"{alias}{INDEX_SUFFIX}/w{member_tag(writer)}"


def envelope_path(alias: str, member: str) -> str:
    """Where the owner leaves a member the share key after a rotation."""
    return f"{alias}{INDEX_SUFFIX}/k{member_tag(member)}"


def writers_path(alias: str) -> str:
    """Where the owner keeps a share's writers list on each supplier."""
    return f"{ACL_PREFIX}{alias}/{WRITERS_NAME}"


def writable_by(path: str, alias: str, writer: str) -> bool:
    """Whether ``writer`` may store or delete ``path`` (a path or a prefix) of share ``alias``.

    Its own versions (``<alias>.w<tag>-<...>/...``, a block or a prefix below
    the first component) and its own entries; nothing else.
    """
    if not isinstance(path, str) or "/" not in path:
        return False
    first = path.partition("/")[0]
    return (first.startswith(writer_prefix(alias, writer)) and len(first) > len(writer_prefix(alias, writer))
            or path == entries_path(alias, writer))


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
    return _encode_list(owner, alias, ACL_NAME, readers, updated)


def decode_readers(data: bytes, owner: str, alias: str) -> frozenset[str]:
    """The readers a stored list names; BadRequest when it is malformed or for another share."""
    return _decode_list(data, owner, alias, ACL_NAME)


def encode_writers(owner: str, alias: str, writers: list[str], updated: float) -> bytes:
    """The stored writers list of one share (the readers list's form, key ``writers``)."""
    return _encode_list(owner, alias, WRITERS_NAME, writers, updated)


def decode_writers(data: bytes, owner: str, alias: str) -> frozenset[str]:
    """The writers a stored list names; BadRequest when it is malformed or for another share."""
    return _decode_list(data, owner, alias, WRITERS_NAME)


def _encode_list(owner: str, alias: str, role: str, members: list[str], updated: float) -> bytes:
    if not is_share_alias(alias):
        raise BadRequest(f"{alias!r} is not a share alias")
    if len(members) > MAX_READERS:
        raise BadRequest(f"a share may have at most {MAX_READERS} {role}")
    doc = {"format": ACL_FORMAT, "owner": owner, "alias": alias, role: sorted(set(members)),
           "updated": float(updated)}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _decode_list(data: bytes, owner: str, alias: str, role: str) -> frozenset[str]:
    if len(data) > MAX_ACL_BYTES:
        raise BadRequest(f"{role} list too large")
    try:
        doc = boundedjson.loads(data, f"{role} list")
    except (UnicodeDecodeError, ValueError):
        raise BadRequest(f"{role} list is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != ACL_FORMAT:
        raise BadRequest(f"{role} list has an unknown format")
    if doc.get("owner") != owner or doc.get("alias") != alias:
        raise BadRequest(f"{role} list is for another share")
    members = doc.get(role)
    if not isinstance(members, list) or not all(isinstance(r, str) for r in members):
        raise BadRequest(f"{role} list is malformed")
    return frozenset(members)
