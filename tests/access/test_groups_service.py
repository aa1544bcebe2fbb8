"""In-process network: groups between real Nodes (identity server, gateways over loopback, 2048-bit keys).

Everything a user does goes through the API dispatcher, the way a client calls it.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.defer import inlineCallbacks

from bitnode.access.group_links import RemoteBrokerLink
from bitnode.access.group_protocol import is_group_frame
from bitnode.access.groups_service import GroupsService
from bitnode.chat.message_crypto import GROUP_MESSAGE, MessageHeader, seal
from bitnode.chat.messages_service import PrivateMessagesService
from bitnode.errors import BadRequest, Forbidden
from bitnode.transport.commands import Command
from tests.access.support import NODE_SERVICES, AccessNetworkCase, pause
from tests.interface.support import connect_ws, wait_until

GROUPS = "service_private_groups"


class GroupsNetworkTests(AccessNetworkCase):
    node_services = [*NODE_SERVICES, PrivateMessagesService, GroupsService]

    # -- helpers --------------------------------------------------------------------------

    @inlineCallbacks
    def member_node(self, name, overrides=None):
        node = yield self.joined_node(name, overrides)
        yield self.until(lambda: node.service_driver.is_on(GROUPS), f"{name}'s {GROUPS}")
        return node

    @inlineCallbacks
    def until(self, check, what, seconds=10.0):
        yield wait_until(check, what, timeout=seconds)

    def member(self, node, group):
        return node.service_driver.get(GROUPS).members.get(group)

    @inlineCallbacks
    def connected(self, node, group):
        yield self.until(lambda: self.member(node, group) is not None and self.member(node, group).state == "CONNECTED",
                         f"{self.global_id(node)} connected to {group}")

    @inlineCallbacks
    def group_history(self, node, group):
        """(sender, data["message"]) of the group's messages in the node's history, oldest first."""
        found = yield self.ok(node, "message_history", recipient_id=group, message_type="group_message", limit=1000)
        return [(row["sender"], row["data"]["message"]) for row in reversed(found["messages"])]

    @inlineCallbacks
    def wait_history(self, node, group, count):
        for _ in range(500):
            rows = yield self.group_history(node, group)
            if len(rows) >= count:
                return rows
            yield pause(0.02)
        self.fail(f"{self.global_id(node)} has {len(rows)} of {count} messages of {group}")

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

    # -- tests ----------------------------------------------------------------------------

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
        self.assertEqual(sorted(row["sequence"] for row in sent), list(range(1, 10)))
        self.assertTrue(all(row["message_type"] == GROUP_MESSAGE and row["direction"] == "outgoing" for row in sent))

        histories = yield defer.gatherResults([self.wait_history(node, group, 9) for node in (alice, bob, carol)])
        self.assertEqual(histories[0], histories[1])
        self.assertEqual(histories[0], histories[2])
        by_sequence = sorted(sent, key=lambda row: row["sequence"])
        self.assertEqual(histories[0], [(row["sender"], row["data"]["message"]) for row in by_sequence])

        dave = yield self.member_node("dave")
        yield self.ok(alice, "group_share", group_key_id=group, trusted_user_id=self.global_id(dave))
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

        # the queue, as its host lists it
        [queue] = yield self.ok(alice, "queues_list")
        self.assertEqual((queue["queue_id"], queue["head"], queue["messages"], queue["consumers"], queue["producers"]),
                         (group, 10, 10, 4, 4))
        consumers = yield self.ok(alice, "queue_consumers_list")
        self.assertEqual(len(consumers), 4)
        producers = yield self.ok(alice, "queue_producers_list")
        self.assertEqual({p["producer_id"]: p["published"] for p in producers},
                         {self.global_id(alice): 3, self.global_id(bob): 3, self.global_id(carol): 3,
                          self.global_id(dave): 1})
        self.assertEqual((yield self.ok(bob, "queues_list")), [])

        # groups as each member lists them
        info = yield self.ok(alice, "group_info", group_key_id=group)
        self.assertEqual((info["mine"], info["state"], info["last_sequence"], info["label"]),
                         (True, "CONNECTED", 10, "friends"))
        self.assertEqual(len(info["members"]), 4)
        granted = yield self.ok(bob, "groups_list", include_mine=False)
        self.assertEqual([(g["group_key_id"], g["mine"], g["active"]) for g in granted], [(group, False, True)])
        self.assertEqual((yield self.ok(bob, "groups_list", include_granted=False)), [])

    @inlineCallbacks
    def test_someone_without_the_key_is_refused(self):
        alice, bob, eve = yield defer.gatherResults([self.member_node(n) for n in ("alice", "bob", "eve")])
        group = yield self.new_group(alice, bob)
        yield self.ok(bob, "message_send_group", group_key_id=group, data="for members only")

        text = yield self.error(eve, 404, "group_join", group_key_id=group)
        self.assertIn("does not hold the key", text)
        yield self.error(eve, 404, "message_send_group", group_key_id=group, data="hi")
        # eve talks to the broker directly, as a modified node would
        gateway = eve.service_driver.get("service_gateway").require_gateway()
        link = RemoteBrokerLink(gateway, group, self.global_id(alice), 10.0)
        for request in (lambda: link.subscribe(0), lambda: link.fetch(0, 10), lambda: link.publish(b"\x01junk")):
            failure = yield self.assertFailure(request(), Forbidden)
            self.assertIn("is not a member", str(failure))
        [queue] = yield self.ok(alice, "queues_list")
        self.assertEqual(queue["head"], 1)
        self.assertNotIn(self.global_id(eve), [c["consumer_id"] for c in (yield self.ok(alice, "queue_consumers_list"))])

        # a member cannot slip in a message signed as someone else
        bob_keys, alice_keys = self.keystore(bob), self.keystore(alice)
        forged = seal(MessageHeader(GROUP_MESSAGE, self.global_id(alice), group, "forged1", 1.0), {"message": "x"},
                      bob_keys.private_key(bob_keys.master_key_id), alice_keys.public_key(group))
        bob_link = RemoteBrokerLink(bob.service_driver.get("service_gateway").require_gateway(), group,
                                    self.global_id(alice), 10.0)
        failure = yield self.assertFailure(bob_link.publish(forged), BadRequest)
        self.assertIn("published by", str(failure))
        # and only the creator may hand the key on
        carol = yield self.member_node("carol")
        text = yield self.error(bob, 403, "group_share", group_key_id=group, trusted_user_id=self.global_id(carol))
        self.assertIn(group, text)

    @inlineCallbacks
    def test_an_unreachable_broker_is_an_error_and_the_member_reconnects(self):
        alice = yield self.member_node("alice")
        bob = yield self.member_node("bob", {"services/private-groups/request-timeout": 0.5})
        group = yield self.new_group(alice, bob)
        alice_groups = alice.service_driver.get(GROUPS)
        router = alice.service_driver.get("service_gateway").require_gateway().router
        frames = lambda packet: is_group_frame(packet.payload)  # noqa: E731
        alice_groups._route.remove()
        deaf = router.add(Command.MESSAGE, lambda packet, address: None, accepts=frames)  # the broker hears nothing

        text = yield self.error(bob, 503, "message_send_group", group_key_id=group, data="anyone?")
        self.assertIn("unreachable, message not sent", text)
        self.assertEqual(self.member(bob, group).state, "DISCONNECTED")
        text = yield self.error(bob, 503, "message_send_group", group_key_id=group, data="still?")
        self.assertIn("disconnected", text)
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

        # the broker's groups service stops: the same clear error; it starts again with its queue and membership
        yield self.ok(alice, "service_stop", service_name=GROUPS)
        text = yield self.error(bob, 503, "message_send_group", group_key_id=group, data="hello?")
        self.assertIn("does not serve groups now", text)
        yield self.ok(alice, "service_start", service_name=GROUPS)
        yield self.connected(alice, group)
        yield self.ok(bob, "group_join", group_key_id=group)
        yield self.ok(bob, "message_send_group", group_key_id=group, data="again")
        rows = yield self.wait_history(alice, group, 2)
        self.assertEqual(rows[-1], (self.global_id(bob), "again"))
        info = yield self.ok(alice, "group_info", group_key_id=group)
        self.assertEqual((info["queue"]["head"], info["last_sequence"]), (2, 2))

    @inlineCallbacks
    def test_leaving_and_erasing_a_group(self):
        alice, bob = yield defer.gatherResults([self.member_node(n) for n in ("alice", "bob")])
        group = yield self.new_group(alice, bob)
        left = yield self.ok(bob, "group_leave", group_key_id=group)
        self.assertEqual((left["left"], left["key_erased"]), (True, False))
        yield self.until(lambda: not [c for c in alice.service_driver.get(GROUPS).consumers()
                                      if c["consumer_id"] == self.global_id(bob)], "bob unsubscribed")
        self.assertEqual((yield self.ok(bob, "group_info", group_key_id=group))["state"], "LEFT")
        yield self.error(bob, 409, "message_send_group", group_key_id=group, data="hi")
        self.assertEqual(len(self.events(bob, "group-member-left")), 1)
        erased = yield self.ok(alice, "group_leave", group_key_id=group, erase_key=True)
        self.assertEqual((erased["key_erased"], erased["queue_deleted"]), (True, True))
        self.assertEqual((yield self.ok(alice, "queues_list")), [])
        yield self.error(alice, 404, "group_info", group_key_id=group)
        text = yield self.error(bob, 404, "group_join", group_key_id=group)  # bob still has the key; no group
        self.assertIn("hosts no queue", text)
        self.assertEqual(self.member(bob, group).state, "REFUSED")
        yield self.error(bob, 404, "message_send_group", group_key_id=group, data="hi")
