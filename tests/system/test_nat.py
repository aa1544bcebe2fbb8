"""System test (issue 16): nodes behind NAT work through routers, on a localnet of real processes.

One network: an identity server, two routers, two suppliers (``supplier-2``
behind NAT) and two customers, both behind NAT.  A node behind NAT opens no
listening peer port at all (only its local API); it finds a router in the
DHT, keeps one connection to it and publishes the router as its contact.

One test walks through it: the nodes behind NAT listen nowhere and publish
``proxy://`` contacts; customer-1 (which hired supplier-2, behind NAT too)
uploads a file and downloads it byte-identical; the two customers exchange a
private message and ping each other; all of it went through the routers (no
packet of a NATed node took the direct path, every connection it has goes to
a router, and the routers counted the bytes); a stranger on raw TCP cannot
use a router as an open relay nor send in a routed node's name (refused and
counted by the router); then customer-1's router is
killed: customer-1 is routed through the other one within a bounded time and
an upload and a download work again.  The timings are printed for the record.
"""

from __future__ import annotations

import os
import socket
import time

from twisted.internet.task import Clock

from bitnode.crypt import keys
from bitnode.transport.commands import Command
from bitnode.transport.framing import PREFIX
from bitnode.transport.packet import Packet
from tests.system.nat_checks import NatChecks
from tests.system.support import LocalnetTestCase, sha256_of, wait_for
from tests.system.test_wire_attacks import Stranger

ROUTERS = ("router-1", "router-2")
NATTED = ("supplier-2", "customer-1", "customer-2")
#: How long a node behind NAT may take to be routed again after its router died.
REROUTE_WITHIN = 45.0


def frame(packet: Packet) -> bytes:
    """A packet as it goes on the wire."""
    head = packet.encode_header()
    return PREFIX.pack(2 + len(head) + len(packet.payload), len(head)) + head + packet.payload


class BehindNatTests(NatChecks, LocalnetTestCase):
    """Storage, messages and pings between nodes behind NAT, through routers that may die."""

    def test_nodes_behind_nat_store_talk_and_ping_through_routers_and_outlive_their_router(self) -> None:
        started = time.monotonic()
        self.start_network(suppliers=2, customers=2, prefix="bitnode-nat-", timeout=120.0, routers=2,
                           suppliers_behind_nat=1, customers_behind_nat=2)
        up_seconds = time.monotonic() - started
        self.check_nodes_behind_nat_listen_nowhere_and_publish_their_router()
        direct = {name: self.proxy(name)["packets_by_path"]["direct"] for name in NATTED}
        carried = self.router_bytes()
        self.upload_and_download("first.bin", 1024 * 1024)
        self.message_and_ping("customer-1", "customer-2")
        self.check_everything_went_through_routers(direct, carried)
        refused = self.check_a_stranger_cannot_use_a_router_as_an_open_relay()
        reroute_seconds = self.kill_the_router_of("customer-1")
        self.upload_and_download("second.bin", 512 * 1024)
        self.message_and_ping("customer-2", "customer-1")
        print(f"\nbehind NAT: network up {up_seconds:.1f}s, rerouted {reroute_seconds:.1f}s after its router died; "
              f"a stranger's frames refused by the router: {refused}")

    # --- steps -----------------------------------------------------------------------------

    def check_nodes_behind_nat_listen_nowhere_and_publish_their_router(self) -> None:
        for name in NATTED:
            self.check_listens_nowhere_and_publishes_a_router(name)
        self.assertEqual(self.proxy("supplier-1")["mode"], "direct")  # reachable: decided by itself
        hired = {row["supplier_id"] for row in self.api("customer-1", "suppliers_list") if row.get("supplier_id")}
        self.assertIn(self.nodes["supplier-2"]["global_id"], hired)  # a supplier behind NAT stores for us too

    def upload_and_download(self, name: str, size: int) -> None:
        local = os.path.join(self.dir, name)
        with open(local, "wb") as handle:
            handle.write(os.urandom(size))
        remote = f"master${self.nodes['customer-1']['global_id']}:{name}"
        done = self.api("customer-1", "file_upload_start", local_path=local, remote_path=remote, wait_result=True,
                        timeout=90)
        self.assertEqual(done["state"], "DONE", done)
        target = os.path.join(self.dir, "back-" + name)
        done = self.api("customer-1", "file_download_start", remote_path=remote, destination_path=target,
                        wait_result=True, timeout=90)
        self.assertEqual(done["state"], "DONE", done)
        self.assertEqual(sha256_of(target), sha256_of(local))

    def check_everything_went_through_routers(self, direct_before: dict, carried_before: tuple) -> None:
        for name in NATTED:
            proxy = self.proxy(name)
            self.assertEqual(proxy["packets_by_path"]["direct"], direct_before[name], (name, proxy))
            self.assertGreater(proxy["packets_by_path"]["via_router"], 0)
            self.check_only_router_connections(name)
        bytes_in, bytes_out = self.router_bytes()
        # the upload's blocks came up customer-1's route ("out"); the download's came down it ("in", from
        # supplier-1) or up supplier-2's ("out"): each frame is counted once, on the route it came from
        self.assertGreater(bytes_out - carried_before[1], 1024 * 1024)
        self.assertGreater(bytes_in + bytes_out - sum(carried_before), 2 * 1024 * 1024)
        for name in ROUTERS:
            refused = self.proxy(name)["refused"]
            self.assertEqual(refused.get("bad_signature", 0), 0, refused)

    def check_a_stranger_cannot_use_a_router_as_an_open_relay(self) -> dict:
        """Raw TCP to customer-1's router: frames for a node it does not route, and frames forged in the
        name of a node it routes, are refused by the router and counted; nothing reaches their recipient."""
        router_id = self.proxy("customer-1")["router"]
        router = next(n for n in ROUTERS if self.nodes[n]["global_id"] == router_id)
        id_server = f"127.0.0.1:{self.nodes['idserver']['ports']['idserver']}"
        stranger = Stranger("mallory", id_server, keys.generate_rsa(2048))
        target, routed = self.nodes["supplier-1"]["global_id"], self.nodes["customer-1"]["global_id"]
        clock = Clock()
        clock.advance(time.time())
        frames = [frame(Packet.create(clock, Command.MESSAGE, stranger.identity.global_id,
                                      stranger.identity.global_id, target, b"relay this", stranger.signer))
                  for _ in range(20)]
        frames += [frame(Packet.create(clock, Command.MESSAGE, routed, routed, target, b"it is me", stranger.signer))
                   for _ in range(5)]
        with socket.create_connection(("127.0.0.1", self.nodes[router]["ports"]["tcp"]), timeout=10) as sock:
            sock.sendall(b"".join(frames))
            refused = wait_for(lambda: (r := self.proxy(router)["refused"]).get("not_routed", 0) >= 20
                               and r.get("bad_signature", 0) >= 5 and r, "the router to refuse the frames")
        senders = self.api("supplier-1", "packets_stats")["in"]["by_peer"]
        self.assertNotIn(stranger.identity.global_id, senders)
        return refused

    def kill_the_router_of(self, name: str) -> float:
        router_id = self.proxy(name)["router"]
        router = next(n for n in ROUTERS if self.nodes[n]["global_id"] == router_id)
        killed = time.monotonic()
        self.net.stop_node(router, kill=True)

        def rerouted():
            proxy = self.proxy(name)
            return proxy["mode"] == "routed" and proxy["router"] not in (None, router_id)

        wait_for(rerouted, f"{name} to be routed through another router", timeout=REROUTE_WITHIN)
        seconds = time.monotonic() - killed
        wait_for(lambda: self.api(name, "network_connected", wait_timeout=1)["state"] == "CONNECTED",
                 f"{name} to be connected again", timeout=REROUTE_WITHIN)
        return seconds
