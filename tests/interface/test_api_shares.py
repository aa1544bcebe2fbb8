"""Tests for bitnode.interface.api_shares (and service_shares behind it) without suppliers or a DHT.

Two real nodes on loopback with an identity server (tests/access/support.py),
running service_backups and service_shares but no market: the argument
checks, the records and the history, and what a share does when there is no
supplier to publish to nor a DHT to find the owner's suppliers in. The whole
scenario with suppliers is in tests/access/test_shares_service.py.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from bitnode.access.shares_service import SharesService
from bitnode.storage.backups_service import BackupsService
from tests.access.support import NODE_SERVICES, AccessNetworkCase, pause
from tests.interface.support import start_node


class ShareApiTests(AccessNetworkCase):
    @inlineCallbacks
    def node(self, name):
        node = yield start_node(self, service_classes=[*NODE_SERVICES, BackupsService, SharesService],
                                overrides=dict(self.settings, **{"services/shares/index-delay": 0.01}))
        yield self.ok(node, "identity_create", username=name)
        for _ in range(300):
            if node.service_driver.is_on("service_shares"):
                break
            yield pause(0.02)
        return node

    @inlineCallbacks
    def test_arguments_are_checked(self):
        alice = yield self.node("alice")
        me = self.global_id(alice)
        yield self.error(alice, 400, "share_create", key_size=1000)
        # a share owned by someone else is proposed to that user: unreachable, it is a 503 and nothing is kept
        refused = yield self.error(alice, 503, "share_create", owner_id="bob@127.0.0.1_1")
        self.assertIn("bob", refused)
        self.assertEqual((yield self.ok(alice, "shares_list")), [])
        self.assertFalse([k for k in alice.service_driver.get("service_identity").keystore.list()
                          if k.key_id.endswith("$bob@127.0.0.1_1")])
        yield self.error(alice, 400, "share_create", owner_id="not a user")
        mine = yield self.ok(alice, "share_create", owner_id=me, key_size=2048)
        self.assertTrue(mine["key_id"].endswith("$" + me))
        yield self.ok(alice, "share_delete", key_id=mine["key_id"])
        self.assertIn("not a share key", (yield self.error(alice, 400, "share_open", key_id=f"master${me}")))
        unknown = f"share_0123456789abcdef0123456789abcdef${me}"
        for method in ("share_open", "share_close", "share_delete"):
            yield self.error(alice, 404, method, key_id=unknown)
        yield self.error(alice, 404, "share_grant", key_id=unknown, trusted_user_id="bob@127.0.0.1_1")
        foreign = "share_0123456789abcdef0123456789abcdef$bob@127.0.0.1_1"
        self.assertIn("only its owner", (yield self.error(alice, 403, "share_grant", key_id=foreign,
                                                          trusted_user_id="carol@127.0.0.1_1")))
        self.assertIn("not granted", (yield self.error(alice, 403, "files_list", key_id=foreign)))
        self.assertEqual((yield self.ok(alice, "shares_list")), [])
        self.assertEqual([e["event"] for e in (yield self.ok(alice, "share_history"))], ["created", "deleted"])

    @inlineCallbacks
    def test_create_list_close_open_and_the_records_survive_a_restart(self):
        alice = yield self.node("alice")
        share = yield self.ok(alice, "share_create", key_size=2048, label="summer")
        key_id = share["key_id"]
        self.assertRegex(key_id, r"^share_[0-9a-f]{32}\$alice@")
        self.assertEqual((share["mine"], share["active"], share["state"], share["grantees"]),
                         (True, True, "CONNECTED", []))
        self.assertEqual(self.keystore(alice).get(key_id).size, 2048)
        self.assertEqual(self.events(alice, "share-created")[0]["key_id"], key_id)
        closed = yield self.ok(alice, "share_close", key_id=key_id)
        self.assertEqual((closed["active"], closed["state"]), (False, "CLOSED"))
        self.assertEqual((yield self.ok(alice, "shares_list", only_active=True)), [])
        self.assertEqual((yield self.ok(alice, "shares_list", include_mine=False)), [])
        yield self.ok(alice, "share_open", key_id=key_id)
        yield alice.service_driver.restart("service_shares")
        (listed,) = yield self.ok(alice, "shares_list", only_active=True)
        self.assertEqual((listed["key_id"], listed["label"]), (key_id, "summer"))
        # the owner uploads under the share key like under any of its keys: no supplier here, a clear 503
        yield self.error(alice, 503, "file_upload_start", local_path="/etc/hostname", remote_path=f"{key_id}:x")
        history = yield self.ok(alice, "share_history")
        self.assertEqual([e["event"] for e in history], ["created", "closed", "opened"])

    @inlineCallbacks
    def test_a_grant_without_suppliers_delivers_the_key_and_says_the_suppliers_were_not_told(self):
        alice = yield self.node("alice")
        bob = yield self.node("bob")
        key_id = (yield self.ok(alice, "share_create", key_size=2048))["key_id"]
        granted = yield self.ok(alice, "share_grant", key_id=key_id, trusted_user_id=self.global_id(bob), timeout=10)
        self.assertEqual((granted["ready"], granted["grantees"]), (False, [self.global_id(bob)]))
        self.assertIn("no suppliers", granted["suppliers"]["error"])
        self.assertTrue(self.keystore(bob).get(key_id).is_private)
        (received,) = yield self.wait_event(bob, "share-received")
        self.assertEqual(received["from"], self.global_id(alice))
        (listed,) = yield self.ok(bob, "shares_list")
        self.assertEqual((listed["mine"], listed["state"], listed["granted_by"]), (False, "CLOSED", self.global_id(alice)))
        # Bob has no DHT to find Alice's suppliers in: a 503 with the reason, and the share waits DISCONNECTED
        self.assertIn("not running", (yield self.error(bob, 503, "share_open", key_id=key_id)))
        self.assertIn("not connected", (yield self.error(bob, 409, "files_list", key_id=key_id)))
        (listed,) = yield self.ok(bob, "shares_list")
        self.assertEqual(listed["state"], "DISCONNECTED")
        # an open share is opened again when the service starts
        yield bob.service_driver.restart("service_shares")
        machines = yield self.ok(bob, "automats_list")
        self.assertIn("shared_access_coordinator", [m["name"] for m in machines])
        # Bob deletes his copy; Alice's grant stays recorded on her side
        yield self.ok(bob, "share_delete", key_id=key_id)
        self.assertFalse(self.keystore(bob).has(key_id))
        self.assertEqual([e["event"] for e in (yield self.ok(bob, "share_history"))][-1], "deleted")
        self.assertEqual([e["event"] for e in (yield self.ok(alice, "share_history"))], ["created", "granted"])
