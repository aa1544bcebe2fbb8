"""What the chat services need from other parts of the node, declared here so chat imports none of them.

:class:`FriendsDirectory` is provided by service_friends (``bitnode.access``,
which builds on chat): private messages ask it who is a friend, for the
friends-only mode and the strangers' quota (:mod:`bitnode.chat.inbox_limits`).
"""

from __future__ import annotations

from typing import Protocol


class FriendsDirectory(Protocol):
    """My friends, as far as the message inbox needs to know them."""

    def friend_ids(self) -> list[str]:
        """The global ids of my friends."""

    def is_friend(self, global_id: str) -> bool:
        """Whether ``global_id`` is one of my friends."""
