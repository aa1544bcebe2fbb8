"""In-process network for the chat tests: an identity server that is also the DHT's first node."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.dht.dht_service import DHTService
from tests.interface.support import DispatcherCalls, start_id_server, start_node, wait_until

DHT_PORT = "services/entangled-dht/udp-port"
MESSAGES = "service_private_messages"


@defer.inlineCallbacks
def start_seed(case):
    """Start the seed node (identity server + DHT) of an in-process network.

    Fires with ``(seed_node, settings)``: ``settings`` are the overrides a
    node needs to use its identity server and to join its DHT (copy them
    before changing them).
    """
    seed, settings = yield start_id_server(case, [DHTService], {DHT_PORT: 0})
    dht_port = seed.service_driver.get("service_entangled_dht").dht.address[1]
    settings.update({DHT_PORT: 0, "services/entangled-dht/known-nodes": [f"127.0.0.1:{dht_port}"]})
    return seed, settings


class ChatNetworkCase(DispatcherCalls, unittest.TestCase):
    """A TestCase with a seed node (``self.seed``) and the settings that join it (``self.settings``)."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        self.seed, self.settings = yield start_seed(self)

    @defer.inlineCallbacks
    def until(self, check, what):
        """Fires with ``check()``'s first true answer; fails the test after about 5 s."""
        return (yield wait_until(check, what))

    @defer.inlineCallbacks
    def messaging_user(self, name, service_classes, overrides):
        """A node of ``service_classes`` (settings: ``self.settings`` with ``overrides``) that has created the
        identity ``name`` and whose private messages service is on."""
        node = yield start_node(self, service_classes=service_classes, overrides=dict(self.settings, **overrides))
        yield self.ok(node, "identity_create", username=name)
        yield self.until(lambda: node.service_driver.is_on(MESSAGES), f"{name}'s {MESSAGES}")
        return node

    def gid(self, node):
        """The node's global id."""
        return node.service_driver.get("service_identity").my_global_id()
