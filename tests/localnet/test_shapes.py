"""localnet shapes: routers and nodes behind NAT (planning, settings, start order) without processes."""

from __future__ import annotations

import json
import os

from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.localnet import network
from bitnode.localnet.network import LocalNet, plan_network
from bitnode.main.basedir import Basedir


class PlanTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())

    def roles(self, **shape) -> dict:
        return {plan.name: plan.roles for plan in plan_network(self.dir, 3, 2, False, **shape)}

    def test_the_last_suppliers_and_the_customers_asked_for_are_behind_nat_with_one_router(self) -> None:
        roles = self.roles(suppliers_behind_nat=2, customers_behind_nat=2)
        self.assertEqual(roles["router-1"], ("router",))
        self.assertNotIn("router-2", roles)
        self.assertEqual(roles["supplier-1"], ("supplier",))
        self.assertEqual([roles[f"supplier-{i}"] for i in (2, 3)], [("supplier", "behind-nat")] * 2)
        self.assertEqual([roles[f"customer-{i}"] for i in (1, 2)], [("customer", "behind-nat")] * 2)
        self.assertEqual(roles["idserver"], ("identity-server", "dht-seed"))

    def test_no_router_unless_asked_or_needed(self) -> None:
        self.assertFalse([name for name in self.roles() if name.startswith("router")])
        self.assertEqual(sorted(n for n in self.roles(routers=2) if n.startswith("router")), ["router-1", "router-2"])
        self.assertEqual(sorted(n for n in self.roles(routers=3, customers_behind_nat=1)
                                if n.startswith("router")), ["router-1", "router-2", "router-3"])

    def test_impossible_shapes_are_refused(self) -> None:
        for shape in ({"suppliers_behind_nat": 4}, {"customers_behind_nat": 3}, {"suppliers_behind_nat": -1},
                      {"routers": 0, "customers_behind_nat": 1}, {"routers": 9}, {"routers": -1}):
            self.assertRaises(BadRequest, plan_network, self.dir, 3, 2, False, **shape)

    def test_nodes_behind_nat_do_not_listen_and_routers_route(self) -> None:
        plans = {plan.name: plan for plan in plan_network(self.dir, 2, 1, False, suppliers_behind_nat=1,
                                                          customers_behind_nat=1)}
        natted = network.node_settings(plans["customer-1"], 2048)
        self.assertEqual((natted["services/gateway/listen"], natted["services/proxy-transport/reachable"]),
                         (False, "no"))
        self.assertTrue(natted["services/customer/enabled"])
        self.assertTrue(network.node_settings(plans["supplier-2"], 2048)["services/supplier/enabled"])
        self.assertNotIn("services/gateway/listen", network.node_settings(plans["supplier-1"], 2048))
        router = network.node_settings(plans["router-1"], 2048)
        self.assertTrue(router["services/proxy-server/enabled"])
        self.assertNotIn("services/supplier/enabled", router)


class UpOrderTests(unittest.TestCase):
    """Routers start and advertise themselves before any other node gets an identity."""

    def test_routers_come_right_after_the_identity_server_and_are_waited_for(self) -> None:
        directory = os.path.abspath(self.mktemp())
        net = LocalNet(directory, log=lambda _line: None, documented_ports=False)
        steps = []

        def step(name):
            return lambda plan, *args, **kwargs: steps.append((name, plan.name))

        for attribute, name in (("_start_on_free_ports", "start"), ("_ensure_identity", "identity"),
                                ("_wait_connected", "connected"), ("_wait_dht", "dht"),
                                ("_wait_services", "services"), ("_wait_suppliers", "suppliers"),
                                ("_wait_advertised", "advertised")):
            self.patch(net, attribute, step(name))
        net.up(suppliers=2, customers=1, key_size=2048, suppliers_behind_nat=1, customers_behind_nat=1)
        identities = [name for kind, name in steps if kind == "identity"]
        self.assertEqual(identities[:2], ["idserver", "router-1"])
        self.assertLess(steps.index(("services", "router-1")), steps.index(("identity", "supplier-1")))
        self.assertIn(("advertised", "router-1"), steps)
        saved = json.load(open(net.network_file, encoding="utf-8"))
        roles = {node["name"]: node["roles"] for node in saved["nodes"]}
        self.assertEqual((roles["router-1"], roles["supplier-2"], roles["customer-1"]),
                         (["router"], ["supplier", "behind-nat"], ["customer", "behind-nat"]))
        stored = json.load(open(Basedir.at(os.path.join(directory, "customer-1")).settings_file, encoding="utf-8"))
        self.assertFalse(stored["values"]["services/gateway/listen"])

    def test_waiting_for_a_router_reads_its_proxy_section(self) -> None:
        directory = os.path.abspath(self.mktemp())
        net = LocalNet(directory, log=lambda _line: None, documented_ports=False)
        plan = next(p for p in plan_network(directory, 1, 1, False, routers=1) if p.name == "router-1")
        answers = [{}, {"proxy": {"server": {"layer_joined": False}}}, {"proxy": {"server": {"layer_joined": True}}}]
        self.patch(network, "api", lambda basedir, method, timeout=60.0, **kw: (200, {"result": answers.pop(0)}))
        self.patch(network.time, "sleep", lambda seconds: None)
        net._wait_advertised(plan, 5.0)
        self.assertEqual(answers, [])
