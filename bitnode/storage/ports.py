"""The boundary of the storage library: the supplier interface and shared values.

:class:`IStorageServer` is what the upload/download logic needs from one
supplier, whatever carries the bytes (in-memory grid in tests, signed packets
over TCP in production). Every method returns a Deferred; failures are
:mod:`bitnode.errors` exceptions (:class:`BlockNotFound` for a missing block,
:class:`~bitnode.errors.Unavailable` / :class:`~bitnode.errors.Timeout` when the
supplier cannot be reached, :class:`~bitnode.errors.InsufficientStorage` when
its quota is full, :class:`~bitnode.errors.BadRequest` for an invalid path).

Block path scheme (relative to one customer's space on a supplier)::

    <version_id>/<segment_index>/<block_index>     e.g. "F20250101T1200-ab12/7/3"

with decimal indexes, no leading zeros (a block index is 0..255). A *prefix* ends with "/" and selects a
subtree: ``"<version_id>/"`` is a whole version, ``"<version_id>/7/"`` one
segment; ``""`` is everything of that customer. Paths are relative, made of
``[A-Za-z0-9._-]`` components, never ``.`` or ``..``.

Besides blocks a customer stores a few kinds of small whole objects, one per
supplier (:func:`validate_store_path` accepts exactly these and the block
paths, so a supplier refuses anything else a customer asks it to write)::

    catalog-<serial>/manifest          the signed manifest of a catalog backup
    <share alias>.index/current        a share's sealed index (bitnode.storage.share_scope)
    <share alias>.index/w<16 hex>      a share writer's sealed entries
    <share alias>.index/k<16 hex>      a share member's key envelope (after a rotation)
    acl.<share alias>/readers          a share's readers list (bitnode.storage.share_scope)
    acl.<share alias>/writers          a share's writers list

where a share alias is ``share_`` and ``[A-Za-z0-9_-]`` characters (never a dot).

:class:`SupplierProvider` is the port storage needs from the customer side.

The module also holds the values passed between the uploader, the downloader
and their callers (:class:`SegmentMeta`, :class:`Progress`) and the error both
raise when cancelled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from zope.interface import Interface

from bitnode.errors import BadRequest, BitnodeError, NotFound
from bitnode.storage.segment_crypto import validate_version_id

_COMPONENT_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_VERSION = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_SEGMENT_INDEX = r"(?:0|[1-9][0-9]{0,19})"
_BLOCK_INDEX = r"(?:0|[1-9][0-9]?|1[0-9]{2}|2[0-4][0-9]|25[0-5])"
_SHARE_ALIAS = r"share_[A-Za-z0-9_-]{1,120}"
#: Everything a customer stores on a supplier: blocks, and the whole objects of the module docstring.
_STORE_PATH_RE = re.compile(
    rf"(?:{_VERSION}/{_SEGMENT_INDEX}/{_BLOCK_INDEX}"
    r"|catalog-(?:0|[1-9][0-9]{0,17})/manifest"
    rf"|{_SHARE_ALIAS}\.index/(?:current|[wk][0-9a-f]{{16}})"
    rf"|acl\.{_SHARE_ALIAS}/(?:readers|writers))\Z")
_CUSTOMER_RE = re.compile(r"^[^/\\\x00-\x1f]{1,256}$")
MAX_PATH_LENGTH = 512


class BlockNotFound(NotFound):
    """The supplier has no block at that path."""


class TransferCancelled(BitnodeError):
    """An upload or download was cancelled by its owner."""

    http_code = 409


class IStorageServer(Interface):
    """One supplier, seen from the customer's storage logic."""

    def store_block(customer_id: str, block_path: str, data: bytes, data_payload=None):
        """Store ``data`` at ``block_path`` (replacing any old copy).

        The Deferred fires with None once the supplier has the block durably.
        ``data_payload``: optionally the ``Data`` payload of exactly this block
        at this path, already built with its SHA-256
        (:class:`bitnode.storage.wire.DataPayload`, made by the uploader's
        worker); a server that sends blocks over the wire sends it as it is
        (no copy, no second hash), any other server ignores it.
        """

    def fetch_block(customer_id: str, block_path: str, expected_sha256: str | None = None):
        """Deferred firing with the stored bytes, or failing with BlockNotFound.

        ``expected_sha256``: the hex SHA-256 the caller's catalog has for the
        block. A server that can check it without a pass over the block of
        its own (a remote one, from the hash kept while the answer streamed
        in) does: it fires with a :class:`CheckedBlock` instead of bytes, or
        fails with :class:`~bitnode.storage.blockformat.BlockCorrupt`. Any
        other server ignores it and fires with bytes the caller checks.
        """

    def list_blocks(customer_id: str, prefix: str):
        """Deferred firing with ``{path: (size, sha256 hex of the stored bytes)}`` under ``prefix``."""

    def delete(customer_id: str, path_or_prefix: str):
        """Delete one path, or everything under a prefix ending in "/".

        Deleting what is not there is not an error; the Deferred fires with the
        number of blocks removed.
        """


@dataclass(frozen=True)
class CheckedBlock:
    """A fetched block whose SHA-256 the server matched against the caller's ``expected_sha256``.

    ``block`` is a read-only view into the received payload (no copy).
    """

    block: memoryview
    sha256: str


def block_path(version_id: str, segment_index: int, block_index: int) -> str:
    """The path of one block: ``<version_id>/<segment_index>/<block_index>``."""
    validate_version_id(version_id)
    if not isinstance(segment_index, int) or segment_index < 0:
        raise BadRequest(f"invalid segment index: {segment_index!r}")
    if not isinstance(block_index, int) or not 0 <= block_index < 256:
        raise BadRequest(f"invalid block index: {block_index!r}")
    return f"{version_id}/{segment_index}/{block_index}"


def version_prefix(version_id: str) -> str:
    """The prefix selecting every block of one version."""
    return validate_version_id(version_id) + "/"


def segment_prefix(version_id: str, segment_index: int) -> str:
    """The prefix selecting every block of one segment of one version."""
    return f"{version_prefix(version_id)}{int(segment_index)}/"


def validate_customer_id(customer_id: str) -> str:
    """Return ``customer_id`` if it is usable as a directory key, else raise BadRequest."""
    if not isinstance(customer_id, str) or not _CUSTOMER_RE.match(customer_id) or customer_id in (".", ".."):
        raise BadRequest(f"invalid customer id: {customer_id!r}")
    return customer_id


def validate_path(path: str, allow_prefix: bool = False) -> str:
    """Check a block path (or, with ``allow_prefix``, a prefix / ``""``); raise BadRequest if unsafe."""
    if not isinstance(path, str) or len(path) > MAX_PATH_LENGTH:
        raise BadRequest(f"invalid block path: {path!r}")
    if allow_prefix and path == "":
        return path
    body = path[:-1] if allow_prefix and path.endswith("/") else path
    parts = body.split("/")
    for part in parts:
        if not _COMPONENT_RE.match(part) or part in (".", ".."):
            raise BadRequest(f"invalid block path: {path!r}")
    return path


def validate_store_path(path: str) -> str:
    """Check a path a customer asks a supplier to write: a block path or one of the whole objects.

    Stricter than :func:`validate_path` (which reads and deletes use): the
    depth and the names are those of the scheme in the module docstring, so a
    customer cannot make a supplier create directories of its own choosing.
    """
    validate_path(path)
    if not _STORE_PATH_RE.match(path):
        raise BadRequest(f"invalid block path: {path!r} is not a path of the storage scheme "
                         "(<version>/<segment>/<block>, catalog-<n>/manifest, <share>.index/current|w<tag>|k<tag>, "
                         "acl.<share>/readers|writers)")
    return path


class SupplierProvider(Protocol):
    """What service_backups needs from whoever hires the suppliers (service_customer provides it).

    Declared by storage (``optional = {"suppliers": SupplierProvider}``) and
    provided by the market (``provides = (SupplierProvider,)``), so storage
    never imports the customer side. Storage hears of changes through the
    node's ``suppliers-changed`` event.
    """

    def positions(self) -> list[str]:
        """Position i's supplier (global id), "" where nobody is hired."""

    def server(self, supplier_id: str) -> Any:
        """The :class:`IStorageServer` of one supplier."""

    def settled(self) -> Any:
        """None when hiring and firing is done, else a Deferred fired when it is."""

    def retiring(self) -> list[dict]:
        """Former holders still read from until their blocks are rebuilt: ``{"supplier_id", "position"}``."""

    def rebuild_progress(self, report: dict) -> None:
        """Storage's blocks rebuilt per retiring holder."""

    def release(self, supplier_id: str) -> bool:
        """Nothing depends on this retiring holder any more: its contract may end."""


class OtherCatalogs(Protocol):
    """Catalogs of other users' files this node reads (the shares of others it has open).

    service_shares registers itself with service_backups
    (:meth:`~bitnode.storage.backups_service.BackupsService.add_other_catalogs`)
    so that a remote path under another user's share key is served by that
    share's view; storage never imports the sharing code.
    """

    def view_for(self, where: str) -> Any:
        """The catalog view serving ``where`` (a remote path or key id), None when it is mine."""

    def ready_views(self) -> list:
        """The views whose catalog has been read."""

    def transfer_managers(self) -> list:
        """The TransferManagers of the views (their downloads)."""

    def open(self, key_id: str) -> Any:
        """Open (or read again) the other user's catalog of ``key_id``; a Deferred."""


@dataclass(frozen=True)
class SegmentMeta:
    """What the catalog must keep about one uploaded segment to restore it.

    ``block_sha256`` has n entries: the SHA-256 hex of each whole stored block
    (header + payload), the same value a supplier reports in ``list_blocks``.
    ``stored`` lists the block positions a supplier acknowledged.
    """

    index: int
    plaintext_length: int
    block_sha256: tuple[str, ...]
    stored: tuple[int, ...]

    @property
    def missing(self) -> tuple[int, ...]:
        """Block positions not acknowledged (to be rebuilt later)."""
        return tuple(i for i in range(len(self.block_sha256)) if i not in self.stored)


@dataclass(frozen=True)
class Progress:
    """A snapshot of a running transfer, for progress callbacks and the API."""

    bytes_done: int
    bytes_total: int
    segments_done: int
    segments_total: int
    elapsed: float
    speed: float | None
    eta: float | None

    @property
    def fraction(self) -> float:
        """Done fraction in [0, 1]; an empty transfer is complete."""
        return 1.0 if self.bytes_total == 0 else self.bytes_done / self.bytes_total


def make_progress(
    bytes_done: int,
    bytes_total: int,
    segments_done: int,
    segments_total: int,
    started: float,
    now: float,
    bytes_this_run: int,
) -> Progress:
    """Build a :class:`Progress`; speed counts only bytes moved since ``started``.

    ``speed`` (bytes/s) and ``eta`` (seconds) are None until time has passed
    and bytes have moved, so a resumed transfer does not claim a fake speed.
    """
    elapsed = max(0.0, now - started)
    speed = bytes_this_run / elapsed if elapsed > 0 and bytes_this_run > 0 else None
    eta = max(0, bytes_total - bytes_done) / speed if speed else None
    return Progress(bytes_done, bytes_total, segments_done, segments_total, elapsed, speed, eta)
