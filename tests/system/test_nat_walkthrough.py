"""System test (issue 16, "Done means"): a new user's walkthrough behind NAT, with a dead identity server.

A localnet of real processes where every customer is behind NAT, and one
supplier too: two identity servers (every identity lists both), one router,
two suppliers (``supplier-2`` behind NAT), one customer behind NAT. Then the
primary identity server is killed, and only then a new user arrives:

- ``newcomer``, behind NAT (no listening peer port), creates its identity
  (on the live server: the dead one cannot take it), gets routed, hires the
  network's suppliers, uploads a file and downloads it byte-identical;
- it exchanges a private message with ``customer-1`` (behind NAT too) and
  both ``user_ping`` each other;
- every packet of the two customers took the router: none went direct,
  their only connections are the ones they opened to the router, and the
  router counted at least the uploaded bytes.

Nothing in the walkthrough is told about the dead server; the nodes started
before it died still name it as their primary (a localnet node moves away
after 45 s: some of them may move during the walkthrough, which must not
break it either). The timings are printed for the record.
"""

from __future__ import annotations

import time

from bitnode import globalid
from tests.system.nat_checks import NatChecks
from tests.system.support import LocalnetTestCase, wait_for

PRIMARY, SECOND = "idserver", "idserver-2"
NEWCOMER = "newcomer"
CUSTOMER = "customer-1"
SUPPLIERS = ("supplier-1", "supplier-2")
#: Bounds for the new user's steps (a quiet machine needs a fraction of them).
CONNECT_WITHIN = 45.0
HIRE_WITHIN = 60.0
#: the id_rotator's timings, shortened so the nodes move off the dead server within seconds (localnet: 20/10/45 s)
FAST_ROTATION = {"check-interval": 1.0, "recheck-interval": 1.0, "dead-after": 3.0}


class NatWalkthroughTests(NatChecks, LocalnetTestCase):
    """A new user behind NAT works unchanged while one of two identity servers is dead."""

    def test_a_new_user_behind_nat_hires_stores_and_talks_through_a_router_with_an_identity_server_dead(self):
        started = time.monotonic()
        self.start_network(suppliers=2, customers=1, prefix="bitnode-natwalk-", timeout=120.0, routers=1,
                           suppliers_behind_nat=1, customers_behind_nat=1, id_servers=2)
        up_seconds = time.monotonic() - started
        second_port = self.nodes[SECOND]["ports"]["idserver"]
        carried_before = self.router_bytes()
        direct_before = {CUSTOMER: self.proxy(CUSTOMER)["packets_by_path"]["direct"]}

        self.net.stop_node(PRIMARY, kill=True)
        walk = time.monotonic()
        me = self.new_user_behind_nat()
        self.assertTrue(me["global_id"].endswith(f"_{second_port}"), me)  # made on the live server
        joined_seconds = time.monotonic() - walk
        self.check_listens_nowhere_and_publishes_a_router(NEWCOMER)
        # (what it sent before it was routed went to the router it asked to route it: the only peer it knew)
        direct_before[NEWCOMER] = self.proxy(NEWCOMER)["packets_by_path"]["direct"]

        hired = self.wait_hired(NEWCOMER, len(SUPPLIERS))
        # the network's two suppliers (by the name it had when started, or the one it moved to since)
        self.assertEqual(sorted(self.which_node(name) for name in hired), sorted(SUPPLIERS), hired)
        hired_seconds = time.monotonic() - walk

        size = 512 * 1024
        remote, digest = self.upload_random(NEWCOMER, "walk.bin", size)
        self.assertEqual(self.download_digest(NEWCOMER, remote), digest)
        stored_seconds = time.monotonic() - walk

        self.message_and_ping(NEWCOMER, CUSTOMER, text="hi, I am new here")
        self.message_and_ping(CUSTOMER, NEWCOMER, text="welcome")
        walk_seconds = time.monotonic() - walk

        for name in (NEWCOMER, CUSTOMER):
            proxy = self.proxy(name)
            self.assertEqual(proxy["packets_by_path"]["direct"], direct_before[name], (name, proxy))
            self.assertGreater(proxy["packets_by_path"]["via_router"], 0, (name, proxy))
            self.check_only_router_connections(name)
        carried = self.router_bytes()
        self.assertGreater(carried[1] - carried_before[1], size)  # the upload went up the newcomer's route
        moved_seconds = self.everyone_moves_off_the_dead_server(second_port)
        # after the moves: the same user goes on, under the names it knows (the old ones included)
        direct_before = {name: self.proxy(name)["packets_by_path"]["direct"] for name in (NEWCOMER, CUSTOMER)}
        self.assertEqual(self.download_digest(NEWCOMER, remote), digest)
        self.message_and_ping(NEWCOMER, CUSTOMER, text="still there?")
        for supplier in SUPPLIERS:  # (supplier-1 takes connections: only customer-1's route reaches it)
            pong = self.api(CUSTOMER, "user_ping", user_id=self.nodes[supplier]["global_id"], timeout=15)
            self.assertTrue(pong["online"], (supplier, pong))
        for name in (NEWCOMER, CUSTOMER):
            self.assertEqual(self.proxy(name)["packets_by_path"]["direct"], direct_before[name], name)
            self.check_only_router_connections(name)
        print(f"\nNAT walkthrough with {PRIMARY} dead: network up {up_seconds:.1f}s; the new user connected "
              f"{joined_seconds:.1f}s, hired {hired_seconds:.1f}s, stored and read back {stored_seconds:.1f}s, "
              f"talked {walk_seconds:.1f}s after the kill; every node moved off it {moved_seconds:.1f}s after")

    # --- steps -------------------------------------------------------------------------------

    def everyone_moves_off_the_dead_server(self, second_port: int) -> float:
        """Every node that named the dead server as its primary moves to the live one (rotation made fast)."""
        movers = [name for name in self.nodes if name not in (PRIMARY, SECOND, NEWCOMER)]
        started = time.monotonic()
        for name in movers:
            for key, value in FAST_ROTATION.items():
                self.api(name, "config_set", key=f"services/identity-propagate/{key}", value=value)
            self.api(name, "service_restart", service_name="service_identity_propagate")
        for name in movers:
            wait_for(lambda n=name: self.api(n, "identity_get")["global_id"].endswith(f"_{second_port}"),
                     f"{name} to move to {SECOND}", timeout=40)
        return time.monotonic() - started

    def new_user_behind_nat(self) -> dict:
        """Start ``newcomer`` (a customer behind NAT, no identity yet), create its identity, wait until routed."""
        self.nodes[NEWCOMER] = self.net.add_node(NEWCOMER, roles=("customer", "behind-nat"), key_size=2048)
        created = self.api(NEWCOMER, "identity_create", username=NEWCOMER, timeout=60)
        self.nodes[NEWCOMER]["global_id"] = created["global_id"]
        wait_for(lambda: self.call(NEWCOMER, "network_connected", wait_timeout=5, timeout=10)[0] == 200,
                 f"{NEWCOMER} to be connected", timeout=CONNECT_WITHIN)
        wait_for(lambda: self.proxy(NEWCOMER)["mode"] == "routed", f"{NEWCOMER} to be routed",
                 timeout=CONNECT_WITHIN)
        return created

    def wait_hired(self, customer: str, wanted: int) -> list[str]:
        """The suppliers ``customer`` has CONNECTED once it has ``wanted`` of them."""
        def hired():
            rows = self.api(customer, "suppliers_list")
            connected = [r["supplier_id"] for r in rows if r.get("state") == "CONNECTED" and not r.get("retiring")]
            return connected if len(connected) >= wanted else None

        return wait_for(hired, f"{customer} to hire {wanted} suppliers", timeout=HIRE_WITHIN)

    def which_node(self, global_id: str) -> str:
        """The supplier that is or was ``global_id`` (else ``global_id`` itself)."""
        return next((name for name in SUPPLIERS if global_id in self.my_names(name)), global_id)

    def my_names(self, name: str) -> list[str]:
        """Every global id node ``name`` answers to (its identity's sources)."""
        identity = self.api(name, "identity_get")
        return [identity["global_id"]] + [str(globalid.idurl_to_global_id(s)) for s in identity["sources"]]
