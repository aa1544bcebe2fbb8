"""API methods for sharing and auditing keys (key_share, key_audit) and friends (friend_*).

Thin: each method checks its arguments and calls service_key_exchange
(:mod:`bitnode.access.key_exchange`) or service_friends
(:mod:`bitnode.access.friends_service`).

Result shapes:

- key_share: ``{"key_id", "trusted_user_id", "include_private", "fingerprint",
  "label", "shared": true}``;
- key_audit: ``{"result": "OK"|"FAILED", "reason", "key_id",
  "untrusted_user_id", "is_private", "fingerprint"}``;
- a friend: ``{"global_id", "idurl", "username", "alias", "added_at", "online",
  "contact_status": "online"|"offline", "contact_state", "last_seen"}``;
  friend_add adds ``"added"`` (true when new) and, with share_person_key,
  ``"person_key_id", "person_key_shared", "person_key_error"``;
- friend_remove: ``{"global_id", "alias", "removed": true}``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from bitnode.access.friends_service import FriendsService
from bitnode.access.key_exchange import check_timeout
from bitnode.access.key_exchange_service import KeyExchangeService


class AccessMethods:
    """key_share, key_audit, friends_list, friend_add, friend_remove; mixed into the API."""

    def _running(self, kind: type) -> Any:
        return self.node.service_driver.running(kind)

    # --- keys ------------------------------------------------------------------------

    def key_share(self, key_id: str, trusted_user_id: str, include_private: bool = False,
                  timeout: float = 10.0) -> Deferred:
        """Send a key (public, or private too) to a user; answers once they stored it.

        Any key held here may go except the private part of a master key: my
        own keys, and keys other users gave me (share and group keys), the
        latter as their owner's policy allows (for a share: only its
        read-write members pass it on, unless the owner set
        ``services/shares/reshare``; 403 otherwise). Passing a share key on
        gives the key, not access: the owner's suppliers serve only the members
        the owner listed (``share_grant``). The recipient keeps a key of a third
        party only when it holds no different key under that id (409); the
        key's owner replaces one (a new generation after ``share_revoke``).
        """
        check_timeout(timeout)
        exchange = self._running(KeyExchangeService).require_exchange()
        return exchange.share(key_id, trusted_user_id, include_private, timeout)

    def key_audit(self, key_id: str, untrusted_user_id: str, is_private: bool = False,
                  timeout: float = 10.0) -> Deferred:
        """Ask a user to prove it holds a key (its private part with is_private)."""
        check_timeout(timeout)
        exchange = self._running(KeyExchangeService).require_exchange()
        return exchange.audit(key_id, untrusted_user_id, is_private, timeout)

    # --- friends ------------------------------------------------------------------------

    def friends_list(self) -> list:
        """My friends with alias and online status."""
        return self._running(FriendsService).list_friends()

    def friend_add(self, trusted_user_id: str, alias: str = "", share_person_key: bool = True) -> Deferred:
        """Add a friend (or change their alias), sharing my person key unless told not to."""
        return self._running(FriendsService).add_friend(trusted_user_id, alias, share_person_key)

    def friend_remove(self, user_id: str) -> Deferred:
        """Remove a friend."""
        return self._running(FriendsService).remove_friend(user_id)
