"""Checks shared by the system tests of nodes behind NAT (test_nat, test_nat_walkthrough).

A mixin for :class:`~tests.system.support.LocalnetTestCase`: which router a
node uses, what the routers carried, which sockets a node has, and the
message-and-ping round between two users.  The methods need only
``self.api`` and ``self.nodes`` (the routers are the nodes with the
``router`` role), so another test case may borrow one.
"""

from __future__ import annotations

import psutil

from tests.system.support import wait_for


def routers_of(nodes: dict) -> list[str]:
    """The routers among a network's nodes (the ``router`` role in network.json)."""
    return [name for name, node in nodes.items() if "router" in node.get("roles", ())]


class NatChecks:
    """Helpers over ``self.api`` / ``self.nodes`` for networks with routers and nodes behind NAT."""

    def proxy(self, name: str) -> dict:
        """The ``proxy`` section of ``network_status`` of node ``name``."""
        return self.api(name, "network_status", proxy=True)["proxy"]

    def router_bytes(self) -> tuple[int, int]:
        """Bytes the running routers passed on towards routed nodes and from them."""
        sections = [self.proxy(name) for name in routers_of(self.nodes) if psutil.pid_exists(self.nodes[name]["pid"] or 0)]
        return sum(s["bytes_in"] for s in sections), sum(s["bytes_out"] for s in sections)

    def listening_ports(self, name: str) -> set[int]:
        """The TCP ports process ``name`` listens on (seen by the OS)."""
        process = psutil.Process(self.nodes[name]["pid"])
        connections = getattr(process, "net_connections", None) or process.connections
        return {c.laddr.port for c in connections(kind="tcp") if c.status == psutil.CONN_LISTEN}

    def check_listens_nowhere_and_publishes_a_router(self, name: str) -> None:
        """Node ``name`` is routed, publishes only ``proxy://`` and has no listening peer port at all."""
        router_ids = {self.nodes[router]["global_id"] for router in routers_of(self.nodes)}
        proxy = self.proxy(name)
        self.assertEqual(proxy["mode"], "routed", (name, proxy))
        self.assertIn(proxy["router"], router_ids)
        contacts = self.api(name, "identity_get")["contacts"]
        self.assertEqual([c.split("://")[0] for c in contacts], ["proxy"], (name, contacts))
        tcp = self.api(name, "network_status", tcp=True)["tcp"]
        self.assertEqual((tcp["listening"], tcp["contact"]), (False, None))
        # at the OS level: the local API's ports are its only listening sockets
        api_ports = {self.nodes[name]["ports"]["http"], self.nodes[name]["ports"]["ws"]}
        self.assertLessEqual(self.listening_ports(name), api_ports, name)

    def check_only_router_connections(self, name: str) -> None:
        """Every connection node ``name`` has is one it opened to a router."""
        router_ports = {self.nodes[router]["ports"]["tcp"] for router in routers_of(self.nodes)}
        rows = self.api(name, "connections_list")
        self.assertTrue(rows)
        self.assertEqual({(row["direction"], row["port"] in router_ports) for row in rows}, {("out", True)},
                         (name, rows))

    def message_and_ping(self, sender: str, recipient: str, text: str | None = None) -> None:
        """``sender`` messages ``recipient`` (acked, received with its text), then each pings the other."""
        recipient_id = self.nodes[recipient]["global_id"]
        self.api(recipient, "message_receive", consumer_callback_id="nat-test", polling_timeout=0)
        text = text or f"hello from {sender}"
        sent = self.api(sender, "message_send", recipient_id=recipient_id, data={"message": text},
                        ping_timeout=15, message_ack_timeout=15)
        self.assertEqual(sent["state"], "acked", sent)
        got = wait_for(lambda: self.api(recipient, "message_receive", consumer_callback_id="nat-test",
                                        polling_timeout=1), f"{recipient} to receive the message", timeout=30)
        self.assertEqual([m["data"] for m in got], [{"message": text}])
        for one, other in ((sender, recipient), (recipient, sender)):
            pong = self.api(one, "user_ping", user_id=self.nodes[other]["global_id"], timeout=15)
            self.assertTrue(pong["online"], pong)
