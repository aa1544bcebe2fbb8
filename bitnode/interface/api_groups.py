"""API methods of message groups and the queues behind them: groups_list, group_create, group_info,
group_join, group_leave, group_share, message_send_group, queues_list, queue_consumers_list,
queue_producers_list.

Thin: each method calls service_private_groups (:mod:`bitnode.access.groups_service`).

Result shapes:

- a group (groups_list items, group_info, group_create, group_join)::

    {"group_key_id": "group_5f0c...$alice@id.net_8084", "alias", "label", "creator", "broker",
     "mine": true, "key_size", "fingerprint", "created",
     "state": "CONNECTED" | "CATCHING_UP" | "SUBSCRIBING" | "DISCONNECTED" | "REFUSED" | "LEFT" | "NOT_JOINED",
     "active": true, "last_sequence": 7, "head": 7, "retries", "retry_at", "last_error", ...}

  group_info of a group I created adds ``"queue"`` (its summary), ``"members"``
  (who proved they hold the key) and ``"consumers"`` (who is subscribed);
- group_leave: ``{"group_key_id", "left", "key_erased", "queue_deleted"}``;
- group_share: key_share's result plus ``"group_key_id"``;
- message_send_group: the message as message_history shows it (``message_type``
  ``group_message``, ``direction`` ``outgoing``) plus ``"sequence"`` (its place in
  the group) and ``"group_key_id"``; answered once the group's broker stored it;
- queues_list: ``[{"queue_id", "group_key_id", "owner", "created", "head", "messages",
  "consumers", "producers"}]`` (the queues hosted by this node: the groups it created);
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
        """The groups whose key this node holds: created here (mine) or shared with me (granted)."""
        return self._groups().groups(only_active, include_mine, include_granted)

    def group_create(self, creator_id: Optional[str] = None, key_size: Optional[int] = None, label: str = "",
                     timeout: float = 20.0) -> defer.Deferred:
        """A new group (a new key), hosted and joined by this node."""
        return self._groups().create_group(creator_id, key_size, label or "", timeout)

    def group_info(self, group_key_id: str) -> defer.Deferred:
        """One group: its key, my membership and, if I created it, its queue."""
        return self._groups().info(group_key_id)

    def group_join(self, group_key_id: str) -> defer.Deferred:
        """Become an active member; the connection to the broker goes on in the background."""
        return self._groups().join(group_key_id)

    def group_leave(self, group_key_id: str, erase_key: bool = False) -> defer.Deferred:
        """Stop being a member; with erase_key also forget the group's key."""
        return self._groups().leave(group_key_id, erase_key)

    def group_share(self, group_key_id: str, trusted_user_id: str, timeout: float = 30.0) -> defer.Deferred:
        """Send the group's key to a user so they can join (only the creator can)."""
        return self._groups().share(group_key_id, trusted_user_id, timeout)

    def message_send_group(self, group_key_id: str, data: Any) -> defer.Deferred:
        """Send a group_message; OK once the group's broker stored it (503 if it is unreachable)."""
        return self._groups().send(group_key_id, data)

    def queues_list(self) -> defer.Deferred:
        """The group queues this node hosts."""
        return self._groups().queues()

    def queue_consumers_list(self) -> list:
        """The members subscribed to the queues this node hosts."""
        return self._groups().consumers()

    def queue_producers_list(self) -> defer.Deferred:
        """The members who published to the queues this node hosts."""
        return self._groups().producers()
