"""An in-process network for the access tests: an identity server node and ordinary nodes.

Real services (identity, gateway, network, key exchange, friends), real HTTP
and TCP on 127.0.0.1 with free ports, 2048-bit keys.  API calls go through
the node's dispatcher, the way a client calls them.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from bitnode.access.friends_service import FriendsService
from bitnode.access.key_exchange_service import KeyExchangeService
from bitnode.app import api_server
from bitnode.p2p.network_service import NetworkService
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_server import IdentityServerService
from bitnode.userid.id_service import IdentityService
from tests.interface.support import start_node

NODE_SERVICES = [IdentityService, GatewayService, NetworkService, KeyExchangeService, FriendsService]
READY = ("service_network", "service_key_exchange", "service_friends")


def pause(seconds: float = 0.01):
    """A short real-time pause (for polling something that happens on the wire)."""
    return deferLater(reactor, seconds, lambda: None)


class AccessNetworkCase(unittest.TestCase):
    """Starts an identity server node in setUp; :meth:`joined_node` adds nodes with an identity."""

    timeout = 60
    #: The services of :meth:`joined_node` (a subclass may add its own).
    node_services = NODE_SERVICES

    @inlineCallbacks
    def setUp(self):
        server = yield start_node(self, service_classes=[IdentityServerService, IdentityService],
                                  overrides={"services/identity-server/enabled": True,
                                             "services/identity-server/web-port": 0})
        port = server.service_driver.get("service_identity_server").port
        self.settings = {"personal/private-key-size": 2048, "personal/identity-servers": [f"127.0.0.1:{port}"],
                         "services/identity/fetch-timeout": 5.0, "services/tcp-connections/tcp-port": 0}

    @inlineCallbacks
    def call(self, node, method, **kwargs):
        """The dispatcher's answer (``.code``, ``.envelope``)."""
        answer = yield api_server(node).dispatcher.execute_by_name(method, kwargs)
        return answer

    @inlineCallbacks
    def ok(self, node, method, **kwargs):
        """The result of a call that must answer 200."""
        answer = yield self.call(node, method, **kwargs)
        self.assertEqual(answer.code, 200, (method, answer.envelope))
        return answer.envelope["result"]

    @inlineCallbacks
    def error(self, node, code, method, **kwargs):
        """The error text of a call that must answer ``code``."""
        answer = yield self.call(node, method, **kwargs)
        self.assertEqual(answer.code, code, (method, answer.envelope))
        return " ".join(answer.envelope["errors"])

    @inlineCallbacks
    def joined_node(self, name, overrides=None):
        """A node with identity ``name`` whose access services run and whose network is connected."""
        settings = dict(self.settings)
        settings.update(overrides or {})
        node = yield start_node(self, service_classes=self.node_services, overrides=settings)
        yield self.ok(node, "identity_create", username=name)
        for _ in range(300):
            if all(node.service_driver.is_on(name) for name in READY):
                break
            yield pause(0.02)
        status = yield self.ok(node, "network_connected", wait_timeout=10)
        self.assertEqual(status["state"], "CONNECTED")
        return node

    def global_id(self, node) -> str:
        """The node's global id."""
        return node.service_driver.get("service_identity").my_global_id()

    def keystore(self, node):
        """The node's key store."""
        return node.service_driver.get("service_identity").keystore

    def events(self, node, event_id):
        """The data of every ``event_id`` event published on the node so far."""
        return [event.data for event in node.events.since(0)[0] if event.event_id == event_id]

    @inlineCallbacks
    def wait_event(self, node, event_id, count=1, seconds=5.0):
        """Wait (polling) until ``count`` ``event_id`` events were published; fires with their data."""
        for _ in range(int(seconds / 0.02)):
            found = self.events(node, event_id)
            if len(found) >= count:
                return found
            yield pause(0.02)
        self.fail(f"no {count} {event_id} event(s) within {seconds}s: {self.events(node, event_id)}")
