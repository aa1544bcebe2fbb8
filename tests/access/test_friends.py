"""Friends: the persisted list, the online watcher with a Clock, and friends between real nodes."""

from __future__ import annotations

import json
import os

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.access.friends import MAX_ALIAS, FriendList, FriendsWatcher, validate_alias
from bitnode.errors import BadRequest, NotFound, Timeout
from bitnode.p2p.online_status import CONNECTED, OFFLINE, PING, UNKNOWN
from tests.access.support import NODE_SERVICES, AccessNetworkCase, pause
from tests.interface.support import start_node
from tests.support import clock_at, temp_path

BOB, CAROL = "bob@id.net", "carol@id.net_8084"


def inline(fn, *args, **kwargs):
    return defer.maybeDeferred(fn, *args, **kwargs)


class FriendListTests(unittest.TestCase):
    def setUp(self):
        self.path = temp_path(self, "friends.json")
        self.clock = clock_at(1000)

    def fresh(self):
        friends = FriendList(self.path, inline, self.clock)
        friends.load()
        return friends

    def test_add_list_remove_persisted(self):
        friends = self.fresh()
        friend, added = self.successResultOf(friends.add(BOB, "Bobby"))
        self.assertEqual((friend.global_id, friend.alias, friend.added, added), (BOB, "Bobby", 1000.0, True))
        friend, added = self.successResultOf(friends.add("http://id.net:8084/carol.xml"))
        self.assertEqual((friend.global_id, friend.alias, added), (CAROL, "carol", True))
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)

        again = self.fresh()
        self.assertEqual([(f.global_id, f.alias) for f in again.list()], [(BOB, "Bobby"), (CAROL, "carol")])
        # re-adding keeps the friend; an alias renames, an empty one does not
        friend, added = self.successResultOf(again.add(BOB))
        self.assertEqual((friend.alias, added), ("Bobby", False))
        friend, added = self.successResultOf(again.add(BOB, "Robert"))
        self.assertEqual((friend.alias, added, friend.added), ("Robert", False, 1000.0))

        removed = self.successResultOf(again.remove(BOB))
        self.assertEqual(removed.alias, "Robert")
        self.assertEqual([f.global_id for f in self.fresh().list()], [CAROL])
        self.failureResultOf(again.remove(BOB), NotFound)
        self.assertRaises(NotFound, again.get, BOB)

    def test_bad_input_is_refused_before_anything_is_written(self):
        friends = self.fresh()
        self.assertRaises(BadRequest, friends.add, "not a user")
        self.assertRaises(BadRequest, friends.add, BOB, "tab\there")
        self.assertRaises(BadRequest, friends.add, BOB, "x" * (MAX_ALIAS + 1))
        self.assertRaises(BadRequest, validate_alias, 5)
        self.assertFalse(os.path.exists(self.path))

    def test_a_failed_write_changes_nothing(self):
        def broken(fn, *args):
            return defer.fail(OSError("disk full"))

        friends = FriendList(self.path, inline, self.clock)
        friends.load()
        friends.run_in_thread = broken
        self.failureResultOf(friends.add(BOB), OSError)
        self.assertEqual(friends.list(), [])

    def test_a_corrupt_file_is_moved_aside(self):
        with open(self.path, "w") as handle:
            handle.write('{"version": 1, "friends": [{"global_id": "nonsense"}]}')
        friends = self.fresh()
        self.assertEqual(friends.list(), [])
        self.assertIn("moved to friends.json.corrupt", friends.load_problem)
        self.assertTrue(os.path.exists(self.path + ".corrupt"))
        self.successResultOf(friends.add(BOB))
        with open(self.path) as handle:
            self.assertEqual([row["global_id"] for row in json.load(handle)["friends"]], [BOB])


class FakeOnline:
    """The status table of OnlineStatus, driven by the test; pings answered by ``answers``."""

    def __init__(self, clock):
        self.clock = clock
        self.states = {}
        self.seen = {}
        self.pings = []
        self.answers = {}

    def status(self, user):
        state = self.states.get(user, UNKNOWN)
        seen = self.seen.get(user)
        return {"global_id": user, "idurl": f"http://x/{user}", "state": state, "online": state == CONNECTED,
                "last_seen": seen, "seconds_since_seen": None if seen is None else self.clock.seconds() - seen}

    def ping(self, user, timeout, retries):
        self.pings.append(user)
        self.states[user] = PING
        d = defer.Deferred()
        self.answers[user] = d
        return d

    def answer(self, user, online):
        self.states[user] = CONNECTED if online else OFFLINE
        if online:
            self.seen[user] = self.clock.seconds()
            self.answers.pop(user).callback({})
        else:
            self.answers.pop(user).errback(Timeout("no Ack"))


class FakeGateway:
    def __init__(self):
        self.listeners = []

    def add_listener(self, listener):
        self.listeners.append(listener)

    def remove_listener(self, listener):
        self.listeners.remove(listener)

    def tell(self, peer, what):
        for listener in list(self.listeners):
            listener(peer, what)


class FriendsWatcherTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        path = os.path.join(self.mktemp(), "friends.json")
        os.makedirs(os.path.dirname(path))
        self.friends = FriendList(path, inline, self.clock)
        self.friends.load()
        self.successResultOf(self.friends.add(BOB, "Bob"))
        self.successResultOf(self.friends.add(CAROL))
        self.online = FakeOnline(self.clock)
        self.gateway = FakeGateway()
        self.events = []
        self.watcher = FriendsWatcher(self.clock, self.friends, self.online, self.gateway,
                                      lambda event, data: self.events.append((event, data["global_id"])),
                                      interval=10.0, ping_timeout=2.0)
        self.watcher.start()
        self.addCleanup(self.watcher.stop)

    def test_rounds_ping_friends_and_publish_changes_only(self):
        self.clock.advance(0)
        self.assertEqual(self.online.pings, [BOB, CAROL])
        self.online.answer(BOB, True)
        self.online.answer(CAROL, False)
        self.assertEqual(self.events, [("friend-online", BOB)])  # offline at start is no news
        self.assertTrue(self.watcher.is_online(BOB))

        # bob was heard from within the interval: not pinged; carol is pinged again
        self.clock.advance(10)
        self.assertEqual(self.online.pings, [BOB, CAROL, CAROL])
        self.online.answer(CAROL, True)
        self.assertEqual(self.events[-1], ("friend-online", CAROL))

        # both silent for longer than the interval: both pinged; bob does not answer
        self.clock.advance(15)
        self.assertEqual(self.online.pings[-2:], [BOB, CAROL])
        self.online.answer(BOB, False)
        self.online.answer(CAROL, True)
        self.assertEqual(self.events[-1], ("friend-offline", BOB))
        self.assertEqual(len(self.events), 3)
        self.assertEqual(self.watcher.rounds, 3)

    def test_a_round_waits_for_the_previous_one(self):
        self.clock.advance(0)
        self.clock.advance(10)  # pings of round 1 still in flight: no second round yet
        self.assertEqual(self.online.pings, [BOB, CAROL])
        self.online.answer(BOB, False)
        self.online.answer(CAROL, False)
        self.clock.advance(10)
        self.assertEqual(self.online.pings, [BOB, CAROL, BOB, CAROL])

    def test_traffic_updates_a_friend_at_once_but_not_during_a_ping(self):
        self.online.states[BOB] = CONNECTED
        self.online.seen[BOB] = self.clock.seconds()
        self.gateway.tell(BOB, "received")
        self.gateway.tell("stranger@id.net", "received")  # not a friend: ignored
        self.assertEqual(self.events, [("friend-online", BOB)])
        self.online.states[BOB] = PING
        self.gateway.tell(BOB, "received")  # undecided while a ping runs
        self.assertTrue(self.watcher.is_online(BOB))
        self.online.states[BOB] = OFFLINE
        self.gateway.tell(BOB, "unreachable")
        self.assertEqual(self.events, [("friend-online", BOB), ("friend-offline", BOB)])

    def test_stopped_watcher_publishes_nothing_and_schedules_nothing(self):
        self.clock.advance(0)
        self.watcher.stop()
        self.online.answer(BOB, True)
        self.online.answer(CAROL, True)
        self.assertEqual(self.events, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.watcher.start()  # for the cleanup's stop

    def test_interval_change_reschedules(self):
        self.clock.advance(0)
        self.online.answer(BOB, False)
        self.online.answer(CAROL, False)
        self.watcher.set_interval(1.0)
        self.clock.advance(1.0)
        self.assertEqual(len(self.online.pings), 4)

    def test_contact_shape(self):
        contact = self.watcher.contact(self.friends.get(BOB))
        self.assertEqual(contact, {"global_id": BOB, "idurl": f"http://x/{BOB}", "username": "bob", "alias": "Bob",
                                   "added_at": 0.0, "online": False, "contact_status": "offline",
                                   "contact_state": UNKNOWN, "last_seen": None})


class FriendsNetworkTests(AccessNetworkCase):
    fast = {"services/friends/check-interval": 0.1, "services/friends/ping-timeout": 1.0}

    @inlineCallbacks
    def test_friends_added_shared_watched_and_removed(self):
        alice = yield self.joined_node("alice", self.fast)
        bob = yield self.joined_node("bob", self.fast)
        alice_id, bob_id = self.global_id(alice), self.global_id(bob)

        added = yield self.ok(alice, "friend_add", trusted_user_id=bob_id, alias="Bobby")
        self.assertEqual((added["global_id"], added["alias"], added["added"]), (bob_id, "Bobby", True))
        self.assertEqual((added["person_key_id"], added["person_key_shared"], added["person_key_error"]),
                         ("master$" + alice_id, True, ""))
        self.assertTrue(self.keystore(bob).has("master$" + alice_id))
        online = yield self.wait_event(alice, "friend-online")
        self.assertEqual(online[0]["global_id"], bob_id)
        listed = yield self.ok(alice, "friends_list")
        self.assertEqual([(f["global_id"], f["alias"], f["contact_status"]) for f in listed],
                         [(bob_id, "Bobby", "online")])
        with open(os.path.join(alice.basedir.metadata, "friends.json")) as handle:
            self.assertEqual(json.load(handle)["friends"][0]["global_id"], bob_id)
        self.assertEqual(self.events(alice, "friend-added"), [{"global_id": bob_id, "alias": "Bobby"}])

        again = yield self.ok(alice, "friend_add", trusted_user_id=bob_id, share_person_key=False)
        self.assertEqual((again["added"], again["alias"]), (False, "Bobby"))
        self.assertNotIn("person_key_shared", again)

        yield bob.stopService()
        offline = yield self.wait_event(alice, "friend-offline")
        self.assertEqual(offline[0]["global_id"], bob_id)
        listed = yield self.ok(alice, "friends_list")
        self.assertEqual(listed[0]["contact_status"], "offline")
        status = alice.service_driver.info("service_friends")["status"]
        self.assertEqual((status["friends"], status["online"]), (1, 0))

        removed = yield self.ok(alice, "friend_remove", user_id=bob_id)
        self.assertEqual(removed, {"global_id": bob_id, "alias": "Bobby", "removed": True})
        self.assertEqual((yield self.ok(alice, "friends_list")), [])
        yield self.error(alice, 404, "friend_remove", user_id=bob_id)
        yield alice.stopService()
        with open(os.path.join(alice.basedir.metadata, "friends.json")) as handle:
            self.assertEqual(json.load(handle)["friends"], [])

    @inlineCallbacks
    def test_friend_offline_is_added_without_the_key_and_the_list_survives_a_restart(self):
        alice = yield self.joined_node("alice", self.fast)
        bob = yield self.joined_node("bob", self.fast)
        bob_id = self.global_id(bob)
        yield bob.stopService()
        added = yield self.ok(alice, "friend_add", trusted_user_id=bob_id)
        self.assertEqual((added["alias"], added["person_key_shared"]), ("bob", False))
        self.assertTrue(added["person_key_error"])
        yield pause(0.3)
        self.assertEqual(self.events(alice, "friend-online"), [])

        server = self.settings["personal/identity-servers"][0].replace(":", "_")
        yield self.error(alice, 404, "friend_add", trusted_user_id=f"nobody@{server}")
        yield self.error(alice, 400, "friend_add", trusted_user_id=self.global_id(alice))
        yield self.error(alice, 400, "friend_add", trusted_user_id="not an id")

        yield alice.stopService()
        settings = dict(self.settings, **self.fast)
        alice = yield start_node(self, service_classes=NODE_SERVICES, overrides=settings,
                                 basedir=alice.basedir.root)
        self.assertTrue(alice.service_driver.is_on("service_friends"))
        listed = yield self.ok(alice, "friends_list")
        self.assertEqual([f["global_id"] for f in listed], [bob_id])
