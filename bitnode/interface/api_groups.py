"""API methods of message groups and the logs behind them: groups_list, group_create, group_info,
group_join, group_leave, group_share, group_member_remove, message_send_group, queues_list,
queue_consumers_list, queue_producers_list.

Thin: each method calls service_private_groups (:mod:`bitnode.access.groups_service`).

Result shapes:

- a group (groups_list items, group_info, group_create, group_join)::

    {"group_key_id": "group_5f0c...$alice@id.net_8084", "alias", "label", "creator", "mine": true,
     "key_size", "fingerprint", "created", "brokers": [...], "broker": "<the one asked first>", "term",
     "state": "CONNECTED" | "CATCHING_UP" | "SUBSCRIBING" | "DISCONNECTED" | "REFUSED" | "LEFT" | "INVITED"
              | "NOT_JOINED",
     "active": true, "last_sequence": 7, "head": 7, "retries", "retry_at", "last_error",
     "members": [...], "admins": [...], "admin": bool, "generation": 1, ...}

  group_info where this node is one of the group's brokers adds ``"log"`` (role, term,
  leader, head, commit, the brokers' progress), ``"queue"`` (a summary) and
  ``"consumers"`` (who is subscribed here);
- group_leave: ``{"group_key_id", "left", "key_erased", "queue_deleted"}``;
- group_share: key_share's result plus ``"group_key_id"``, ``"sequence"`` (the roster entry;
  None when the user was a member already) and, with ``admin``, ``"admin"``;
- group_member_remove: ``{"group_key_id", "member_id", "removed", "generation", "sequence"}``;
- message_send_group: the message as message_history shows it (``message_type``
  ``group_message``, ``direction`` ``outgoing``) plus ``"sequence"`` (its place in
  the group's log) and ``"group_key_id"``; answered once a majority of the brokers hold it;
- queues_list: ``[{"queue_id", "group_key_id", "owner", "created", "head", "commit", "messages",
  "bytes", "consumers", "producers", "role", "term", "leader", "brokers", "members"}]`` (the logs
  hosted by this node as a broker);
- queue_consumers_list: ``[{"queue_id", "consumer_id", "state": "online"|"offline", "pushed",
  "last_pushed_sequence", "failures", "last_error"}]``;
- queue_producers_list: ``[{"queue_id", "producer_id", "published", "last_sequence", "last_published"}]``.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import defer

from bitnode.access.groups_service import GroupsService


class GroupsMethods:
    """Mixin of :class:`bitnode.interface.api.API`."""

    node: Any

    def _groups(self) -> Any:
        return self.node.service_driver.running(GroupsService)

    def groups_list(self, only_active: bool = False, include_mine: bool = True,
                    include_granted: bool = True) -> defer.Deferred:
        """The groups this node created (mine), joined or was invited to (granted), each with its brokers,
        my membership's state and, once joined, its members, admins and message key generation."""
        return self._groups().groups(only_active, include_mine, include_granted)

    def group_create(self, creator_id: Optional[str] = None, key_size: Optional[int] = None, label: str = "",
                     timeout: float = 20.0) -> defer.Deferred:
        """A new group: a new key, and a message log kept by several brokers (this node's suppliers, then
        itself; setting services/private-groups/brokers), so the group goes on while its creator is offline
        or gone and while any minority of the brokers is away."""
        return self._groups().create_group(creator_id, key_size, label or "", timeout)

    def group_info(self, group_key_id: str) -> defer.Deferred:
        """One group: its key, its brokers, my membership, its members and admins and, where this node is
        one of its brokers, where the group's log stands."""
        return self._groups().info(group_key_id)

    def group_join(self, group_key_id: str) -> defer.Deferred:
        """Become an active member of a group an admin shared: the keys, the whole history (from any of its
        brokers), then new messages; the connection goes on in the background."""
        return self._groups().join(group_key_id)

    def group_leave(self, group_key_id: str, erase_key: bool = False) -> defer.Deferred:
        """Stop being a member; with erase_key also forget the group and its keys (for its creator: the
        group's log is deleted from its brokers too)."""
        return self._groups().leave(group_key_id, erase_key)

    def group_share(self, group_key_id: str, trusted_user_id: str, timeout: float = 30.0,
                    admin: Optional[bool] = None) -> defer.Deferred:
        """Let a user into the group and give it the group's keys: the creator can, and so can the admins the
        creator made (admin=true: the creator makes the user an admin too; false: no longer one). The user
        then calls group_join and reads the whole history."""
        return self._groups().share(group_key_id, trusted_user_id, timeout, admin)

    def group_member_remove(self, group_key_id: str, member_id: str, timeout: float = 30.0) -> defer.Deferred:
        """Goes further than the spec: an admin removes a member and the group's message key is rotated, so
        the removed member cannot read anything sent after (what it could read before stays readable to it).
        Only the creator removes an admin; nobody removes the creator."""
        return self._groups().remove_member(group_key_id, member_id, timeout)

    def message_send_group(self, group_key_id: str, data: Any) -> defer.Deferred:
        """Send a group_message; OK once a majority of the group's brokers hold it. When the broker in charge
        is gone another takes over and the message goes there (kept once); 503 only when no broker takes it
        within services/private-groups/send-timeout."""
        return self._groups().send(group_key_id, data)

    def queues_list(self) -> defer.Deferred:
        """The group logs this node hosts as a broker: their counts, and this node's role (primary or
        backup), term and leader in each."""
        return self._groups().queues()

    def queue_consumers_list(self) -> list:
        """The members subscribed to the group logs this node leads."""
        return self._groups().consumers()

    def queue_producers_list(self) -> defer.Deferred:
        """The members who published to the group logs this node hosts."""
        return self._groups().producers()
