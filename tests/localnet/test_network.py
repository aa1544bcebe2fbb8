"""LocalNet planning and ``add_node`` without starting processes (the system tests start real ones)."""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from bitnode.errors import BadRequest, Conflict, NotFound
from bitnode.localnet import network
from bitnode.localnet.network import (
    LOOPBACK,
    MAX_ID_SERVERS,
    PORT_RETRIES,
    LocalNet,
    LocalnetError,
    NodePlan,
    Placement,
    dht_peers,
    plan_network,
    suppliers_to_hire,
)
from bitnode.main import network_file
from bitnode.main.basedir import Basedir
from bitnode.main.schema import TCP_INTERFACE_KEY


class AddNodeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.net = LocalNet(self.dir, log=lambda _line: None, documented_ports=False)
        self.started = []
        self.patch(self.net, "_start", lambda plan, timeout: self.started.append(plan.name))

    def plan(self, suppliers: int = 5, customers: int = 1) -> None:
        plans = plan_network(self.dir, suppliers, customers, documented_ports=False)
        for plan in plans:
            Basedir.at(plan.basedir).create()
        self.net.save(plans)

    def test_a_new_node_gets_the_network_settings_and_no_identity(self) -> None:
        self.plan()
        entry = self.net.add_node("restored", key_size=2048)
        self.assertEqual(self.started, ["restored"])
        self.assertEqual((entry["name"], entry["roles"], entry["global_id"]), ("restored", ["customer"], None))
        self.assertEqual(self.net.node("restored").ports, entry["ports"])
        with open(Basedir.at(entry["basedir"]).settings_file) as handle:
            values = json.load(handle)["values"]
        server = self.net.node("idserver")
        self.assertNotIn("personal/identity-servers", values)  # the network file names the servers
        self.assertNotIn("services/identity-propagate/dead-after", values)  # one server: nowhere to move
        network = network_file.for_node(Basedir.at(entry["basedir"]).config)
        self.assertEqual(network.seeds, (f"127.0.0.1:{server.ports['dht']}",))
        self.assertEqual(network.identity_servers, (f"127.0.0.1:{server.ports['idserver']}",))
        self.assertEqual(network.stun_servers, (f"127.0.0.1:{server.ports['stun']}",))
        self.assertEqual(network_file.load(self.net.bitnode_network_file).lists(), network.lists())
        self.assertEqual(values["interface/api/http-port"], entry["ports"]["http"])
        self.assertEqual(values["personal/private-key-size"], 2048)
        self.assertTrue(values["services/customer/enabled"])
        self.assertEqual(values["services/customer/suppliers-number"], 4)
        self.assertNotIn(entry["ports"]["http"], [p.ports["http"] for p in self.net.load()[:-1]])

    def test_bad_names_roles_and_duplicates_are_refused(self) -> None:
        self.assertRaises(NotFound, self.net.add_node, "extra")  # no network here yet
        self.plan()
        for name in ("", "Upper", "1abc", "a/b", "x" * 33):
            self.assertRaises(BadRequest, self.net.add_node, name)
        for roles in ((), ("identity-server",), ("wizard",)):
            self.assertRaises(BadRequest, self.net.add_node, "extra", roles)
        self.assertRaises(Conflict, self.net.add_node, "supplier-1")
        self.assertEqual(self.started, [])

    def settings_of(self, name: str) -> dict:
        with open(Basedir.at(self.net.node(name).basedir).settings_file) as handle:
            return json.load(handle)["values"]

    def test_a_taken_port_is_replaced_and_the_start_tried_again(self) -> None:
        self.plan(suppliers=1)
        plans = self.net.load()
        server = plans[0]
        for plan in plans:
            self.net._write_settings(plan, plans, 2048)
        failures = [LocalnetError("node idserver: the node failed to start (twistd exit 1):\n"
                                  "CannotListenError: Couldn't listen on 127.0.0.1:4: [Errno 98] Address a")]

        def start(plan, timeout):
            self.started.append(plan.name)
            if failures:
                raise failures.pop()

        self.patch(self.net, "_start", start)
        before = dict(server.ports)
        self.net._start_on_free_ports(server, plans, 2048, 5.0)
        self.assertEqual(self.started, ["idserver", "idserver"])
        moved = self.net.node("idserver").ports
        self.assertEqual(moved["idserver"], before["idserver"])  # in every IDURL of the network: kept
        self.assertEqual(self.settings_of("idserver")["services/entangled-dht/udp-port"], moved["dht"])
        # the server's new DHT and STUN ports reach the nodes that start after it
        network = network_file.for_node(Basedir.at(self.net.node("supplier-1").basedir).config)
        self.assertEqual(network.seeds, (f"127.0.0.1:{moved['dht']}",))
        self.assertEqual(network.stun_servers, (f"127.0.0.1:{moved['stun']}",))
        self.assertEqual(self.settings_of("idserver")["services/entangled-dht/known-nodes"], [])

        # any other failure, or a port taken every time, is the user's to see
        self.started.clear()
        failures.extend([LocalnetError("node supplier-1: no identity")])
        self.assertRaises(LocalnetError, self.net._start_on_free_ports, plans[1], plans, 2048, 5.0)
        taken = LocalnetError("node supplier-1: Couldn't listen on 127.0.0.1:5")
        failures.extend([taken] * (PORT_RETRIES + 1))
        self.assertRaises(LocalnetError, self.net._start_on_free_ports, plans[1], plans, 2048, 5.0)
        self.assertEqual(len(self.started), 1 + PORT_RETRIES + 1)

    def record_up_steps(self, failing: str = "") -> list:
        """Run ``up`` with every step replaced by a recorder; ``failing`` names a node whose identity fails."""
        steps = self.steps = []

        def step(name):
            def record(plan, *args, **kwargs):
                steps.append((name, plan.name))
                if name == "identity" and plan.name == failing:
                    raise LocalnetError(f"identity_create on {plan.name} failed")
            return record

        for attribute, name in (("_start_on_free_ports", "start"), ("_ensure_identity", "identity"),
                                ("_wait_connected", "connected"), ("_wait_dht", "dht"),
                                ("_wait_services", "services"), ("_wait_suppliers", "suppliers")):
            self.patch(self.net, attribute, step(name))
        self.net.up(suppliers=3, customers=2, key_size=2048)
        return steps

    def test_up_brings_the_server_first_and_the_customers_after_the_suppliers(self) -> None:
        steps = self.record_up_steps()
        self.assertEqual(steps[:2], [("start", "idserver"), ("identity", "idserver")])
        identities = [name for step, name in steps if step == "identity"]
        self.assertEqual(sorted(identities[1:4]), ["supplier-1", "supplier-2", "supplier-3"])
        self.assertEqual(sorted(identities[4:]), ["customer-1", "customer-2"])
        # every supplier is connected and in the DHT before any customer gets an identity
        first_customer = steps.index(next(s for s in steps if s[0] == "identity" and "customer" in s[1]))
        for supplier in ("supplier-1", "supplier-2", "supplier-3"):
            self.assertLess(steps.index(("dht", supplier)), first_customer)
            self.assertLess(steps.index(("services", supplier)), first_customer)
        self.assertEqual(sorted(name for step, name in steps if step == "suppliers"), ["customer-1", "customer-2"])

    def test_several_identity_servers_start_first_and_are_all_in_the_network_file(self) -> None:
        steps = []

        def step(name):
            return lambda plan, *args, **kwargs: steps.append((name, plan.name))

        for attribute, name in (("_start_on_free_ports", "start"), ("_ensure_identity", "identity"),
                                ("_wait_connected", "connected"), ("_wait_dht", "dht"),
                                ("_wait_services", "services"), ("_wait_suppliers", "suppliers")):
            self.patch(self.net, attribute, step(name))
        self.net.up(suppliers=2, customers=1, key_size=2048, id_servers=3)
        servers = ["idserver", "idserver-2", "idserver-3"]
        self.assertEqual(sorted(name for _, name in steps[:3]), servers)
        self.assertEqual([s for s, _ in steps[:3]], ["start"] * 3)
        self.assertEqual(steps[3], ("identity", "idserver"))
        self.assertEqual(sorted(name for _, name in steps[4:6]), ["idserver-2", "idserver-3"])
        plans = self.net.load()
        self.assertEqual([p.roles for p in plans[:3]],
                         [("identity-server", "dht-seed")] * 3)
        network = network_file.load(self.net.bitnode_network_file)
        self.assertEqual(network.identity_servers, tuple(f"127.0.0.1:{p.ports['idserver']}" for p in plans[:3]))
        self.assertEqual(network.seeds, tuple(f"127.0.0.1:{p.ports['dht']}" for p in plans[:3]))
        # a later seed joins the DHT through the earlier ones, the first through nobody
        known = [self.settings_of(p.name)["services/entangled-dht/known-nodes"] for p in plans[:3]]
        self.assertEqual(known, [[], list(network.seeds[:1]), list(network.seeds[:2])])
        # with several identity servers a node leaves a dead one within about a minute
        self.assertEqual(self.settings_of("supplier-1")["services/identity-propagate/dead-after"], 45.0)
        self.assertEqual(len(network.stun_servers), 3)
        self.assertRaises(BadRequest, plan_network, self.dir, 1, 1, False, id_servers=0)
        self.assertRaises(BadRequest, plan_network, self.dir, 1, 1, False, id_servers=MAX_ID_SERVERS + 1)

    def test_a_failing_node_fails_up_after_the_others_of_its_step(self) -> None:
        err = self.assertRaises(LocalnetError, self.record_up_steps, failing="supplier-2")
        self.assertIn("supplier-2", str(err))
        self.assertEqual(sorted(name for step, name in self.steps if step == "identity"),
                         ["idserver", "supplier-1", "supplier-2", "supplier-3"])  # the others of the step ran
        self.assertNotIn("connected", [step for step, _ in self.steps])  # and nothing after it

    def test_customers_hire_at_most_four(self) -> None:
        self.assertEqual(suppliers_to_hire(plan_network(self.dir, 5, 1, False)), 4)
        self.assertEqual(suppliers_to_hire(plan_network(self.dir, 2, 1, False)), 2)
        self.assertEqual(suppliers_to_hire(plan_network(self.dir, 0, 1, False)), 0)


class WaitServicesTests(unittest.TestCase):
    """``start_node`` (and ``up``) answer once every enabled service of the node is ON."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.net = LocalNet(self.dir, log=lambda _line: None, documented_ports=False)
        plans = plan_network(self.dir, 1, 1, documented_ports=False)
        for plan in plans:
            Basedir.at(plan.basedir).create()
        self.net.save(plans)
        self.patch(self.net, "_start", lambda plan, timeout: None)
        self.answers: list[list[dict]] = []
        self.calls: list[str] = []

        def fake_api(basedir, method, timeout=60.0, **kwargs):
            self.calls.append(method)
            if method == "services_list":
                rows = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
                return 200, {"status": "OK", "result": rows}
            return 200, {"status": "OK", "result": {}}

        self.patch(network, "api", fake_api)
        self.patch(network.time, "sleep", lambda seconds: None)

    def test_a_service_still_starting_is_waited_for(self) -> None:
        self.answers = [
            [{"name": "service_gateway", "enabled": True, "state": "ON"},
             {"name": "service_private_messages", "enabled": True, "state": "STARTING"},
             {"name": "service_webhooks", "enabled": False, "state": "OFF"}],
            [{"name": "service_gateway", "enabled": True, "state": "ON"},
             {"name": "service_private_messages", "enabled": True, "state": "ON"},
             {"name": "service_webhooks", "enabled": False, "state": "OFF"}],
        ]
        self.net.start_node("customer-1", timeout=5)
        self.assertEqual(self.calls, ["network_connected", "services_list", "services_list"])

    def test_a_service_that_never_comes_on_is_named_with_its_reason(self) -> None:
        self.answers = [[{"name": "service_customer", "enabled": True, "state": "FAILED",
                          "reason": "start failed: no disk"}]]
        error = self.assertRaises(LocalnetError, self.net.start_node, "customer-1", timeout=0)
        self.assertIn("service_customer FAILED (start failed: no disk)", str(error))


class PeerPortTakenTests(unittest.TestCase):
    """A node whose TCP/DHT port was taken before its gateway bound it moves to new ports."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.net = LocalNet(self.dir, log=lambda _line: None, documented_ports=False)
        self.plans = plan_network(self.dir, 1, 0, documented_ports=False)
        for plan in self.plans:
            Basedir.at(plan.basedir).create()
            self.net._write_settings(plan, self.plans, 2048)
        self.net.save(self.plans)
        self.events: list[str] = []
        self.connected: list[bool] = []
        self.patch(self.net, "_start", lambda plan, timeout: self.events.append("start"))
        self.patch(network.control, "stop", lambda basedir, timeout=20.0: self.events.append("stop"))
        taken = {"name": "service_gateway", "state": "FAILED",
                 "reason": "Couldn't listen on 127.0.0.1:5: [Errno 98] Address already in use"}

        def fake_api(basedir, method, timeout=60.0, **kwargs):
            self.events.append(method)
            if method == "services_list":
                return 200, {"status": "OK", "result": [taken]}
            if self.connected.pop(0):
                return 200, {"status": "OK", "result": {"connected": True}}
            return 503, {"status": "ERROR", "errors": ["service_network is not running (DEPENDS_OFF)"]}

        self.patch(network, "api", fake_api)

    def test_the_node_restarts_on_new_ports_and_connects(self) -> None:
        supplier = self.plans[1]
        before = dict(supplier.ports)
        self.connected = [False, True]
        self.net._wait_connected(supplier, 5.0, self.plans, 2048)
        self.assertEqual(self.events, ["network_connected", "services_list", "stop", "start", "network_connected"])
        self.assertNotEqual(self.net.node("supplier-1").ports, before)
        with open(Basedir.at(supplier.basedir).settings_file) as handle:
            values = json.load(handle)["values"]
        self.assertEqual(values["services/tcp-connections/tcp-port"], supplier.ports["tcp"])

    def test_a_port_taken_every_time_is_reported(self) -> None:
        self.connected = [False] * (PORT_RETRIES + 1)
        error = self.assertRaises(LocalnetError, self.net._wait_connected, self.plans[1], 5.0, self.plans, 2048)
        self.assertIn("did not connect", str(error))
        self.assertEqual(self.events.count("start"), PORT_RETRIES)


class PlacementTests(unittest.TestCase):
    """Nodes placed in network namespaces at other addresses (the real-NAT system test's network)."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        self.placements = {"idserver": Placement("pub", "10.77.0.1"), "supplier-1": Placement("pub", "10.77.0.1"),
                           "customer-1": Placement("home1", "10.77.1.2"),
                           "customer-2": Placement("home2", "10.77.2.2")}

    def test_placed_nodes_listen_and_are_named_at_their_address_and_the_others_stay_on_loopback(self) -> None:
        net = LocalNet(self.dir, log=lambda _line: None, documented_ports=False)
        plans = plan_network(self.dir, 2, 2, False, placements=self.placements)
        by_name = {plan.name: plan for plan in plans}
        self.assertEqual((by_name["customer-1"].netns, by_name["customer-1"].host), ("home1", "10.77.1.2"))
        self.assertEqual((by_name["supplier-2"].netns, by_name["supplier-2"].host), (None, LOOPBACK))
        for plan in plans:
            Basedir.at(plan.basedir).create()
            net._write_settings(plan, plans, 2048)
        net.save(plans)
        server = by_name["idserver"]
        document = network_file.load(net.bitnode_network_file)
        self.assertEqual(document.identity_servers, (f"10.77.0.1:{server.ports['idserver']}",))
        self.assertEqual(document.seeds, (f"10.77.0.1:{server.ports['dht']}",))
        self.assertEqual(document.stun_servers, (f"10.77.0.1:{server.ports['stun']}",))
        with open(Basedir.at(by_name["customer-1"].basedir).settings_file) as handle:
            values = json.load(handle)["values"]
        self.assertEqual(values[TCP_INTERFACE_KEY], "10.77.1.2")
        self.assertEqual(values["services/entangled-dht/interface"], "10.77.1.2")
        with open(Basedir.at(server.basedir).settings_file) as handle:
            self.assertEqual(json.load(handle)["values"]["services/identity-server/host"], "10.77.0.1")
        with open(Basedir.at(by_name["supplier-2"].basedir).settings_file) as handle:
            self.assertNotIn(TCP_INTERFACE_KEY, json.load(handle)["values"])  # loopback: the default
        # network.json keeps the placement for the next `up`; an older file without one means loopback
        self.assertEqual({(p.name, p.netns, p.host) for p in net.load()}, {(p.name, p.netns, p.host) for p in plans})
        old = NodePlan.from_dict({"name": "a", "roles": ["supplier"], "basedir": "/x", "ports": {}})
        self.assertEqual((old.netns, old.host), (None, LOOPBACK))

    def test_placements_must_name_nodes_of_the_network(self) -> None:
        self.assertRaises(BadRequest, plan_network, self.dir, 1, 1, False,
                          placements={"customer-9": Placement("x", "10.0.0.1")})

    def test_a_node_behind_a_nat_exchanges_dht_packets_with_public_nodes_and_its_own_namespace_only(self) -> None:
        plans = plan_network(self.dir, 2, 2, False, placements=self.placements)
        by_name = {plan.name: plan for plan in plans}
        names = lambda peers: sorted(p.name for p in peers)  # noqa: E731
        self.assertEqual(names(dht_peers(by_name["customer-1"], plans, plans)), ["idserver", "supplier-1"])
        self.assertEqual(names(dht_peers(by_name["supplier-1"], plans, plans)), ["idserver"])
        # on one host (no placements) every node reaches every other
        loopback = plan_network(self.dir, 2, 2, False)
        self.assertEqual(len(dht_peers(loopback[-1], loopback, loopback)), len(loopback) - 1)
