"""In-process network with two identity servers: an identity moves off a dead primary; peers follow.

Real services (identity servers, identity, gateway, network, identity
propagate) and real HTTP/TCP on 127.0.0.1 with free ports. Everything goes
through the API dispatcher, the way a client calls it. Stopping the first
identity server's node is its death.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from bitnode.chat.messages_service import PrivateMessagesService
from bitnode.p2p.id_rotator_service import IdentityPropagateService
from bitnode.p2p.network_service import NetworkService
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_service import IdentityService
from tests.interface.support import DispatcherCalls, start_id_server, start_node, wait_until

NODE_SERVICES = [IdentityService, GatewayService, NetworkService, IdentityPropagateService]


class MovedIdentityTests(DispatcherCalls, unittest.TestCase):
    timeout = 90

    @inlineCallbacks
    def setUp(self):
        self.server1, settings = yield start_id_server(self)
        self.server2, settings2 = yield start_id_server(self)
        self.settings = dict(settings)
        self.settings["personal/identity-servers"] = (settings["personal/identity-servers"]
                                                      + settings2["personal/identity-servers"])
        self.settings["services/identity/fetch-retries"] = 0
        self.settings["services/identity/fetch-timeout"] = 3.0

    @inlineCallbacks
    def joined_node(self, name, service_classes=NODE_SERVICES, **overrides):
        node = yield start_node(self, service_classes=service_classes, overrides=dict(self.settings, **overrides))
        yield self.ok(node, "identity_create", username=name)
        yield wait_until(lambda: node.service_driver.find(NetworkService) is not None, timeout=20)
        yield self.ok(node, "network_connected", wait_timeout=15)
        yield deferLater(reactor, 0, lambda: None)
        return node

    def kill_first_server(self):
        return self.server1.stopService()

    @inlineCallbacks
    def test_a_moved_node_is_pinged_under_its_old_and_new_names_by_old_and_new_peers(self):
        alice = yield self.joined_node("alice")
        bob = yield self.joined_node("bob")
        old_alice = (yield self.ok(alice, "identity_get"))["global_id"]
        self.assertEqual(len((yield self.ok(alice, "identity_get"))["sources"]), 2)
        yield self.ok(bob, "user_ping", user_id=old_alice)  # bob knows alice by her first name
        yield self.kill_first_server()
        moved = yield self.ok(alice, "identity_rotate")
        new_alice = moved["global_id"]
        self.assertNotEqual(new_alice, old_alice)
        self.assertEqual(moved["sources"], [self.idurl(2, "alice"), self.idurl(1, "alice")])
        self.assertEqual(moved["rotation"]["moved"], True)
        self.assertEqual(moved["rotation"]["old_global_id"], old_alice)
        # bob reaches her under both names, and learns she moved
        yield self.ok(bob, "user_ping", user_id=old_alice)
        yield self.ok(bob, "user_ping", user_id=new_alice)
        identity_service = bob.service_driver.find(IdentityService)
        yield wait_until(lambda: identity_service.same_user(old_alice, new_alice), timeout=10)
        # carol never heard of alice and her first identity server is dead: nothing can vouch that alice's
        # old name is that key (the second server's "alice" moved there, but a thief could have registered
        # it), so carol refuses the old name; she finds alice by her new one
        carol = yield self.joined_node("carol", **{"personal/identity-servers": self.settings[
            "personal/identity-servers"][1:] + self.settings["personal/identity-servers"][:1]})
        why = yield self.error(carol, 503, "user_ping", user_id=old_alice)
        self.assertIn("alice.xml", why)
        carol_ids = carol.service_driver.find(IdentityService)
        self.assertGreaterEqual(carol_ids.status()["sources"]["unconfirmed_moves"], 1)
        yield self.ok(carol, "user_ping", user_id=new_alice)
        self.assertFalse(carol_ids.same_user(old_alice, new_alice))
        # and alice pings everyone under her new name
        for peer in (bob, carol):
            peer_id = (yield self.ok(peer, "identity_get"))["global_id"]
            yield self.ok(alice, "user_ping", user_id=peer_id)

    @inlineCallbacks
    def test_a_message_to_the_old_name_of_a_moved_user_reaches_her(self):
        services = {"service_classes": NODE_SERVICES + [PrivateMessagesService]}
        alice = yield self.joined_node("alice", **services)
        bob = yield self.joined_node("bob", **services)
        old_alice = (yield self.ok(alice, "identity_get"))["global_id"]
        yield self.ok(bob, "user_ping", user_id=old_alice)  # bob knows alice by her first name
        yield self.kill_first_server()
        yield self.ok(alice, "identity_rotate")
        # bob writes to the name he knows; alice takes it (it is one of her names) and acks
        sent = yield self.ok(bob, "message_send", recipient_id=old_alice, data={"message": "still you?"},
                             ping_timeout=5, message_ack_timeout=5)
        self.assertEqual(sent["state"], "acked", sent)
        history = yield self.ok(alice, "message_history")
        self.assertEqual([m["data"] for m in history["messages"]], [{"message": "still you?"}])
        self.assertEqual(alice.service_driver.info("service_private_messages")["status"]["rejected"], 0)

    @inlineCallbacks
    def test_the_rotator_moves_a_node_off_a_dead_primary_by_itself(self):
        fast = {"services/identity-propagate/check-interval": 1.0,
                "services/identity-propagate/recheck-interval": 1.0,
                "services/identity-propagate/dead-after": 2.0}
        alice = yield self.joined_node("alice", **fast)
        old_alice = (yield self.ok(alice, "identity_get"))["global_id"]
        yield self.kill_first_server()
        yield wait_until(lambda: alice.service_driver.find(IdentityService).my_global_id() != old_alice,
                         timeout=30)
        info = yield self.ok(alice, "service_info", service_name="service_identity_propagate")
        self.assertEqual(info["status"]["moves"], 1)
        me = yield self.ok(alice, "identity_get")
        self.assertEqual(me["sources"], [self.idurl(2, "alice"), self.idurl(1, "alice")])
        # once: the new primary is well, nothing moves again over the next checks
        rotator = alice.service_driver.find(IdentityPropagateService).rotator
        probes = rotator.probes
        yield wait_until(lambda: rotator.probes >= probes + 2, timeout=20)
        info = yield self.ok(alice, "service_info", service_name="service_identity_propagate")
        self.assertEqual((info["status"]["moves"], info["status"]["primary_dead_since"]), (1, None))

    def idurl(self, server: int, name: str) -> str:
        return f"http://{self.settings['personal/identity-servers'][server - 1]}/{name}.xml"
