"""key_share, key_audit, friends_list, friend_add, friend_remove through the API: shapes and errors."""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

from bitnode.app import api_server
from tests.access.support import NODE_SERVICES, AccessNetworkCase
from tests.interface.support import HttpApi, start_node

METHODS = ("key_share", "key_audit", "friends_list", "friend_add", "friend_remove")


class AccessApiTests(AccessNetworkCase):
    @inlineCallbacks
    def test_without_identity_the_services_are_unavailable(self):
        node = yield start_node(self, service_classes=NODE_SERVICES, overrides=self.settings)
        for method, kwargs in (("key_share", {"key_id": "a$b@c.net", "trusted_user_id": "d@e.net"}),
                               ("key_audit", {"key_id": "a$b@c.net", "untrusted_user_id": "d@e.net"}),
                               ("friends_list", {}),
                               ("friend_add", {"trusted_user_id": "d@e.net"}),
                               ("friend_remove", {"user_id": "d@e.net"})):
            text = yield self.error(node, 503, method, **kwargs)
            self.assertIn("is not running", text)
        for method in METHODS:
            self.assertTrue(callable(getattr(api_server(node).api, method)))

    @inlineCallbacks
    def test_bad_arguments(self):
        alice = yield self.joined_node("alice")
        me = self.global_id(alice)
        master = "master$" + me
        other = "bob@" + me.split("@")[1]
        yield self.error(alice, 400, "key_share", key_id=master)  # trusted_user_id is required
        yield self.error(alice, 400, "key_share", key_id=master, trusted_user_id=other, timeout=0)
        yield self.error(alice, 400, "key_share", key_id=master, trusted_user_id=other, timeout="soon")
        yield self.error(alice, 400, "key_share", key_id="no-dollar", trusted_user_id=other)
        yield self.error(alice, 400, "key_share", key_id=master, trusted_user_id="not a user")
        yield self.error(alice, 400, "key_share", key_id=master, trusted_user_id=me)
        yield self.error(alice, 404, "key_share", key_id="x$" + me, trusted_user_id=other)
        yield self.error(alice, 403, "key_share", key_id=master, trusted_user_id=other, include_private=True)
        yield self.error(alice, 400, "key_audit", key_id=master, untrusted_user_id=other, timeout=-1)
        yield self.error(alice, 400, "key_audit", key_id=master, untrusted_user_id=me)
        yield self.error(alice, 404, "key_audit", key_id="x$" + me, untrusted_user_id=other)
        self.assertEqual((yield self.ok(alice, "friends_list")), [])
        yield self.error(alice, 400, "friend_add", trusted_user_id=other, alias="a\nb")
        yield self.error(alice, 400, "friend_add", trusted_user_id=me)
        yield self.error(alice, 404, "friend_remove", user_id=other)
        yield self.error(alice, 400, "friend_remove", user_id="???")

    @inlineCallbacks
    def test_over_http_with_the_spec_verbs(self):
        alice = yield self.joined_node("alice")
        bob = yield self.joined_node("bob")
        bob_id = self.global_id(bob)
        http = HttpApi(self, alice)
        created = yield self.ok(alice, "key_create", key_alias="docs", key_size=2048)

        reply = yield http.request("PUT", "key/share/v1", body={"key_id": created["key_id"], "trusted_user_id": bob_id,
                                                                "include_private": True, "timeout": 5})
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(sorted(reply.result), ["fingerprint", "include_private", "key_id", "label", "shared",
                                                "trusted_user_id"])
        self.assertTrue(reply.result["include_private"])

        reply = yield http.request("POST", "key/audit/v1", body={"key_id": created["key_id"],
                                                                 "untrusted_user_id": bob_id, "is_private": 1})
        self.assertEqual(reply.result["result"], "OK")
        self.assertEqual(sorted(reply.result), ["fingerprint", "is_private", "key_id", "reason", "result",
                                                "untrusted_user_id"])

        reply = yield http.request("POST", "friend/add/v1", body={"trusted_user_id": bob_id, "alias": "SuperMario"})
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(sorted(reply.result), ["added", "added_at", "alias", "contact_state", "contact_status", "global_id",
                                                "idurl", "last_seen", "online", "person_key_error",
                                                "person_key_id", "person_key_shared", "username"])
        listed = (yield http.get("friend/list/v1")).result
        self.assertEqual([(f["global_id"], f["alias"], f["username"]) for f in listed],
                         [(bob_id, "SuperMario", "bob")])
        reply = yield http.request("DELETE", "friend/remove/v1", body={"user_id": bob_id})
        self.assertEqual(reply.result["removed"], True)
        reply = yield http.request("DELETE", "friend/remove/v1", body={"user_id": bob_id})
        self.assertEqual(reply.code, 404)
        self.assertIn("not in the list of friends", reply.error)
