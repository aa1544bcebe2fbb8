"""System test: a message group between real node processes on a localnet, through the public HTTP API.

One network (identity server and five nodes, 2048-bit keys) and one test
walking through the scenario: Alice creates a group and shares it with Bob
and Carol, the three write at once and all see one order, Dave is invited
after some messages and sees the history, Eve (no key) is refused; Alice's
node (the group's broker) goes away: Bob gets a clear 503, and once Alice is
back Bob reconnects and everyone gets the next message in its place.
"""

from __future__ import annotations

import threading

from tests.system.support import LocalnetTestCase, pid_alive, wait_for


class LocalnetGroupsTests(LocalnetTestCase):
    """group_create / group_share / group_join / message_send_group / queues across processes."""

    def test_a_group_across_processes(self) -> None:
        self.start_network(suppliers=5, customers=0, prefix="bitnode-groups-")
        alice, bob, carol, dave, eve = (f"supplier-{n}" for n in range(1, 6))
        ids = {name: self.nodes[name]["global_id"] for name in (alice, bob, carol, dave, eve)}

        group = self.api(alice, "group_create", label="friends", key_size=2048)["group_key_id"]
        for name in (bob, carol):
            self.api(alice, "group_share", group_key_id=group, trusted_user_id=ids[name])
            self.api(name, "group_join", group_key_id=group)
        for name in (alice, bob, carol):
            self.wait_state(name, group, "CONNECTED")

        # the three write at the same time: nine messages, one order
        def write(name: str, n: int) -> None:
            self.api(name, "message_send_group", group_key_id=group, data={"message": f"{name}-{n}"})

        writers = [threading.Thread(target=write, args=(name, n)) for n in range(3) for name in (alice, bob, carol)]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join(60)
        orders = [self.wait_messages(name, group, 9) for name in (alice, bob, carol)]
        self.assertEqual(orders[0], orders[1])
        self.assertEqual(orders[0], orders[2])
        self.assertEqual(sorted(text for _, text in orders[0]),
                         sorted(f"{name}-{n}" for n in range(3) for name in (alice, bob, carol)))

        # a late joiner sees the history, then takes part
        self.api(alice, "group_share", group_key_id=group, trusted_user_id=ids[dave])
        self.api(dave, "group_join", group_key_id=group)
        self.assertEqual(self.wait_messages(dave, group, 9), orders[0])
        self.wait_state(dave, group, "CONNECTED")
        self.api(dave, "message_send_group", group_key_id=group, data="dave here")
        for name in (alice, bob, carol, dave):
            self.assertEqual(self.wait_messages(name, group, 10), orders[0] + [(ids[dave], "dave here")])

        # someone without the key is refused
        self.assertIn("does not hold the key", self.api_error(404, eve, "group_join", group_key_id=group))
        self.api_error(404, eve, "message_send_group", group_key_id=group, data="let me in")
        self.assertEqual(self.api(eve, "groups_list"), [])

        # the queue as its host lists it
        (queue,) = self.api(alice, "queues_list")
        self.assertEqual((queue["queue_id"], queue["head"], queue["consumers"], queue["producers"]), (group, 10, 4, 4))
        self.assertEqual({c["consumer_id"] for c in self.api(alice, "queue_consumers_list")},
                         {ids[n] for n in (alice, bob, carol, dave)})
        self.assertEqual(sum(p["published"] for p in self.api(alice, "queue_producers_list")), 10)
        conversations = self.api(bob, "message_conversations_list", message_types="group_message")
        self.assertEqual([c["conversation_id"] for c in conversations["conversations"]], [group])

        # the broker goes away: a clear error, never a silent OK
        self.net.stop_node(alice, kill=False)
        wait_for(lambda: not pid_alive(self.nodes[alice]["pid"]), "alice to exit")
        self.api(bob, "config_set", key="services/private-groups/request-timeout", value="3")
        text = self.api_error(503, bob, "message_send_group", group_key_id=group, data="anyone?")
        self.assertIn("unreachable, message not sent", text)
        self.assertEqual(self.api(bob, "group_info", group_key_id=group)["state"], "DISCONNECTED")

        # alice is back: her queue and her membership with her; bob reconnects and writes
        self.net.start_node(alice)
        self.wait_state(alice, group, "CONNECTED")
        self.api(bob, "group_join", group_key_id=group)
        self.wait_state(bob, group, "CONNECTED")
        self.api(bob, "message_send_group", group_key_id=group, data="back")
        for name in (alice, bob, carol, dave):
            self.assertEqual(self.wait_messages(name, group, 11)[-1], (ids[bob], "back"))

    def wait_state(self, name: str, group: str, state: str) -> None:
        wait_for(lambda: self.api(name, "group_info", group_key_id=group)["state"] == state,
                 f"{name} to be {state} in the group", timeout=30)

    def wait_messages(self, name: str, group: str, count: int) -> list[tuple[str, str]]:
        def messages():
            rows = self.api(name, "message_history", recipient_id=group, message_type="group_message",
                            limit=1000)["messages"]
            return [(row["sender"], row["data"]["message"]) for row in reversed(rows)] if len(rows) >= count else None

        return wait_for(messages, f"{name} to have {count} group messages", timeout=30)
