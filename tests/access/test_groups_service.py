"""In-process network: groups between real Nodes (identity server, gateways over loopback, 2048-bit keys).

Everything a user does goes through the API dispatcher, the way a client calls it.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks

from bitnode.access import group_roster
from bitnode.access.group_links import BrokerChain
from bitnode.access.group_protocol import is_group_frame
from bitnode.access.groups_service import GroupsService
from bitnode.chat.message_crypto import GROUP_MESSAGE, MessageHeader, MessageRejected, seal_with_secret
from bitnode.chat.messages_service import PrivateMessagesService
from bitnode.errors import BadRequest, Forbidden
from bitnode.transport.commands import Command
from tests.access.support import NODE_SERVICES, AccessNetworkCase, pause
from tests.interface.support import connect_ws, wait_until

GROUPS = "service_private_groups"


class GroupHelpers:
    """Helpers the groups tests share (a mixin of AccessNetworkCase)."""

    @inlineCallbacks
    def member_node(self, name, overrides=None):
        node = yield self.joined_node(name, overrides)
        yield self.until(lambda: node.service_driver.is_on(GROUPS), f"{name}'s {GROUPS}")
        return node

    @inlineCallbacks
    def until(self, check, what, seconds=30.0):
        yield wait_until(check, what, timeout=seconds)

    def groups_of(self, node):
        return node.service_driver.get(GROUPS)

    def member(self, node, group):
        return self.groups_of(node).members.get(group)

    @inlineCallbacks
    def connected(self, node, group, seconds=30.0):
        yield self.until(lambda: self.member(node, group) is not None and self.member(node, group).state == "CONNECTED",
                         f"{self.global_id(node)} connected to {group}", seconds)

    @inlineCallbacks
    def group_history(self, node, group):
        """(sender, data["message"]) of the group's messages in the node's history, oldest first."""
        found = yield self.ok(node, "message_history", recipient_id=group, message_type="group_message", limit=1000)
        return [(row["sender"], row["data"]["message"]) for row in reversed(found["messages"])]

    @inlineCallbacks
    def wait_history(self, node, group, count, seconds=30.0):
        rows = []
        for _ in range(int(seconds / 0.02)):
            rows = yield self.group_history(node, group)
            if len(rows) >= count:
                return rows
            yield pause(0.02)
        self.fail(f"{self.global_id(node)} has {len(rows)} of {count} messages of {group}")

    def use_brokers(self, creator, *brokers):
        """The creator's new groups are hosted by these nodes (as if they were its suppliers)."""
        self.groups_of(creator).broker_candidates = lambda: [self.global_id(b) for b in brokers]

    @inlineCallbacks
    def new_group(self, owner, *members):
        info = yield self.ok(owner, "group_create", label="friends", key_size=2048)
        group = info["group_key_id"]
        for node in members:
            shared = yield self.ok(owner, "group_share", group_key_id=group, trusted_user_id=self.global_id(node))
            self.assertEqual((shared["group_key_id"], shared["include_private"]), (group, True))
            yield self.ok(node, "group_join", group_key_id=group)
            yield self.connected(node, group)
        return group


class GroupsNetworkTests(GroupHelpers, AccessNetworkCase):
    """Groups whose creator is their only broker (a node without suppliers)."""

    node_services = [*NODE_SERVICES, PrivateMessagesService, GroupsService]

    @inlineCallbacks
    def test_a_group_of_three_agrees_on_the_order_and_a_late_joiner_sees_the_history(self):
        alice, bob, carol = yield defer.gatherResults([self.member_node(n) for n in ("alice", "bob", "carol")])
        group = yield self.new_group(alice, bob, carol)
        self.assertTrue(group.startswith("group_") and group.endswith("$" + self.global_id(alice)))
        yield self.ok(carol, "message_receive", consumer_callback_id="ui", message_types="group_message",
                      polling_timeout=0)
        ws = yield connect_ws(self, bob)

        sends = []
        for n in range(3):
            for node, name in ((alice, "a"), (bob, "b"), (carol, "c")):
                sends.append(self.ok(node, "message_send_group", group_key_id=group, data={"message": f"{name}{n}"}))
        sent = yield defer.gatherResults(sends)
        sequences = sorted(row["sequence"] for row in sent)
        self.assertEqual(len(set(sequences)), 9)
        self.assertTrue(all(row["message_type"] == GROUP_MESSAGE and row["direction"] == "outgoing" for row in sent))

        histories = yield defer.gatherResults([self.wait_history(node, group, 9) for node in (alice, bob, carol)])
        self.assertEqual(histories[0], histories[1])
        self.assertEqual(histories[0], histories[2])
        by_sequence = sorted(sent, key=lambda row: row["sequence"])
        self.assertEqual(histories[0], [(row["sender"], row["data"]["message"]) for row in by_sequence])

        dave = yield self.member_node("dave")
        yield self.ok(alice, "group_share", group_key_id=group, trusted_user_id=self.global_id(dave))
        self.assertEqual(self.events(dave, "group-invited")[0]["group_key_id"], group)
        invited = yield self.ok(dave, "group_info", group_key_id=group)
        self.assertEqual((invited["state"], invited["brokers"]), ("INVITED", [self.global_id(alice)]))
        yield self.ok(dave, "group_join", group_key_id=group)
        late = yield self.wait_history(dave, group, 9)
        self.assertEqual(late, histories[0])
        yield self.connected(dave, group)
        yield self.ok(dave, "message_send_group", group_key_id=group, data="d0")
        everyone = yield defer.gatherResults([self.wait_history(node, group, 10) for node in (alice, bob, carol, dave)])
        self.assertEqual(everyone[0][-1], (self.global_id(dave), "d0"))
        self.assertTrue(all(rows == everyone[0] for rows in everyone))

        # the message stream, conversations, events
        polled = yield self.ok(carol, "message_receive", consumer_callback_id="ui", message_types="group_message",
                               polling_timeout=0)
        self.assertEqual(len(polled), 7)  # carol's own three are outgoing
        self.assertEqual({row["conversation_id"] for row in polled}, {group})
        conversations = yield self.ok(bob, "message_conversations_list", message_types=["group_message"])
        self.assertEqual([c["conversation_id"] for c in conversations["conversations"]], [group])
        self.assertEqual(conversations["conversations"][0]["messages"], 10)
        received = yield self.wait_event(bob, "group-message-received", 7)
        self.assertEqual(received[0]["group_key_id"], group)
        frame = yield ws.next_message(lambda m: m.get("type") == "stream_message", timeout=5)
        self.assertEqual((frame["payload"]["message_type"], frame["payload"]["conversation_id"]),
                         (GROUP_MESSAGE, group))
        joined = {e["member_id"] for e in self.events(alice, "group-member-joined") if e["queue"]}
        self.assertEqual(joined, {self.global_id(n) for n in (alice, bob, carol, dave)})

        # the log, as its broker lists it: three adds (control entries) and ten messages
        [queue] = yield self.ok(alice, "queues_list")
        self.assertEqual((queue["queue_id"], queue["head"], queue["messages"], queue["consumers"], queue["producers"],
                          queue["role"]), (group, 13, 10, 4, 4, "primary"))
        consumers = yield self.ok(alice, "queue_consumers_list")
        self.assertEqual(len(consumers), 4)
        producers = yield self.ok(alice, "queue_producers_list")
        self.assertEqual({p["producer_id"]: p["published"] for p in producers},
                         {self.global_id(alice): 3, self.global_id(bob): 3, self.global_id(carol): 3,
                          self.global_id(dave): 1})
        self.assertEqual((yield self.ok(bob, "queues_list")), [])

        # groups as each member lists them
        info = yield self.ok(alice, "group_info", group_key_id=group)
        self.assertEqual((info["mine"], info["state"], info["last_sequence"], info["label"], info["admins"]),
                         (True, "CONNECTED", 13, "friends", [self.global_id(alice)]))
        self.assertEqual(len(info["members"]), 4)
        granted = yield self.ok(bob, "groups_list", include_mine=False)
        self.assertEqual([(g["group_key_id"], g["mine"], g["active"], g["label"]) for g in granted],
                         [(group, False, True, "friends")])
        self.assertEqual((yield self.ok(bob, "groups_list", include_granted=False)), [])

    @inlineCallbacks
    def test_someone_not_invited_is_refused(self):
        alice, bob, eve = yield defer.gatherResults([self.member_node(n) for n in ("alice", "bob", "eve")])
        group = yield self.new_group(alice, bob)
        yield self.ok(bob, "message_send_group", group_key_id=group, data="for members only")

        text = yield self.error(eve, 404, "group_join", group_key_id=group)
        self.assertIn("must group_share it", text)
        yield self.error(eve, 404, "message_send_group", group_key_id=group, data="hi")
        # eve talks to the broker directly, as a modified node would
        eves = self.groups_of(eve)
        link = BrokerChain(eves.ask, group, (self.global_id(alice),))
        for request in (lambda: link.subscribe(0), lambda: link.fetch(0, 10), lambda: link.publish(b"\x02junk")):
            failure = yield self.assertFailure(request(), Forbidden)
            self.assertIn("is not a member", str(failure))
        # the key alone does not let her in: the roster decides
        keys = self.keystore(alice)
        self.keystore(eve).add_private(group, keys.private_key(group).to_pem(), "stolen")
        failure = yield self.assertFailure(link.subscribe(0), Forbidden)
        self.assertIn("is not a member", str(failure))
        [queue] = yield self.ok(alice, "queues_list")
        self.assertEqual(queue["head"], 2)
        self.assertNotIn(self.global_id(eve), [c["consumer_id"] for c in (yield self.ok(alice, "queue_consumers_list"))])

        # a member cannot slip in a message signed as someone else
        bob_keys = self.keystore(bob)
        secret = (yield self.groups_of(bob).keyring.secrets(group))[1]
        forged = seal_with_secret(MessageHeader(GROUP_MESSAGE, self.global_id(alice), group, "forged1", 1.0),
                                  {"message": "x"}, bob_keys.private_key(bob_keys.master_key_id), 1, secret)
        bob_link = BrokerChain(self.groups_of(bob).ask, group, (self.global_id(alice),))
        failure = yield self.assertFailure(bob_link.publish(forged), BadRequest)
        self.assertIn("published by " + self.global_id(bob), str(failure))
        # nor a control entry signed by another, nor one the roster does not allow
        bogus = group_roster.encode("admin", group, self.global_id(bob), 1.0, bob_keys.private_key(bob_keys.master_key_id),
                                    member=self.global_id(bob), admin=True)
        failure = yield self.assertFailure(bob_link.publish(bogus), Forbidden)
        self.assertIn("is not an admin", str(failure))
        # and only an admin lets others in
        carol = yield self.member_node("carol")
        text = yield self.error(bob, 403, "group_share", group_key_id=group, trusted_user_id=self.global_id(carol))
        self.assertIn("only an admin", text)

    @inlineCallbacks
    def test_an_unreachable_broker_is_an_error_and_the_member_reconnects(self):
        alice = yield self.member_node("alice")
        bob = yield self.member_node("bob", {"services/private-groups/request-timeout": 0.5,
                                             "services/private-groups/send-timeout": 2.0})
        group = yield self.new_group(alice, bob)
        alice_groups = self.groups_of(alice)
        router = alice.service_driver.get("service_gateway").require_gateway().router
        frames = lambda packet: is_group_frame(packet.payload)  # noqa: E731
        alice_groups._route.remove()
        deaf = router.add(Command.MESSAGE, lambda packet, address: None, accepts=frames)  # the broker hears nothing

        text = yield self.error(bob, 503, "message_send_group", group_key_id=group, data="anyone?")
        self.assertIn("is reachable, message not sent", text)
        self.assertEqual(self.member(bob, group).state, "DISCONNECTED")
        text = yield self.error(bob, 503, "message_send_group", group_key_id=group, data="still?")
        self.assertIn("no broker is reachable", text)
        info = yield self.ok(bob, "group_info", group_key_id=group)
        self.assertEqual((info["state"], info["active"]), ("DISCONNECTED", False))
        self.assertEqual((yield self.ok(bob, "groups_list", only_active=True)), [])

        deaf.remove()  # back
        alice_groups._route = router.add(Command.MESSAGE, alice_groups._on_frame, accepts=frames)
        yield self.ok(bob, "group_join", group_key_id=group)  # try now rather than after the backoff
        yield self.connected(bob, group)
        yield self.ok(bob, "message_send_group", group_key_id=group, data="back")
        rows = yield self.wait_history(alice, group, 1)
        self.assertEqual(rows, [(self.global_id(bob), "back")])

        # the broker's groups service stops: the same clear error; it starts again with its log and membership
        yield self.ok(alice, "service_stop", service_name=GROUPS)
        text = yield self.error(bob, 503, "message_send_group", group_key_id=group, data="hello?")
        self.assertIn("does not serve groups now", text)
        yield self.ok(alice, "service_start", service_name=GROUPS)
        yield self.connected(alice, group)
        yield self.ok(bob, "group_join", group_key_id=group)
        yield self.connected(bob, group)
        yield self.ok(bob, "message_send_group", group_key_id=group, data="again")
        rows = yield self.wait_history(alice, group, 2)
        self.assertEqual(rows[-1], (self.global_id(bob), "again"))
        head = (yield self.ok(alice, "group_info", group_key_id=group))["queue"]["head"]
        yield self.until(lambda: self.member(alice, group).last_sequence == head, "alice to take the whole log")

    @inlineCallbacks
    def test_a_publish_rate_set_now_applies_at_once(self):
        alice = yield self.member_node("alice")
        info = yield self.ok(alice, "group_create", label="solo", key_size=2048)
        group = info["group_key_id"]
        yield self.ok(alice, "config_set", key="services/private-groups/broker-publish-burst", value="1")
        yield self.ok(alice, "config_set", key="services/private-groups/broker-publish-rate", value="0.001")
        yield self.ok(alice, "message_send_group", group_key_id=group, data="one")
        text = yield self.error(alice, 429, "message_send_group", group_key_id=group, data="two")
        self.assertIn("faster than", text)
        self.assertEqual(self.groups_of(alice).status()["broker"]["rate_limited"], 1)

    @inlineCallbacks
    def test_leaving_and_erasing_a_group(self):
        alice, bob = yield defer.gatherResults([self.member_node(n) for n in ("alice", "bob")])
        group = yield self.new_group(alice, bob)
        left = yield self.ok(bob, "group_leave", group_key_id=group)
        self.assertEqual((left["left"], left["key_erased"]), (True, False))
        yield self.until(lambda: not [c for c in self.groups_of(alice).consumers()
                                      if c["consumer_id"] == self.global_id(bob)], "bob unsubscribed")
        self.assertEqual((yield self.ok(bob, "group_info", group_key_id=group))["state"], "LEFT")
        yield self.error(bob, 409, "message_send_group", group_key_id=group, data="hi")
        self.assertEqual(len(self.events(bob, "group-member-left")), 1)
        erased = yield self.ok(alice, "group_leave", group_key_id=group, erase_key=True)
        self.assertEqual((erased["key_erased"], erased["queue_deleted"]), (True, True))
        self.assertEqual((yield self.ok(alice, "queues_list")), [])
        yield self.error(alice, 404, "group_info", group_key_id=group)
        text = yield self.error(bob, 404, "group_join", group_key_id=group)  # bob still knows it; no log
        self.assertIn("hosts no log", text)
        self.assertEqual(self.member(bob, group).state, "REFUSED")
        yield self.error(bob, 404, "message_send_group", group_key_id=group, data="hi")

    @inlineCallbacks
    def test_an_admin_invites_and_a_removed_member_cannot_read_what_comes_after(self):
        alice, bob, carol, dave = yield defer.gatherResults([self.member_node(n)
                                                             for n in ("alice", "bob", "carol", "dave")])
        group = yield self.new_group(alice, bob)
        yield self.ok(alice, "message_send_group", group_key_id=group, data="before")
        # bob made an admin: he lets carol and dave in
        made = yield self.ok(alice, "group_share", group_key_id=group, trusted_user_id=self.global_id(bob), admin=True)
        self.assertTrue(made["admin"])
        yield self.until(lambda: self.groups_of(bob).keyring.rosters[group].is_admin(self.global_id(bob)),
                         "bob to see he is an admin")
        for node in (carol, dave):
            yield self.ok(bob, "group_share", group_key_id=group, trusted_user_id=self.global_id(node))
            yield self.ok(node, "group_join", group_key_id=group)
            yield self.connected(node, group)
        self.assertEqual((yield self.wait_history(carol, group, 1)), [(self.global_id(alice), "before")])
        # an admin cannot remove another admin; the creator can't be removed
        text = yield self.error(bob, 403, "group_member_remove", group_key_id=group, member_id=self.global_id(alice))
        self.assertIn("cannot be removed", text)

        # bob removes carol: a new key for alice, bob and dave
        removed = yield self.ok(bob, "group_member_remove", group_key_id=group, member_id=self.global_id(carol))
        self.assertEqual((removed["removed"], removed["generation"]), (True, 2))
        sent = yield self.ok(dave, "message_send_group", group_key_id=group, data="after")
        for node in (alice, bob, dave):
            rows = yield self.wait_history(node, group, 2)
            self.assertEqual(rows[-1], (self.global_id(dave), "after"))
        yield self.until(lambda: self.member(carol, group).state == "REFUSED", "carol refused")
        self.assertEqual(len((yield self.group_history(carol, group))), 1)
        info = yield self.ok(alice, "group_info", group_key_id=group)
        self.assertEqual((sorted(info["members"]), info["generation"]),
                         (sorted(self.global_id(n) for n in (alice, bob, dave)), 2))
        # even with the entry in hand (a broker that leaked it), carol's keys do not open it
        [(seq, blob)] = [(s, b) for s, b in (yield self.groups_of(alice).broker.fetch(
            group, self.global_id(alice), sent["sequence"] - 1, 1))["entries"]]
        self.assertEqual(seq, sent["sequence"])
        yield self.assertFailure(defer.Deferred.fromCoroutine(self.groups_of(carol).keyring.open(group, blob)),
                                 MessageRejected)
        self.assertNotIn(2, (yield self.groups_of(carol).keyring.secrets(group)))


class ReplicatedGroupsTests(GroupHelpers, AccessNetworkCase):
    """Groups hosted by three other nodes: the creator goes away, then one broker dies mid-conversation."""

    timeout = 120
    node_services = [*NODE_SERVICES, PrivateMessagesService, GroupsService]
    # b1..b3 stand in for alice's suppliers: they keep logs for anyone
    FAST = {"services/private-groups/request-timeout": 2.0, "services/private-groups/broker-customers-only": False}

    @inlineCallbacks
    def test_the_group_goes_on_without_its_creator_and_through_a_broker_dying(self):
        nodes = yield defer.gatherResults([self.member_node(n, self.FAST) for n in
                                           ("alice", "bob", "carol", "dave", "b1", "b2", "b3")])
        alice, bob, carol, dave, b1, b2, b3 = nodes
        self.use_brokers(alice, b1, b2, b3)
        group = yield self.new_group(alice, bob, carol, dave)
        info = yield self.ok(alice, "group_info", group_key_id=group)
        self.assertEqual(info["brokers"], [self.global_id(b) for b in (b1, b2, b3)])
        self.assertEqual([len(self.groups_of(b).broker.replicas) for b in (b1, b2, b3)], [1, 1, 1])

        yield alice.stopService()  # the creator closes her laptop
        for n in range(3):
            yield self.ok(bob, "message_send_group", group_key_id=group, data=f"bob-{n}")
        for node in (carol, dave):
            self.assertEqual([text for _, text in (yield self.wait_history(node, group, 3))],
                             ["bob-0", "bob-1", "bob-2"])

        # the primary dies in the middle of the conversation
        yield b1.stopService()
        sends = [self.ok(node, "message_send_group", group_key_id=group, data=f"{name}-after")
                 for node, name in ((bob, "bob"), (carol, "carol"), (dave, "dave"))]
        yield defer.gatherResults(sends)
        yield self.ok(bob, "message_send_group", group_key_id=group, data="bob-last")
        orders = yield defer.gatherResults([self.wait_history(node, group, 7, seconds=30) for node in (bob, carol, dave)])
        self.assertEqual(orders[0], orders[1])
        self.assertEqual(orders[0], orders[2])
        texts = [text for _, text in orders[0]]
        self.assertEqual(len(texts), len(set(texts)))  # nothing twice
        self.assertEqual(sorted(texts), sorted(["bob-0", "bob-1", "bob-2", "bob-after", "carol-after", "dave-after",
                                                "bob-last"]))
        leader = next(b for b in (b2, b3) if self.groups_of(b).broker.replicas[group].role == "primary")
        self.assertEqual(self.member(carol, group).broker, self.global_id(leader))
        counters = self.groups_of(leader).status()["broker"]
        self.assertEqual(counters["takeovers"], 1)
