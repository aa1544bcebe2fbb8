"""In-process network: group memberships in the catalog backup (the ``groups`` part, bitnode.access.group_backup).

Alice creates a group and shares it with Bob; they talk; Bob's node is lost
and he recovers his identity on a new machine from his master key alone: his
membership comes back from his suppliers, he rejoins, gets the history and
the new messages. And a part restored while service_private_groups is off
waits for it, as service_shares' does.
"""

from __future__ import annotations

import os

from twisted.internet.defer import inlineCallbacks

from bitnode.access import group_backup
from bitnode.access.groups_service import GroupsService
from bitnode.chat.messages_service import PrivateMessagesService
from bitnode.customer.customer_service import CustomerService
from bitnode.dht.dht_service import DHTService
from bitnode.p2p.network_service import NetworkService
from bitnode.storage.backups_service import BackupsService
from tests.access.support import NODE_SERVICES, AccessNetworkCase
from tests.access.test_groups_service import GroupHelpers
from tests.customer.test_customer_service import FAST_MARKET
from tests.interface.support import start_node
from tests.supplier.test_supplier_service import SUPPLIER, Net, until

GROUPS, STORAGE = "service_private_groups", "service_backups"
USER_SETTINGS = {"services/backups/catalog-backup-delay": 3600.0}
class GroupRecoveryTests(GroupHelpers, AccessNetworkCase):
    """Bob hires suppliers (his catalog backup goes there); Alice hosts the group."""

    timeout = 300  # a market, two recoveries and 2048-bit keys: minutes on a loaded 2-core machine
    node_services = [*NODE_SERVICES, DHTService, CustomerService, BackupsService, PrivateMessagesService,
                     GroupsService]

    @inlineCallbacks
    def setUp(self):
        self.net = Net()
        # the suppliers are brokers too: a creator's groups are kept by its suppliers
        self.suppliers = yield self.net.start_market(self, 2, [*SUPPLIER, NetworkService, PrivateMessagesService, GroupsService])
        self.settings = dict(self.net.base, **USER_SETTINGS)

    @inlineCallbacks
    def hired(self, node):
        customer, storage = node.service_driver.get("service_customer"), node.service_driver.get(STORAGE)

        def done():
            roster = customer.roster
            return (roster is not None and len([s for s in roster.positions if s]) == 2
                    and customer.dht_revision == roster.revision and storage.transfers is not None)

        yield until(done, "the suppliers to be hired and published", seconds=30)

    @inlineCallbacks
    def test_a_member_recovered_from_his_master_key_rejoins_and_gets_the_history_and_new_messages(self):
        alice = yield self.member_node("alice")
        bob = yield self.member_node("bob", FAST_MARKET)
        yield self.hired(bob)
        group = yield self.new_group(alice, bob)
        for node, text in ((alice, "a1"), (bob, "b1"), (alice, "a2")):
            yield self.ok(node, "message_send_group", group_key_id=group, data={"message": text})
        before = yield self.wait_history(bob, group, 3)
        storage = bob.service_driver.get(STORAGE)
        outcome = yield storage.backup_catalog()
        self.assertEqual(outcome["keys"], 1)  # the group key
        key_file = os.path.abspath(self.mktemp())
        yield self.ok(bob, "identity_backup", destination_filepath=key_file)
        yield bob.stopService()

        # a new machine: nothing but the file with the master key
        bob = yield start_node(self, service_classes=self.node_services, overrides=dict(self.settings, **FAST_MARKET))
        yield self.ok(bob, "identity_recover", private_key_source=key_file)
        storage = bob.service_driver.get(STORAGE)
        def groups_part():
            return storage.last_restore.get("secrets", {}).get("parts", {}).get(group_backup.PART)

        yield until(groups_part, "the catalog and its groups part to be restored", seconds=30)
        self.assertIn(groups_part(), ("restored", "pending"))
        yield self.until(lambda: bob.service_driver.is_on(GROUPS), "bob's groups service", seconds=30)
        yield self.connected(bob, group, seconds=60)
        self.assertEqual((yield self.wait_history(bob, group, 3)), before)
        head = (yield self.ok(alice, "group_info", group_key_id=group))["last_sequence"]
        yield self.until(lambda: self.member(bob, group).last_sequence == head, "bob to catch up")
        info = yield self.ok(bob, "group_info", group_key_id=group)
        self.assertEqual((info["active"], info["mine"], info["last_sequence"]), (True, False, head))

        yield self.ok(alice, "message_send_group", group_key_id=group, data={"message": "a3"})
        sent = yield self.ok(bob, "message_send_group", group_key_id=group, data={"message": "b2"})
        self.assertEqual(sent["sequence"], head + 2)
        after = yield self.wait_history(bob, group, 5)
        self.assertEqual(after[3:], [(self.global_id(alice), "a3"), (self.global_id(bob), "b2")])
        self.assertEqual((yield self.wait_history(alice, group, 5)), after)

    @inlineCallbacks
    def test_a_creator_recovered_on_a_new_machine_gets_the_whole_history_from_her_suppliers(self):
        alice = yield self.member_node("alice", FAST_MARKET)
        bob = yield self.member_node("bob")
        yield self.hired(alice)
        group = yield self.new_group(alice, bob)
        for node, text in ((alice, "a1"), (bob, "b1")):
            yield self.ok(node, "message_send_group", group_key_id=group, data={"message": text})
        yield self.wait_history(alice, group, 2)
        yield alice.service_driver.get(STORAGE).backup_catalog()
        key_file = os.path.abspath(self.mktemp())
        yield self.ok(alice, "identity_backup", destination_filepath=key_file)
        yield alice.stopService()

        alice = yield start_node(self, service_classes=self.node_services,
                                 overrides=dict(self.settings, **FAST_MARKET))
        yield self.ok(alice, "identity_recover", private_key_source=key_file)
        storage = alice.service_driver.get(STORAGE)
        yield until(lambda: storage.last_restore.get("serial"), "the catalog to be restored", seconds=30)
        yield self.until(lambda: alice.service_driver.is_on(GROUPS), "alice's groups service", seconds=30)
        yield self.connected(alice, group, seconds=60)
        info = yield self.ok(alice, "group_info", group_key_id=group)
        self.assertEqual(sorted(info["brokers"][:2]), sorted(self.global_id(s) for s in self.suppliers))
        # her suppliers kept the log while her machine was gone: the whole history comes back
        self.assertEqual([text for _, text in (yield self.wait_history(alice, group, 2))], ["a1", "b1"])
        self.assertTrue(info["mine"])
        self.assertIn(self.global_id(bob), info["members"])

        sent = yield self.ok(bob, "message_send_group", group_key_id=group, data={"message": "b2"})
        yield self.ok(alice, "message_send_group", group_key_id=group, data={"message": "a2"})
        bobs = yield self.wait_history(bob, group, 4)
        self.assertEqual([text for _, text in bobs], ["a1", "b1", "b2", "a2"])
        self.assertEqual((yield self.wait_history(alice, group, 4)), bobs)
        self.assertEqual(sent["sequence"], bobs and (yield self.ok(alice, "group_info", group_key_id=group))[
            "last_sequence"] - 1)


class PendingPartTests(GroupHelpers, AccessNetworkCase):
    """No market: service_backups runs without suppliers, which is enough to hold a restored part."""

    node_services = [*NODE_SERVICES, BackupsService, PrivateMessagesService, GroupsService]

    @inlineCallbacks
    def test_a_part_restored_while_the_groups_service_is_off_waits_for_it(self):
        alice = yield self.member_node("alice")
        bob = yield self.member_node("bob")
        group = yield self.ok(alice, "group_create", label="later", key_size=2048)
        group = group["group_key_id"]
        yield self.ok(alice, "group_share", group_key_id=group, trusted_user_id=self.global_id(bob))
        self.assertIsNone(self.member(bob, group))  # the key, not (yet) the membership
        storage = bob.service_driver.get(STORAGE)
        config = self.groups_of(alice).configs[group]
        part = {"version": 2, "groups": [{"group_key_id": group, "config": config.to_dict(), "active": True,
                                          "last_sequence": 0, "secrets": {}, "recent": []}]}

        yield bob.service_driver.stop(GROUPS)
        self.assertEqual(storage.parts.restore({group_backup.PART: part}), {group_backup.PART: "pending"})
        self.assertEqual(storage.parts.collect()[group_backup.PART], part)  # kept in the next backups as it is
        needed = []
        storage.backup_needed = lambda: needed.append(1)  # a spy: a new membership asks for a backup
        yield bob.service_driver.start(GROUPS)
        self.assertNotIn(group_backup.PART, storage.parts.pending)
        yield self.connected(bob, group)
        yield self.ok(alice, "message_send_group", group_key_id=group, data={"message": "hello"})
        self.assertEqual((yield self.wait_history(bob, group, 1)), [(self.global_id(alice), "hello")])
        self.assertTrue(needed)

        # now registered: the part is collected from the store, and a bad one fails without harm
        collected = storage.parts.collect()[group_backup.PART]
        self.assertEqual([(g["group_key_id"], g["active"]) for g in collected["groups"]], [(group, True)])
        outcome = storage.parts.restore({group_backup.PART: dict(part, version=99)})
        self.assertIn("version 99 is not known", outcome[group_backup.PART])
