"""System test (issue 17 a): a group that keeps working while its creator is away and a broker dies.

One localnet of real processes (identity server, four suppliers, one customer,
2048-bit keys), driven through the public HTTP API as a user would:

1. Alice (customer-1) creates a group; its log is kept by three of her
   suppliers (the brokers). She invites Bob, Carol and Dave, who join, and
   writes a first message; her catalog backup (which holds the group) goes to
   her suppliers.
2. Alice's node is stopped: Bob writes, Carol and Dave receive, in the same order.
3. The broker that leads the group is killed while Bob and Carol write at the
   same time: another broker takes over; every message is there once, in one
   order, for every member.
4. Alice recovers her identity on a new machine from her key file: the group
   comes back from her catalog backup and she reads the whole history, in the
   same order, from the brokers that are left; she writes again.
"""

from __future__ import annotations

import os
import threading
import time

from tests.system.support import LocalnetTestCase, pid_alive, wait_for

ALICE, NEW_MACHINE = "customer-1", "alice-new"
#: Members give up on a silent broker after this many seconds (the default, 20 s, is for the real world).
FAST = {"services/private-groups/request-timeout": "3", "services/private-groups/push-timeout": "3"}


class LocalnetGroupsTests(LocalnetTestCase):
    """group_create / group_share / group_join / message_send_group across processes, through failures."""

    def test_a_group_goes_on_without_its_creator_and_through_a_broker_dying(self) -> None:
        started = time.monotonic()
        self.start_network(suppliers=4, customers=1, prefix="bitnode-groups-")
        ids = {name: node["global_id"] for name, node in self.nodes.items() if node.get("global_id")}
        for name in ids:
            for key, value in FAST.items():
                self.api(name, "config_set", key=key, value=value)

        # 1. alice's group, kept by three of her suppliers
        group = self.api(ALICE, "group_create", label="friends", key_size=2048)["group_key_id"]
        brokers = self.api(ALICE, "group_info", group_key_id=group)["brokers"]
        self.assertEqual(len(brokers), 3, brokers)
        by_id = {global_id: name for name, global_id in ids.items()}
        self.assertNotIn(ALICE, [by_id[b] for b in brokers])
        primary = by_id[brokers[0]]
        bob = next(name for name in ids if name != ALICE and ids[name] not in brokers)
        carol, dave = (by_id[b] for b in brokers[1:])
        for name in (bob, carol, dave):
            self.api(ALICE, "group_share", group_key_id=group, trusted_user_id=ids[name])
            self.api(name, "group_join", group_key_id=group)
        for name in (ALICE, bob, carol, dave):
            self.wait_state(name, group, "CONNECTED")
        self.api(ALICE, "message_send_group", group_key_id=group, data={"message": "alice-0"})
        self.wait_backed_up(ALICE)
        key_file = os.path.join(self.dir, "alice.key")
        self.api(ALICE, "identity_backup", destination_filepath=key_file)

        # 2. alice stopped: bob writes, carol and dave read, in one order
        self.net.stop_node(ALICE, kill=False)
        wait_for(lambda: not pid_alive(self.nodes[ALICE]["pid"]), "alice to exit")
        for n in range(3):
            self.api(bob, "message_send_group", group_key_id=group, data={"message": f"bob-{n}"})
        first = [(ids[ALICE], "alice-0")] + [(ids[bob], f"bob-{n}") for n in range(3)]
        for name in (carol, dave, bob):
            self.assertEqual(self.wait_messages(name, group, 4), first)

        # 3. the leading broker is killed while bob and carol write
        def write(name: str, n: int, errors: list) -> None:
            code, envelope = self.call(name, "message_send_group", timeout=90, group_key_id=group,
                                       data={"message": f"{name}-{n}"})
            if code != 200:
                errors.append((name, n, code, envelope))

        errors: list = []
        writers = [threading.Thread(target=write, args=(name, n, errors)) for n in range(3, 6) for name in (bob, carol)]
        for index, thread in enumerate(writers):
            thread.start()
            if index == 1:
                self.net.stop_node(primary, kill=True)
        for thread in writers:
            thread.join(120)
        self.assertEqual(errors, [])
        sent = sorted(f"{name}-{n}" for n in range(3, 6) for name in (bob, carol))
        orders = [self.wait_messages(name, group, 10) for name in (bob, carol, dave)]
        self.assertEqual(orders[0][:4], first)
        self.assertEqual(sorted(text for _, text in orders[0][4:]), sent)  # each once
        self.assertEqual(orders[1], orders[0])
        self.assertEqual(orders[2], orders[0])
        info = self.api(bob, "group_info", group_key_id=group)
        self.assertNotEqual(info["broker"], brokers[0])

        # 4. alice on a new machine, from her key file alone: the group and its whole history
        self.nodes[NEW_MACHINE] = self.net.add_node(NEW_MACHINE, key_size=2048)
        self.assertEqual(self.api(NEW_MACHINE, "identity_recover", private_key_source=key_file)["global_id"],
                         ids[ALICE])
        for key, value in FAST.items():
            wait_for(lambda key=key, value=value: self.call(NEW_MACHINE, "config_set", key=key, value=value)[0] == 200,
                     "the recovered node to take settings")
        self.wait_state(NEW_MACHINE, group, "CONNECTED", timeout=60)
        self.assertEqual(self.wait_messages(NEW_MACHINE, group, 10), orders[0])
        self.api(NEW_MACHINE, "message_send_group", group_key_id=group, data={"message": "alice-back"})
        for name in (bob, carol, dave):
            self.assertEqual(self.wait_messages(name, group, 11)[-1], (ids[ALICE], "alice-back"))
        print(f"\ngroups system test: {time.monotonic() - started:.1f}s")

    def wait_state(self, name: str, group: str, state: str, timeout: float = 30) -> None:
        def reached():
            code, envelope = self.call(name, "group_info", group_key_id=group)
            return code == 200 and envelope["result"]["state"] == state

        wait_for(reached, f"{name} to be {state} in the group", timeout=timeout)

    def wait_backed_up(self, name: str) -> None:
        """The node's catalog backup (with its groups) is on its suppliers, nothing waiting to go."""
        def done():
            status = self.api(name, "service_info", service_name="service_backups")["status"]
            return not status["catalog_backup_pending"] and len(status["catalog_backup"]) > 1 \
                and not status["catalog_backup"]["error"]

        wait_for(done, f"{name}'s catalog backup", timeout=30)

    def wait_messages(self, name: str, group: str, count: int) -> list[tuple[str, str]]:
        """The group's messages in ``name``'s history, oldest first, once there are ``count`` (never more)."""
        rows: list = []

        def messages():
            code, envelope = self.call(name, "message_history", recipient_id=group, message_type="group_message",
                                       limit=1000)
            if code != 200:
                return None
            rows[:] = [(row["sender"], row["data"]["message"]) for row in reversed(envelope["result"]["messages"])]
            return list(rows) if len(rows) >= count else None

        found = wait_for(messages, f"{name} to have {count} group messages (has {len(rows)})", timeout=60)
        self.assertEqual(len(found), count, found)
        return found
