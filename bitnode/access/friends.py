"""Friends: the users I keep in my list of correspondents, and whether they are online.

:class:`FriendList` is the list itself, kept in ``basedir/metadata/friends.json``
(version 1, written atomically before any change is reported)::

    {"version": 1, "friends": [{"global_id": "bob@id.net", "alias": "Bob", "added": 1700000000.0}]}

A file that cannot be read is moved aside to ``friends.json.corrupt`` (so the
next save does not destroy what may still be rescued) and the list starts
empty; the problem is reported in ``load_problem``.

:class:`FriendsWatcher` follows my friends' online state, from two sources:
every packet event the gateway reports (a packet from a friend, a send to a
friend that failed or timed out) updates the friend at once, and every
``interval`` seconds (node clock) each friend not heard from within the last
``interval`` is pinged.  The online test is the one of
:class:`~bitnode.p2p.online_status.OnlineStatus`.  When a friend's state
changes, ``friend-online`` or ``friend-offline`` is published with
``{"global_id", "idurl", "alias", "state", "online"}``.  A friend starts as
offline: finding one offline at start-up publishes nothing, finding one
online publishes ``friend-online``.  While a ping is in flight the state is
undecided and nothing is published.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from bitnode import globalid
from bitnode.crypt.keystore import MAX_LABEL, validate_label
from bitnode.errors import BadRequest, BitnodeError, Conflict, NotFound
from bitnode.main.fileutil import atomic_write, read_limited
from bitnode.p2p.online_status import PING

FILE_VERSION = 1
MAX_FRIENDS = 5000
MAX_ALIAS = MAX_LABEL
MAX_FILE_BYTES = 4 * 1024 * 1024
#: Pings of one periodic round in flight at once.
PARALLEL_PINGS = 8


@dataclass(frozen=True)
class Friend:
    """One friend: global id, the alias shown for them, when they were added."""

    global_id: str
    alias: str
    added: float

    def as_dict(self) -> dict:
        """The stored form."""
        return {"global_id": self.global_id, "alias": self.alias, "added": self.added}


def validate_alias(alias: str) -> str:
    """An alias: the same rules as a key label (at most 256 characters, no control characters)."""
    try:
        return validate_label(alias)
    except BadRequest as err:
        raise BadRequest(str(err).replace("label", "alias")) from None


def friend_id(user_id: str) -> str:
    """A global id or an IDURL -> the canonical global id (BadRequest otherwise)."""
    return str(globalid.to_global_id(user_id))


def _parse_file(data: bytes) -> dict[str, Friend]:
    document = json.loads(data.decode("utf-8"))
    if not isinstance(document, dict) or document.get("version") != FILE_VERSION:
        raise ValueError("not a version 1 friends file")
    friends: dict[str, Friend] = {}
    for row in document.get("friends", []):
        if not isinstance(row, dict):
            raise ValueError("a friend is not an object")
        global_id = friend_id(row.get("global_id"))
        added = row.get("added", 0.0)
        if isinstance(added, bool) or not isinstance(added, (int, float)):
            raise ValueError("bad 'added' time")
        friends[global_id] = Friend(global_id, validate_alias(row.get("alias", "")), float(added))
    return friends


def _read(path: str) -> tuple[dict[str, Friend], str]:
    """Thread side of :meth:`FriendList.load`: the friends and a problem text ('' if none)."""
    try:
        data = read_limited(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        return {}, ""
    try:
        return _parse_file(data), ""
    except (ValueError, UnicodeDecodeError, BadRequest) as err:
        aside = path + ".corrupt"
        os.replace(path, aside)
        return {}, f"{os.path.basename(path)} could not be read ({err}); moved to {os.path.basename(aside)}"


def _write(path: str, friends: list[Friend]) -> None:
    document = {"version": FILE_VERSION, "friends": [friend.as_dict() for friend in friends]}
    atomic_write(path, json.dumps(document, indent=1, sort_keys=True).encode("utf-8"), mode=0o600)


class FriendList:
    """The persisted list of friends, in the order they were added.

    Changes are serialised and written (off the reactor) before the
    in-memory list changes and before the caller hears of them.
    """

    log = Logger()

    def __init__(self, path: str, run_in_thread: Callable[..., Deferred], clock: Any) -> None:
        self.path = path
        self.run_in_thread = run_in_thread
        self.clock = clock
        self.load_problem = ""
        self._friends: dict[str, Friend] = {}
        self._lock = defer.DeferredLock()

    def load(self) -> Deferred:
        """Read the file; fires when the list is ready."""
        d = self.run_in_thread(_read, self.path)

        def loaded(result: tuple[dict[str, Friend], str]) -> None:
            self._friends, self.load_problem = result
            if self.load_problem:
                self.log.warn("friends: {problem}", problem=self.load_problem)

        return d.addCallback(loaded)

    def __len__(self) -> int:
        return len(self._friends)

    def has(self, global_id: str) -> bool:
        """Whether ``global_id`` is a friend."""
        return global_id in self._friends

    def get(self, global_id: str) -> Friend:
        """One friend; NotFound if not a friend."""
        try:
            return self._friends[global_id]
        except KeyError:
            raise NotFound(f"{global_id} is not in the list of friends") from None

    def list(self) -> list[Friend]:
        """Every friend, oldest first."""
        return list(self._friends.values())

    def add(self, global_id: str, alias: str = "") -> Deferred:
        """Add a friend, or change the alias of one; Deferred[(Friend, newly_added)].

        An empty alias keeps the current one (a new friend gets the user name).
        Conflict when the list is full.
        """
        global_id = friend_id(global_id)
        validate_alias(alias)
        return self._lock.run(lambda: Deferred.fromCoroutine(self._add(global_id, alias)))

    async def _add(self, global_id: str, alias: str) -> tuple[Friend, bool]:
        existing = self._friends.get(global_id)
        if existing is not None:
            if not alias or alias == existing.alias:
                return existing, False
            friend = replace(existing, alias=alias)
        else:
            if len(self._friends) >= MAX_FRIENDS:
                raise Conflict(f"the list of friends is full ({MAX_FRIENDS})")
            friend = Friend(global_id, alias or globalid.GlobalId.parse(global_id).name, self.clock.seconds())
        friends = dict(self._friends)
        friends[global_id] = friend
        await self.run_in_thread(_write, self.path, list(friends.values()))
        self._friends = friends
        return friend, existing is None

    def remove(self, global_id: str) -> Deferred:
        """Remove a friend; Deferred[Friend]; NotFound if not a friend."""
        global_id = friend_id(global_id)
        return self._lock.run(lambda: Deferred.fromCoroutine(self._remove(global_id)))

    async def _remove(self, global_id: str) -> Friend:
        friend = self.get(global_id)
        friends = {key: value for key, value in self._friends.items() if key != global_id}
        await self.run_in_thread(_write, self.path, list(friends.values()))
        self._friends = friends
        return friend


@dataclass(eq=False, repr=False)
class FriendsWatcher:
    """Tracks my friends' online state and publishes its changes.

    :param clock: ``IReactorTime`` of the node (periodic rounds).
    :param friends: the :class:`FriendList`.
    :param online: the :class:`~bitnode.p2p.online_status.OnlineStatus`
        (``status(user)`` and ``ping(user, timeout, retries)``).
    :param gateway: has ``add_listener`` / ``remove_listener`` (traffic news).
    :param publish: ``publish(event_id, data)``.
    :param interval: seconds between rounds; a friend heard from more
        recently than this is not pinged.
    :param ping_timeout: seconds each ping waits for the Ack.
    """

    log = Logger()

    clock: Any
    friends: FriendList
    online: Any
    gateway: Any
    publish: Callable[[str, Any], Any]
    interval: float
    ping_timeout: float
    rounds: int = field(init=False, default=0)
    _online: dict[str, bool] = field(init=False, default_factory=dict)
    _call: Any = field(init=False, default=None)
    _round: Optional[Deferred] = field(init=False, default=None)
    _running: bool = field(init=False, default=False)
    _pings: defer.DeferredSemaphore = field(init=False, default_factory=lambda: defer.DeferredSemaphore(PARALLEL_PINGS))

    def __post_init__(self) -> None:
        self.interval, self.ping_timeout = float(self.interval), float(self.ping_timeout)

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Listen to the gateway and run the first round now."""
        self._running = True
        self.gateway.add_listener(self._traffic)
        self._schedule(0)

    def stop(self) -> None:
        """Stop the rounds and stop listening; pings in flight end without effect."""
        self._running = False
        self.gateway.remove_listener(self._traffic)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def set_interval(self, interval: float) -> None:
        """Use a new interval from now on (the next round is rescheduled)."""
        self.interval = float(interval)
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._schedule(self.interval)

    # -- queries -------------------------------------------------------------------

    def is_online(self, global_id: str) -> bool:
        """The last state decided for ``global_id`` (False until known)."""
        return self._online.get(global_id, False)

    def contact(self, friend: Friend) -> dict:
        """The API shape of one friend, with their online status."""
        status = self.online.status(friend.global_id)
        online = self.is_online(friend.global_id)
        return {
            "global_id": friend.global_id,
            "idurl": status["idurl"],
            "username": globalid.GlobalId.parse(friend.global_id).name,
            "alias": friend.alias,
            "added_at": friend.added,
            "online": online,
            "contact_status": "online" if online else "offline",
            "contact_state": status["state"],
            "last_seen": status["last_seen"],
        }

    def forget(self, global_id: str) -> None:
        """Drop what is known of a removed friend."""
        self._online.pop(global_id, None)

    # -- checking ---------------------------------------------------------------------

    def check(self, global_id: str) -> Deferred:
        """Decide ``global_id``'s state now, pinging unless heard from within the interval.

        Never fails: fires with the online state (bool).
        """
        status = self.online.status(global_id)
        age = status["seconds_since_seen"]
        if status["online"] and age is not None and age <= self.interval:
            return defer.succeed(self._decide(global_id))
        d = self.online.ping(global_id, self.ping_timeout, 0)

        def failed(failure: Failure) -> None:
            # OFFLINE, unknown user...: the status table says so; anything else is a bug, logged
            if not failure.check(BitnodeError):
                self.log.failure("checking {who} failed", failure, who=global_id)
            return None

        d.addErrback(failed)
        d.addCallback(lambda _: self._decide(global_id))
        return d

    def _schedule(self, delay: float) -> None:
        if self._running:
            self._call = self.clock.callLater(delay, self._start_round)

    def _start_round(self) -> None:
        self._call = None
        if not self._running:
            return
        if self._round is not None:  # the previous round is still pinging
            self._schedule(self.interval)
            return
        self.rounds += 1
        checks = [self._pings.run(self.check, friend.global_id) for friend in self.friends.list()]
        self._round = defer.gatherResults(checks, consumeErrors=True)

        def finished(result: Any) -> None:
            self._round = None
            if isinstance(result, Failure):
                self.log.failure("friends check round failed", result)
            self._schedule(self.interval)

        self._round.addBoth(finished)

    def _traffic(self, peer_id: str, what: str) -> None:
        if self.friends.has(peer_id):
            self._decide(peer_id)

    def _decide(self, global_id: str) -> bool:
        """Take the state from the status table; publish a change."""
        status = self.online.status(global_id)
        previous = self._online.get(global_id, False)
        if not self._running or not self.friends.has(global_id) or status["state"] == PING:
            return previous  # stopped, removed meanwhile, or a ping in flight: undecided
        online = bool(status["online"])
        self._online[global_id] = online
        if online != previous:
            friend = self.friends.get(global_id)
            event = "friend-online" if online else "friend-offline"
            self.log.info("{event}: {who}", event=event, who=global_id)
            self.publish(event, {"global_id": global_id, "idurl": status["idurl"], "alias": friend.alias,
                                 "state": status["state"], "online": online})
        return online
