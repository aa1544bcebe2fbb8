"""API methods for shares: shares_list, share_create, share_delete, share_grant, share_open, share_close, share_history.

Thin: each method checks its arguments and calls service_shares
(:mod:`bitnode.access.shares_service`, which documents how a share works).
A share's files are then used through the files API with the share's key
id: ``file_upload_start`` to ``share_...$owner:path`` (the owner, and the
members granted read-write once the share is open), ``files_list`` with
``key_id=share_...$owner``, ``file_download_start`` of
``share_...$owner:path`` and ``file_delete`` (a writer deletes only the
versions it uploaded).

A share as listed: ``{"key_id", "alias", "label", "owner_id", "mine",
"active", "state", "created", "grantees", "writers", "mode", "granted_by",
"proposed_by", "index_serial", "suppliers", "files", "error"}`` (an open
share of another user adds ``merge`` and ``entries_problems``: what the
writers' entries added or left out). ``mode`` is ``owner``, or my access
to another user's share as its owner's index says (``rw``, ``ro``; "" until
read); ``writers`` are the members who may write. ``state`` is ``CONNECTED`` for an open
share (a reader's share: once its index was read from the owner's
suppliers), ``CLOSED``, or the reader's connecting state
(``DHT_LOOKUP``, ``SUPPLIERS?``, ``INDEX?``, ``DISCONNECTED``).
"""

from __future__ import annotations

from twisted.internet import defer

from bitnode.access.shares_service import SharesService
from bitnode.crypt import keys
from bitnode.errors import BadRequest

KEY_SIZES = (2048, 3072, 4096)


class SharesMethods:
    """share_* and shares_list; mixed into :class:`bitnode.interface.api.API`."""

    def _shares(self) -> SharesService:
        return self.node.service_driver.running(SharesService)

    def shares_list(self, only_active: bool = False, include_mine: bool = True, include_granted: bool = True) -> list:
        """Shares I own and shares granted to me, with their state."""
        return self._shares().list(only_active, include_mine, include_granted)

    def share_create(self, owner_id: str | None = None, key_size: int | None = None, label: str = "") -> defer.Deferred:
        """A new share (an RSA key ``share_<id>$me``) to upload files into and grant to others.

        With another user's ``owner_id`` (as the spec says: the files are then
        stored by that user's suppliers, once that user authorizes the share)
        the new key ``share_<id>$owner`` is sent to the owner at once (its
        node keeps it as a share of its own, ``proposed_by`` me, granted to
        nobody) and the share lists here as ``PROPOSED``. The owner
        authorizes it with ``share_grant`` to me (read-write by default);
        then I open it and upload into it like any share granted to me.
        """
        if key_size is not None and (key_size not in KEY_SIZES or key_size < keys.MIN_RSA_BITS):
            raise BadRequest(f"key_size must be one of {', '.join(map(str, KEY_SIZES))}")
        return self._shares().create(owner_id, key_size, label)

    def share_delete(self, key_id: str) -> defer.Deferred:
        """Delete a share: the owner's files in it and its grants on the suppliers, then the key."""
        return self._shares().delete(key_id)

    def share_grant(self, key_id: str, trusted_user_id: str, timeout: float = 30, mode: str = "rw") -> defer.Deferred:
        """Give a user the share key and let the owner's suppliers serve the share to that user.

        ``mode`` ``rw`` (the default, as the spec says: both sides upload and
        download) lets the user upload into the share too, with the owner's
        suppliers and within the owner's quota there; ``ro`` lets it only
        read. Granting again changes a member's access. The answer adds
        ``mode``, ``grantees`` and ``writers`` (the members who may write).
        """
        if not timeout > 0:
            raise BadRequest("timeout must be positive")
        return self._shares().grant(key_id, trusted_user_id, timeout, mode)

    def share_revoke(self, key_id: str, trusted_user_id: str, timeout: float = 30) -> defer.Deferred:
        """Take a member off my share for good (beyond the spec): suppliers refuse it, the share key is renewed.

        The owner's suppliers refuse the member from the next packet on; a new
        generation of the share key replaces the old one (the version keys in
        the owner's catalog are re-wrapped, no block is uploaded again); the
        index is published sealed with it; each remaining member gets the new
        key at once when online and as a key envelope on the owner's suppliers
        in any case (taken at its next ``share_open``, the owner may be away).
        A revoked member that kept the old key can still open the versions it
        could read before (their blocks do not change), never one uploaded
        after the revoke. The answer adds ``key_fingerprint``, ``rewrapped``,
        ``absorbed`` (the writers' files taken in first), ``envelopes`` and
        ``regranted`` (per member: ``sent`` or why not).
        """
        if not timeout > 0:
            raise BadRequest("timeout must be positive")
        return self._shares().revoke(key_id, trusted_user_id, timeout)

    def share_open(self, key_id: str) -> defer.Deferred:
        """Connect to the share's suppliers and make its files visible (answers once connected, or why not)."""
        return self._shares().open(key_id)

    def share_close(self, key_id: str) -> defer.Deferred:
        """Disconnect a share granted to me (its files are no longer visible); mark mine inactive."""
        return self._shares().close(key_id)

    def share_history(self) -> list:
        """What happened to shares on this node, oldest first: ``{"time", "event", "key_id", "user", "detail"}``."""
        return self._shares().history()
