"""In-process network: nicknames through the API on real Nodes (identity server, DHT over loopback UDP)."""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from bitnode.app import api_server
from bitnode.chat.nickname_service import NicknameService
from bitnode.dht.dht_service import DHTService
from bitnode.userid.id_service import IdentityService
from tests.chat.support import ChatNetworkCase
from tests.interface.support import start_node

SERVICES = [IdentityService, DHTService, NicknameService]


class NicknameNetworkTests(ChatNetworkCase):
    @inlineCallbacks
    def user(self, name, nickname):
        node = yield start_node(self, service_classes=SERVICES,
                                overrides=dict(self.settings, **{"services/private-messages/nickname": nickname}))
        yield self.ok(node, "identity_create", username=name)
        holder = node.service_driver.get("service_nicknames").holder
        yield self.until(lambda: holder.state == "READY", f"{name} to hold a nickname")
        return node

    @inlineCallbacks
    def test_second_claimant_gets_a_numbered_name_and_search_finds_both(self):
        alice = yield self.user("alice", "carol")
        bob = yield self.user("bob", "carol")
        self.assertEqual(alice.service_driver.get("service_nicknames").status()["nickname"], "carol")
        self.assertEqual(bob.service_driver.get("service_nicknames").status()["nickname"], "carol-1")
        automats = yield self.ok(bob, "automats_list")
        self.assertIn(("nickname_holder", "READY"), [(m["name"], m["state"]) for m in automats])

        found = yield self.ok(bob, "user_search", nickname="carol")
        self.assertEqual(found["global_id"], alice.service_driver.get("service_identity").my_global_id())
        everyone = yield self.ok(alice, "user_observe", nickname="carol", attempts=3)
        self.assertEqual([h["nickname"] for h in everyone], ["carol", "carol-1"])
        self.assertEqual(everyone[1]["idurl"], bob.service_driver.get("service_identity").my_idurl())

        missing = yield api_server(alice).dispatcher.execute_by_name("user_search", {"nickname": "nobody"})
        self.assertEqual(missing.code, 404)
        bad = yield api_server(alice).dispatcher.execute_by_name("user_search", {"nickname": "no body"})
        self.assertEqual(bad.code, 400)

    @inlineCallbacks
    def test_set_my_nickname_moves_to_a_new_name(self):
        alice = yield self.user("alice", "")
        service = alice.service_driver.get("service_nicknames")
        self.assertEqual(service.status()["nickname"], "alice")  # default: my identity's name
        answer = yield api_server(alice).dispatcher.execute_by_name("set_my_nickname", {"nickname": "queen"})
        self.assertEqual(answer.code, 200, answer.envelope)
        yield self.until(lambda: service.status()["nickname"] == "queen", "the new nickname")
        found = yield self.ok(alice, "user_search", nickname="queen")
        self.assertEqual(found["idurl"], alice.service_driver.get("service_identity").my_idurl())
        events = [e.event_id for e in alice.events.since(0)[0]]
        self.assertEqual(events.count("nickname-held"), 2)
