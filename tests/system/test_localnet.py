"""System test: a whole local network of real node processes, driven through `bitnode localnet` and the API.

Starting a network costs a few seconds, so one test walks through the whole
scenario on one network: an identity server, two suppliers and a customer,
2048-bit keys. (trial has no per-class set-up, hence one test.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from bitnode.interface.client import call_api
from bitnode.localnet.network import LocalNet
from bitnode.main.basedir import Basedir
from tests.system.support import pid_alive, wait_for


class LocalnetTests(SynchronousTestCase):
    """`localnet up`, the API across nodes, nicknames, stop-node/start-node, `down`."""

    def test_a_local_network_end_to_end(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="bitnode-localnet-")
        self.net = LocalNet(self.dir, log=lambda _line: None, documented_ports=False)
        self.addCleanup(self.down)
        self.data = self.net.up(suppliers=2, customers=1, key_size=2048, timeout=60)
        self.nodes = {node["name"]: node for node in self.data["nodes"]}
        self.check_network_file_tells_how_to_reach_every_node()
        self.check_nodes_reach_each_other()
        self.check_same_nickname_twice_gets_a_numbered_name_and_search_finds_both()
        self.check_stop_node_and_start_node()
        self.check_cli_status_lists_every_node()
        self.check_cli_add_node_starts_a_node_without_identity()

    def down(self) -> None:
        pids = [row["pid"] for row in self.net.status() if row["pid"]]
        self.net.down(kill=False)
        for pid in pids:
            wait_for(lambda p=pid: not pid_alive(p), f"pid {pid} to exit")

    def api(self, name: str, method: str, **kwargs) -> dict:
        code, envelope = call_api(Basedir.at(self.nodes[name]["basedir"]), method, kwargs, timeout=30)
        self.assertEqual(code, 200, (name, method, envelope))
        return envelope["result"]

    def check_network_file_tells_how_to_reach_every_node(self) -> None:
        with open(os.path.join(self.dir, "network.json")) as handle:
            data = json.load(handle)
        self.assertEqual([n["name"] for n in data["nodes"]], ["idserver", "supplier-1", "supplier-2", "customer-1"])
        for node in data["nodes"]:
            for field in ("roles", "basedir", "api_url", "ws_url", "api_secret", "pid", "global_id"):
                self.assertTrue(node[field], (node["name"], field))
            self.assertTrue(node["global_id"].startswith(node["name"] + "@127.0.0.1_"))
        status = self.net.status()
        self.assertTrue(all(row["running"] and row["ready"] for row in status), status)

    def check_nodes_reach_each_other(self) -> None:
        supplier = self.nodes["supplier-1"]["global_id"]
        pong = self.api("customer-1", "user_ping", user_id=supplier, timeout=10, retries=1)
        self.assertEqual(pong["state"], "CONNECTED")
        self.assertTrue(self.api("customer-1", "network_connected", wait_timeout=5)["connected"])
        self.api("supplier-2", "dht_value_set", key="localnet-test", value="hello")
        got = self.api("customer-1", "dht_value_get", key="localnet-test")
        self.assertEqual(got["value"], "hello")
        (seen,) = self.api("customer-1", "network_stun")
        self.assertEqual((seen["ip"], seen["port"]), ("127.0.0.1", seen["local_port"]))

    def check_same_nickname_twice_gets_a_numbered_name_and_search_finds_both(self) -> None:
        self.api("supplier-1", "config_set", key="services/private-messages/nickname", value="carol")
        wait_for(lambda: self._held("supplier-1") == "carol", "supplier-1 to hold carol")
        self.api("supplier-2", "config_set", key="services/private-messages/nickname", value="carol")
        wait_for(lambda: self._held("supplier-2") == "carol-1", "supplier-2 to hold carol-1")
        found = self.api("customer-1", "user_observe", nickname="carol", attempts=2)
        self.assertEqual([(h["nickname"], h["global_id"]) for h in found],
                         [("carol", self.nodes["supplier-1"]["global_id"]),
                          ("carol-1", self.nodes["supplier-2"]["global_id"])])
        self.assertTrue(all(h["online"] for h in found), found)
        first = self.api("customer-1", "user_search", nickname="carol")
        self.assertEqual(first["global_id"], self.nodes["supplier-1"]["global_id"])

    def _held(self, name: str) -> str:
        status = self.api(name, "service_info", service_name="service_nicknames").get("status", {})
        return status.get("nickname", "") if status.get("state") == "READY" else ""

    def check_stop_node_and_start_node(self) -> None:
        supplier = self.nodes["supplier-2"]
        self.net.stop_node("supplier-2", kill=True)
        self.assertFalse(pid_alive(supplier["pid"]))
        code, envelope = call_api(Basedir.at(self.nodes["customer-1"]["basedir"]), "user_ping",
                                  {"user_id": supplier["global_id"], "timeout": 2, "retries": 0}, timeout=30)
        self.assertNotEqual(code, 200, envelope)
        self.net.start_node("supplier-2")
        pong = self.api("customer-1", "user_ping", user_id=supplier["global_id"], timeout=10, retries=1)
        self.assertEqual(pong["state"], "CONNECTED")

    def check_cli_status_lists_every_node(self) -> None:
        bitnode = os.path.join(os.path.dirname(sys.executable), "bitnode")
        out = subprocess.run([bitnode, "localnet", "status", "--dir", self.dir], capture_output=True, text=True,
                             timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        rows = json.loads(out.stdout)
        self.assertEqual(len(rows), 4)

    def check_cli_add_node_starts_a_node_without_identity(self) -> None:
        bitnode = os.path.join(os.path.dirname(sys.executable), "bitnode")
        out = subprocess.run([bitnode, "localnet", "add-node", "spare", "--key-size", "2048", "--dir", self.dir],
                             capture_output=True, text=True, timeout=90)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("identity_recover", out.stdout)
        spare = next(plan for plan in self.net.load() if plan.name == "spare")
        code, envelope = call_api(Basedir.at(spare.basedir), "identity_get", {}, timeout=30)
        self.assertNotEqual(code, 200, envelope)  # a new machine: no identity until created or recovered
        again = subprocess.run([bitnode, "localnet", "add-node", "spare", "--dir", self.dir],
                               capture_output=True, text=True, timeout=60)
        self.assertEqual(again.returncode, 1)
        self.assertIn("already has a node", again.stderr)
