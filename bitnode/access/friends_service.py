"""service_friends: my list of friends, their online status, and adding/removing them.

Depends on service_network (the online-status table and, below it, the
gateway and my identity).  Key sharing is used when service_key_exchange
runs, but is not a dependency: without it ``friend_add`` still adds the
friend and says why the person key was not shared.

My *person key* is the public half of my master key, ``master$<me>`` (the
key of my identity).  ``friend_add(share_person_key=True)`` sends it to the
friend with :meth:`~bitnode.access.key_exchange.KeyExchange.share`, so it
appears in their ``keys_list``; failing that (friend offline, refused...) the
friend is still added and the answer carries ``person_key_shared: false``
and ``person_key_error``.

Events on ``node.events``: ``friend-added`` and ``friend-removed`` (data
``{"global_id", "alias"}``), and the watcher's ``friend-online`` /
``friend-offline`` (see :mod:`bitnode.access.friends`).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from bitnode.access.friends import FriendList, FriendsWatcher, friend_id, validate_alias
from bitnode.access.key_exchange_service import KeyExchangeService
from bitnode.chat.ports import FriendsDirectory
from bitnode.errors import BadRequest, BitnodeError, Unavailable
from bitnode.main.options import FLOAT, Option
from bitnode.p2p.network_service import NetworkService
from bitnode.services.base import Service
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService

PREFIX = "services/friends/"


class FriendsService(Service):
    """Keeps the friends list and watches the friends' online state."""

    name = "service_friends"
    requires = {"network": NetworkService, "gateway": GatewayService, "identity": IdentityService}
    optional = {"key_exchange": KeyExchangeService}
    provides = (FriendsDirectory,)
    description = "My list of friends (correspondents) and their online status"
    options = (
        Option(PREFIX + "check-interval", FLOAT, 60.0,
               "Seconds between checks of the friends' online state; a friend not heard from within "
               "this time is pinged.", minimum=0.05, maximum=86400.0),
        Option(PREFIX + "ping-timeout", FLOAT, 10.0,
               "Seconds a check waits for a friend's answer before counting them offline.",
               minimum=0.05, maximum=300.0),
        Option(PREFIX + "key-share-timeout", FLOAT, 10.0,
               "Seconds friend_add waits for the friend to acknowledge my person key.",
               minimum=0.1, maximum=300.0),
    )
    log = Logger()
    #: set while the service runs
    friends: Optional[FriendList] = None
    watcher: Optional[FriendsWatcher] = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Deferred:
        """Load the list, then start watching."""
        online = self.deps.network.require_online()
        gateway = self.deps.gateway.require_gateway()
        friends = FriendList(os.path.join(self.ctx.basedir.metadata, "friends.json"), self.ctx.run_in_thread,
                             self.ctx.clock)
        settings = self.ctx.settings

        def loaded(_: Any) -> None:
            self.friends = friends
            self.watcher = FriendsWatcher(self.ctx.clock, friends, online, gateway, self.ctx.events.publish,
                                          settings.get(PREFIX + "check-interval"),
                                          settings.get(PREFIX + "ping-timeout"))
            settings.add_listener(PREFIX, self._settings_changed)
            self.watcher.start()

        return friends.load().addCallback(loaded)

    def stop(self) -> None:
        """Stop watching."""
        watcher, self.watcher = self.watcher, None
        self.friends = None
        if watcher is not None:
            self.ctx.settings.remove_listener(PREFIX, self._settings_changed)
            watcher.stop()

    def status(self) -> dict:
        """Facts for service_info."""
        if self.friends is None or self.watcher is None:
            return {}
        return {
            "friends": len(self.friends),
            "online": sum(1 for f in self.friends.list() if self.watcher.is_online(f.global_id)),
            "rounds": self.watcher.rounds,
            "problem": self.friends.load_problem,
        }

    def _require(self) -> tuple[FriendList, FriendsWatcher]:
        if self.friends is None or self.watcher is None:
            raise Unavailable(f"{self.name} is not running")
        return self.friends, self.watcher

    def _settings_changed(self, key: str, old: Any, new: Any) -> None:
        if self.watcher is None:
            return
        if key == PREFIX + "check-interval":
            self.watcher.set_interval(new)
        elif key == PREFIX + "ping-timeout":
            self.watcher.ping_timeout = float(new)

    # -- FriendsDirectory (the message inbox asks) ---------------------------------------------

    def friend_ids(self) -> list[str]:
        """The global ids of my friends (none while the list is not loaded)."""
        friends = self.friends
        return [friend.global_id for friend in friends.list()] if friends is not None else []

    def is_friend(self, global_id: str) -> bool:
        """Whether ``global_id`` is one of my friends."""
        friends = self.friends
        return friends is not None and friends.has(global_id)

    # -- operations ------------------------------------------------------------------------

    def list_friends(self) -> list[dict]:
        """Every friend with alias and online status, oldest first."""
        friends, watcher = self._require()
        return [watcher.contact(friend) for friend in friends.list()]

    def add_friend(self, user_id: str, alias: str = "", share_person_key: bool = True) -> Deferred:
        """Add (or re-alias) a friend; see the module docstring for the answer."""
        return Deferred.fromCoroutine(self._add(user_id, alias, share_person_key))

    async def _add(self, user_id: str, alias: str, share_person_key: bool) -> dict:
        friends, watcher = self._require()
        identity = self.deps.identity
        global_id = friend_id(user_id)
        validate_alias(alias)
        if global_id == identity.my_global_id():
            raise BadRequest("you cannot add yourself as a friend")
        await identity.fetch_identity(global_id)  # a user that does not exist is 404, not a friend
        friend, added = await friends.add(global_id, alias)
        if added:
            self.ctx.events.publish("friend-added", {"global_id": global_id, "alias": friend.alias})
        result = dict(watcher.contact(friend), added=added)
        if share_person_key:
            result.update(await self._share_person_key(global_id))
        watcher.check(global_id)  # never fails; its outcome arrives as an event
        return result

    async def _share_person_key(self, global_id: str) -> dict:
        key_id = self.deps.identity.keystore.master_key_id
        shared = {"person_key_id": key_id, "person_key_shared": False, "person_key_error": ""}
        key_exchange = self.deps.key_exchange
        if key_exchange is None:
            shared["person_key_error"] = f"{KeyExchangeService.name} is not running"
            return shared
        exchange = key_exchange.require_exchange()
        try:
            await exchange.share(key_id, global_id, False, self.ctx.settings.get(PREFIX + "key-share-timeout"))
        except BitnodeError as err:
            shared["person_key_error"] = str(err)
            self.log.info("person key not shared with {who}: {err}", who=global_id, err=err)
            return shared
        shared["person_key_shared"] = True
        return shared

    def remove_friend(self, user_id: str) -> Deferred:
        """Remove a friend; 404 if not a friend."""
        friends, watcher = self._require()
        global_id = friend_id(user_id)
        d = friends.remove(global_id)

        def removed(friend: Any) -> dict:
            watcher.forget(global_id)
            self.ctx.events.publish("friend-removed", {"global_id": global_id, "alias": friend.alias})
            return {"global_id": global_id, "alias": friend.alias, "removed": True}

        return d.addCallback(removed)
