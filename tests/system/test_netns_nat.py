"""System test (issue 16): customers behind a real NAT, built with Linux network namespaces.

tests/system/test_nat.py plays "behind NAT" on loopback: those nodes simply
do not listen and are told they are unreachable.  Here the NAT is real and
the nodes are not told anything:

    namespace "pub" (the internet)        namespace "natI" (a home router)      namespace "homeI"
    10.77.0.1: identity + STUN server,    wan 172.31.I.2 (its public address)    10.77.I.2: customer-I
    DHT seed, routers, suppliers   <--->  lan 10.77.I.1, nft masquerade    <---> (listens, reachable=auto)
    pub side of each NAT: 172.31.I.1      out, nothing in (forward: only
                                          replies to what went out)

Each node is a real process started inside its namespace (``ip netns exec``
in effect: :mod:`bitnode.main.netns`); its API is on 127.0.0.1 of that
namespace, and this test's API calls enter the namespace for their socket
(the node names it in its endpoints file).  The host's own interfaces and
routes are never touched: every veth is created inside the namespaces, and
deleting the namespaces at cleanup removes them, their addresses, routes and
nft rules (after the network is down and any process left in them is killed).

What the one test checks, in order: STUN from inside a home namespace answers
the NAT's public address; each customer finds out by itself that it is not
reachable (a router's probe cannot connect through the NAT) and gets routed,
publishing only its router; the router sees it connect from the NAT's public
address; customer-1 hires suppliers, uploads a file and downloads it
byte-identical; the customers message and ping each other; none of it took
a direct path (the nodes' counters, and at the kernel level every TCP
connection of a customer goes to a router); the NATs translated the flows
and were hit by inbound attempts they did not let in (nft counters); then
customer-1's router is killed, customer-1 is routed through the other one,
and an upload, a download, a message and the pings work again.

It needs root, ``ip netns`` and ``nft`` (`.ci/run` installs Debian's nftables
when it can); without any of them it skips and says which.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid

from twisted.trial.unittest import SynchronousTestCase

from bitnode.localnet.network import Placement
from tests.system import test_nat  # the module, not its test case (trial would run that here too)
from tests.system.support import LocalnetTestCase, pid_alive, wait_for

#: Where every public node listens (an address of the public namespace's loopback device).
PUBLIC_HOST = "10.77.0.1"
HOMES = 2
ROUTERS = ("router-1", "router-2")
CUSTOMERS = tuple(f"customer-{i}" for i in range(1, HOMES + 1))
#: How long a customer may take to move to the router it is told to use (after a killed router: test_nat.REROUTE_WITHIN).
REROUTE_WITHIN = 60.0
#: The nft table each NAT namespace gets.
NAT_TABLE = "bitnode_nat"
COMMAND_TIMEOUT = 20.0
#: The state column of an established connection in /proc/net/tcp.
TCP_ESTABLISHED = "01"


class Unusable(Exception):
    """This machine cannot build the namespaces (the test skips, saying why)."""


def public_address(home: int) -> str:
    """The NAT's public (wan) address of home ``home``: what the internet sees its customer as."""
    return f"172.31.{home}.2"


def home_address(home: int) -> str:
    """The customer's own address inside home ``home``."""
    return f"10.77.{home}.2"


def nat_rules(wan: str, lan: str) -> str:
    """The nft ruleset of a home router: masquerade out, only replies in, and counters of each."""
    return f"""
table ip {NAT_TABLE} {{
  counter translated {{}}
  counter outbound {{}}
  counter replies {{}}
  counter dropped {{}}
  counter unsolicited {{}}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{wan}" counter name "translated" masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    iifname "{lan}" oifname "{wan}" counter name "outbound" accept
    iifname "{wan}" oifname "{lan}" ct state established,related counter name "replies" accept
    counter name "dropped"
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{wan}" ct state new counter name "unsolicited"
  }}
}}
"""


def missing_requirement() -> str | None:
    """Why this machine cannot run the test, or None."""
    if not hasattr(os, "geteuid") or not os.path.isdir("/proc/self/ns"):
        return "needs Linux network namespaces"
    if os.geteuid() != 0:
        return "needs root (ip netns, nft)"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (Debian package {package}; .ci/run installs it when it can)"
    return None


class NatLab:
    """The namespaces, veths, addresses, routes and NAT rules of one test; all removed by ``remove``.

    Names carry a random tag, so several runs on one machine never meet.
    """

    def __init__(self, homes: int) -> None:
        tag = uuid.uuid4().hex[:6]
        self.tag = tag
        self.public = f"bn{tag}-pub"
        self.nats = [f"bn{tag}-nat{i}" for i in range(1, homes + 1)]
        self.homes = [f"bn{tag}-home{i}" for i in range(1, homes + 1)]
        self.created: list[str] = []

    @property
    def namespaces(self) -> list[str]:
        return [self.public, *self.nats, *self.homes]

    def run(self, *command: str, stdin: str | None = None) -> str:
        """Run a command; its output, or Unusable with its error."""
        try:
            done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise Unusable(f"{' '.join(command)}: {err}") from None
        if done.returncode != 0:
            raise Unusable(f"{' '.join(command)}: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def build(self) -> None:
        """Create every namespace and link; Unusable on the first command that fails."""
        for namespace in self.namespaces:
            self.run("ip", "netns", "add", namespace)
            self.created.append(namespace)
            self.run("ip", "-n", namespace, "link", "set", "lo", "up")
        self.run("ip", "-n", self.public, "addr", "add", f"{PUBLIC_HOST}/32", "dev", "lo")
        for index, (nat, home) in enumerate(zip(self.nats, self.homes, strict=True), start=1):
            # interface names: at most 15 characters; both ends of each veth are born inside namespaces
            pub_end, wan, lan, inside = (f"bn{self.tag}{kind}{index}" for kind in ("p", "w", "l", "h"))
            self.run("ip", "-n", self.public, "link", "add", pub_end, "type", "veth", "peer", "name", wan,
                     "netns", nat)
            self.run("ip", "-n", nat, "link", "add", lan, "type", "veth", "peer", "name", inside, "netns", home)
            for namespace, device, address in ((self.public, pub_end, f"172.31.{index}.1/30"),
                                               (nat, wan, f"{public_address(index)}/30"),
                                               (nat, lan, f"10.77.{index}.1/24"),
                                               (home, inside, f"{home_address(index)}/24")):
                self.run("ip", "-n", namespace, "addr", "add", address, "dev", device)
                self.run("ip", "-n", namespace, "link", "set", device, "up")
            self.run("ip", "-n", nat, "route", "add", "default", "via", f"172.31.{index}.1")
            self.run("ip", "-n", home, "route", "add", "default", "via", f"10.77.{index}.1")
            self.run("ip", "netns", "exec", nat, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            self.run("ip", "netns", "exec", nat, "nft", "-f", "-", stdin=nat_rules(wan, lan))

    def host_links(self) -> list[str]:
        """This test's interfaces that are in the host's own namespace (there must be none)."""
        text = self.run("ip", "-o", "link", "show")
        return [line.split(":")[1].strip() for line in text.splitlines() if f"bn{self.tag}" in line]

    def counters(self, home: int) -> dict[str, dict]:
        """The nft counters of home ``home``'s NAT: name -> {packets, bytes}."""
        text = self.run("ip", "netns", "exec", self.nats[home - 1], "nft", "-j", "list", "counters", "table", "ip",
                        NAT_TABLE)
        found = {}
        for item in json.loads(text)["nftables"]:
            counter = item.get("counter")
            if counter:
                found[counter["name"]] = {"packets": counter["packets"], "bytes": counter["bytes"]}
        return found

    def remove(self) -> None:
        """Kill what still runs in the namespaces, then delete them (their veths and rules go with them)."""
        for namespace in reversed(self.created):
            pids = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT).stdout.split()
            for pid in pids:  # only processes inside a namespace this test made
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            for pid in pids:
                wait_for(lambda p=int(pid): not pid_alive(p), f"pid {pid} to die")
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=COMMAND_TIMEOUT)
        left = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT).stdout.split()) & set(self.created)
        self.created = []
        if left:
            raise AssertionError(f"network namespaces left behind: {sorted(left)}")


class RealNatTests(LocalnetTestCase):
    """Storage, messages and pings of customers behind a real (namespaced, nft) NAT, through routers."""

    def setUp(self) -> None:
        reason = missing_requirement()
        if reason:
            self.skipTest(reason)
        self.lab = NatLab(HOMES)
        self.addCleanup(self.lab.remove)
        try:
            self.lab.build()
        except Unusable as err:
            self.skipTest(f"cannot build the network namespaces here: {err}")
        self.assertEqual(self.lab.host_links(), [])  # every veth end lives inside a namespace of ours

    def test_customers_behind_a_real_nat_find_out_get_routed_store_talk_and_outlive_their_router(self) -> None:
        started = time.monotonic()
        placements = {name: Placement(self.lab.public, PUBLIC_HOST)
                      for name in ("idserver", *ROUTERS, "supplier-1", "supplier-2")}
        placements.update({customer: Placement(self.lab.homes[i], home_address(i + 1))
                           for i, customer in enumerate(CUSTOMERS)})
        # the customers are not "behind-nat" for localnet: they listen and must find out by themselves
        self.start_network(suppliers=2, customers=HOMES, prefix="bitnode-netns-", timeout=150.0, routers=2,
                           placements=placements)
        up_seconds = time.monotonic() - started
        stun = self.check_stun_sees_the_nat()
        self.check_customers_found_out_they_are_behind_nat()
        self.put_the_customers_on_different_routers()
        direct = {name: self.proxy(name)["packets_by_path"]["direct"] for name in CUSTOMERS}
        carried = self.router_bytes()
        self.upload_and_download("first.bin", 1024 * 1024)
        self.message_and_ping("customer-1", "customer-2")
        self.check_everything_went_through_routers(direct, carried)
        nat = {home: self.lab.counters(home) for home in range(1, HOMES + 1)}
        self.check_the_nats_translated_and_let_nothing_in(nat)
        reroute_seconds = self.kill_the_router_of("customer-1")
        self.upload_and_download("second.bin", 512 * 1024)
        self.message_and_ping("customer-2", "customer-1")
        print(f"\nreal NAT: network up {up_seconds:.1f}s; STUN from home 1 saw {stun}; rerouted "
              f"{reroute_seconds:.1f}s after its router died; NAT 1 counters {nat[1]}")

    # --- steps -----------------------------------------------------------------------------

    # the same steps as on the pretend NAT (same node names): a message and pings both ways, a killed router
    message_and_ping = test_nat.BehindNatTests.message_and_ping
    kill_the_router_of = test_nat.BehindNatTests.kill_the_router_of
    proxy = test_nat.BehindNatTests.proxy
    router_bytes = test_nat.BehindNatTests.router_bytes

    def check_stun_sees_the_nat(self) -> dict:
        """STUN asked from inside a home answers its NAT's public address (network_stun and at start-up)."""
        answers = {}
        for index, name in enumerate(CUSTOMERS, start=1):
            answer = self.api(name, "network_stun")
            self.assertEqual([row["ip"] for row in answer], [public_address(index)], (name, answer))
            learned = self.api(name, "network_status")["external_address"]
            self.assertEqual(learned["last"].get("ip"), public_address(index), (name, learned))
            answers[name] = answer[0]
        return answers[CUSTOMERS[0]]

    def check_customers_found_out_they_are_behind_nat(self) -> None:
        router_ids = {self.nodes[name]["global_id"] for name in ROUTERS}
        for index, name in enumerate(CUSTOMERS, start=1):
            proxy = self.proxy(name)
            decided = proxy["transport"]
            self.assertEqual(decided["setting"], "auto", decided)  # nobody told it
            self.assertEqual((proxy["mode"], decided["reachable"]), ("routed", False), (name, proxy))
            self.assertIn(proxy["router"], router_ids)
            contacts = self.api(name, "identity_get")["contacts"]
            self.assertEqual([c.split("://")[0] for c in contacts], ["proxy"], (name, contacts))
            # the router sees the customer's connection come from the NAT's public address
            router = self.router_name(proxy["router"])
            hosts = {row["host"] for row in self.api(router, "connections_list")
                     if self.nodes[name]["global_id"] in row.get("peers", ())}
            self.assertEqual(hosts, {public_address(index)}, (name, router, hosts))
        for name in ("supplier-1", "supplier-2"):
            self.assertEqual(self.proxy(name)["mode"], "direct", name)  # reachable: decided by itself
        # how they decided: a router dialled each one's public address (the NAT's) and could not connect
        probes = [self.proxy(name)["server"]["probes"] for name in ROUTERS]
        self.assertGreaterEqual(sum(p.get("unreachable", 0) for p in probes), len(CUSTOMERS), probes)
        self.assertGreaterEqual(sum(p.get("dialled", 0) for p in probes), 2, probes)  # the public suppliers
        hired = [row for row in self.api("customer-1", "suppliers_list") if row.get("supplier_id")]
        self.assertEqual(len(hired), 2, hired)

    def put_the_customers_on_different_routers(self) -> None:
        """So that their packets to each other cross two routers (router to router over the public network)."""
        first = self.proxy(CUSTOMERS[0])["router"]
        if self.proxy(CUSTOMERS[1])["router"] != first:
            return
        other = next(self.nodes[name]["global_id"] for name in ROUTERS if self.nodes[name]["global_id"] != first)
        self.api(CUSTOMERS[1], "config_set", key="services/proxy-transport/routers", value=[other])
        self.api(CUSTOMERS[1], "service_restart", service_name="service_proxy_transport")
        wait_for(lambda: self.proxy(CUSTOMERS[1])["router"] == other, f"{CUSTOMERS[1]} to be routed by {other}",
                 timeout=REROUTE_WITHIN)
        wait_for(lambda: self.api(CUSTOMERS[1], "network_connected", wait_timeout=1)["state"] == "CONNECTED",
                 f"{CUSTOMERS[1]} to be connected again", timeout=REROUTE_WITHIN)

    def upload_and_download(self, name: str, size: int) -> None:
        remote, digest = self.upload_random("customer-1", name, size)
        self.assertEqual(self.download_digest("customer-1", remote), digest)

    def check_everything_went_through_routers(self, direct_before: dict, carried_before: tuple) -> None:
        router_ports = {self.nodes[name]["ports"]["tcp"] for name in ROUTERS}
        # identity documents come over HTTP from the identity server (its keep-alive connections stay open)
        allowed = router_ports | {self.nodes["idserver"]["ports"]["idserver"]}
        for name in CUSTOMERS:
            proxy = self.proxy(name)
            self.assertEqual(proxy["packets_by_path"]["direct"], direct_before[name], (name, proxy))
            self.assertGreater(proxy["packets_by_path"]["via_router"], 0)
            # at the kernel level: no TCP connection of the customer (but its own API's) goes to a supplier or
            # to the other customer; its peer connection is to a router
            remote = self.tcp_peers(name)
            self.assertEqual({host for host, _ in remote}, {PUBLIC_HOST}, (name, remote))
            self.assertLessEqual({port for _, port in remote}, allowed, (name, remote, self.ports_by_node()))
            self.assertTrue({port for _, port in remote} & router_ports, (name, remote))
        bytes_in, bytes_out = self.router_bytes()
        self.assertGreater(bytes_out - carried_before[1], 1024 * 1024)  # the upload's blocks came up the route
        self.assertGreater(bytes_in + bytes_out - sum(carried_before), 2 * 1024 * 1024)

    def check_the_nats_translated_and_let_nothing_in(self, counters: dict) -> None:
        for home, seen in counters.items():
            self.assertGreater(seen["translated"]["packets"], 0, (home, seen))  # new flows masqueraded out
            self.assertGreater(seen["outbound"]["bytes"], 0, (home, seen))
            self.assertGreater(seen["replies"]["bytes"], 0, (home, seen))
            # the router's reachability probe (at least) knocked on the NAT's public address and was refused
            self.assertGreater(seen["unsolicited"]["packets"], 0, (home, seen))

    # --- helpers ----------------------------------------------------------------------------

    def ports_by_node(self) -> dict:
        """Every node's ports, for a failure message."""
        return {name: node["ports"] for name, node in self.nodes.items()}

    def router_name(self, global_id: str) -> str:
        return next(name for name in ROUTERS if self.nodes[name]["global_id"] == global_id)

    def tcp_peers(self, name: str) -> set[tuple[str, int]]:
        """(host, port) of the established TCP connections in the node's namespace but loopback ones.

        Read from the kernel's table of that namespace (``/proc/PID/net/tcp``;
        psutil would read the test's own namespace); the customer is the only
        process in its home namespace.
        """
        with open(f"/proc/{self.nodes[name]['pid']}/net/tcp", encoding="ascii") as handle:
            rows = [line.split() for line in handle.readlines()[1:]]
        peers = set()
        for row in rows:
            if row[3] != TCP_ESTABLISHED:
                continue
            address, port = row[2].split(":")
            host = socket.inet_ntoa(struct.pack("<I", int(address, 16)))
            if not host.startswith("127."):
                peers.add((host, int(port, 16)))
        return peers


class LabTests(SynchronousTestCase):
    """The skip reasons, and a lab that fails halfway leaves nothing behind."""

    def test_each_missing_requirement_is_named(self) -> None:
        self.patch(os, "geteuid", lambda: 1000)
        self.assertEqual(missing_requirement(), "needs root (ip netns, nft)")
        self.patch(os, "geteuid", lambda: 0)
        self.patch(shutil, "which", lambda tool: None if tool == "nft" else f"/usr/sbin/{tool}")
        self.assertIn("needs `nft` (Debian package nftables", missing_requirement())

    def test_a_lab_that_fails_halfway_is_removed_and_never_touched_the_hosts_interfaces(self) -> None:
        reason = missing_requirement()
        if reason:
            self.skipTest(reason)
        lab = NatLab(HOMES)
        real_run = lab.run

        def run(*command, stdin=None):
            if "nft" in command:
                raise Unusable("nft: pretend it failed")
            return real_run(*command, stdin=stdin)

        lab.run = run
        self.addCleanup(lambda: lab.created and lab.remove())
        self.assertRaises(Unusable, lab.build)
        self.assertEqual(lab.created, lab.namespaces)  # it got as far as the first NAT's rules
        self.assertEqual(lab.host_links(), [])
        made = list(lab.created)
        lab.remove()
        listed = real_run("ip", "netns", "list")
        self.assertEqual([name for name in made if name in listed.split()], [])
        self.assertEqual(lab.created, [])
