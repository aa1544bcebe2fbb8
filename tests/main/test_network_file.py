"""Tests for bitnode.main.network_file: parsing, the shipped file, installing, and settings defaults."""

from __future__ import annotations

import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from bitnode.main import network_file
from bitnode.main.network_file import BadNetworkFile, NetworkFile
from bitnode.main.schema import SCHEMA
from bitnode.main.settings import Settings


def document(**values) -> bytes:
    data = {"version": 1, "name": "test net"}
    data.update(values)
    return json.dumps(data).encode("utf-8")


class ParseTests(SynchronousTestCase):
    def test_a_full_file_is_read_with_duplicates_dropped_in_order(self):
        network = network_file.parse(document(**{
            "identity-servers": ["id1.example.net:8084", "127.0.0.1:9000", "id1.example.net:8084"],
            "seeds": ["127.0.0.1:14441"], "stun-servers": ["stun.example.net:3478"]}))
        self.assertEqual(network.name, "test net")
        self.assertEqual(network.identity_servers, ("id1.example.net:8084", "127.0.0.1:9000"))
        self.assertEqual(network.seeds, ("127.0.0.1:14441",))
        self.assertEqual(network.stun_servers, ("stun.example.net:3478",))

    def test_lists_may_be_missing_or_empty(self):
        network = network_file.parse(b'{"version": 1}')
        self.assertEqual(network.lists(), {"identity-servers": (), "seeds": (), "stun-servers": ()})

    def test_bad_files_are_refused_with_the_reason(self):
        cases = {
            b"not json": "not JSON",
            b"[]": "JSON object",
            b'{"version": 2}': "version",
            document(extra=1): "unknown key",
            document(seeds="127.0.0.1:1"): "must be a list",
            document(seeds=["127.0.0.1"]): "host:port",
            document(seeds=["127.0.0.1:0"]): "host:port",
            document(seeds=["127.0.0.1:070"]): "host:port",
            document(seeds=["Bad_Host:80"]): "host:port",
            document(seeds=[17]): "host:port",
            document(seeds=[f"127.0.0.1:{1000 + n}" for n in range(65)]): "more than",
            document(name="x\n"): "network name",
            b"[" * 10 + b"]" * 10: "nested",
        }
        for data, reason in cases.items():
            err = self.assertRaises(BadNetworkFile, network_file.parse, data)
            self.assertIn(reason, str(err), data)

    def test_a_file_round_trips(self):
        network = NetworkFile("n", ("a.example:1",), ("127.0.0.1:2",), ("b.example:3",))
        again = network_file.parse(network.to_json())
        self.assertEqual(again.lists(), network.lists())
        self.assertEqual(again.name, "n")

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300))
    def test_random_bytes_raise_only_bad_network_file(self, data):
        try:
            network_file.parse(data)
        except BadNetworkFile:
            pass

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(st.sampled_from(["version", "name", "seeds", "stun-servers", "identity-servers", "x"]),
                           st.one_of(st.integers(), st.text(max_size=20), st.lists(st.text(max_size=30), max_size=5),
                                     st.none())))
    def test_mutated_documents_raise_only_bad_network_file(self, data):
        try:
            network = network_file.parse(json.dumps(data).encode("utf-8"))
        except BadNetworkFile:
            return
        for values in network.lists().values():
            for value in values:
                network_file.parse_host_port(value)


class ShippedAndInstalledTests(SynchronousTestCase):
    def test_the_shipped_file_is_valid_and_names_no_servers_yet(self):
        network = network_file.load(network_file.shipped_path())
        self.assertEqual(network.lists(), {"identity-servers": (), "seeds": (), "stun-servers": ()})

    def test_a_node_without_its_own_file_uses_the_shipped_one(self):
        config = self.mktemp()
        os.makedirs(config)
        self.assertEqual(network_file.for_node(config).path, network_file.shipped_path())

    def test_install_validates_then_writes_the_node_file(self):
        config = os.path.join(self.mktemp(), "config")
        source = self.mktemp()
        with open(source, "wb") as handle:
            handle.write(document(seeds=["127.0.0.1:5"]))
        installed = network_file.install(config, source)
        self.assertEqual(installed.path, network_file.installed_path(config))
        self.assertEqual(network_file.for_node(config).seeds, ("127.0.0.1:5",))
        with open(source, "wb") as handle:
            handle.write(b'{"version": 1, "seeds": ["nope"]}')
        self.assertRaises(BadNetworkFile, network_file.install, config, source)
        self.assertEqual(network_file.for_node(config).seeds, ("127.0.0.1:5",))  # the good one is kept
        err = self.assertRaises(BadNetworkFile, network_file.install, config, source + ".missing")
        self.assertIn("cannot read", str(err))

    def test_a_broken_installed_file_is_an_error_not_a_silent_fallback(self):
        config = self.mktemp()
        os.makedirs(config)
        with open(network_file.installed_path(config), "wb") as handle:
            handle.write(b"{")
        err = self.assertRaises(BadNetworkFile, network_file.for_node, config)
        self.assertIn(network_file.installed_path(config), str(err))


class SettingsDefaultsTests(SynchronousTestCase):
    """The network file's lists are the defaults of three settings; an explicit setting wins."""

    def make(self, path: str) -> Settings:
        network = NetworkFile("n", ("127.0.0.1:8084",), ("127.0.0.1:14441",), ("127.0.0.1:3478",))
        return Settings(path, SCHEMA, defaults=network.setting_defaults())

    def test_network_values_are_defaults_and_explicit_values_win(self):
        path = self.mktemp()
        settings = self.make(path)
        self.assertEqual(settings.get("personal/identity-servers"), ["127.0.0.1:8084"])
        self.assertEqual(settings.get("services/entangled-dht/known-nodes"), ["127.0.0.1:14441"])
        self.assertEqual(settings.get("services/stun-client/servers"), ["127.0.0.1:3478"])
        self.assertEqual(settings.describe("services/stun-client/servers", True)["default"], ["127.0.0.1:3478"])
        settings.set("services/stun-client/servers", [])
        self.assertEqual(self.make(path).get("services/stun-client/servers"), [])
        # set back to the network's value: the setting follows the network file again
        settings.set("services/stun-client/servers", ["127.0.0.1:3478"])
        with open(path, encoding="utf-8") as handle:
            self.assertNotIn("services/stun-client/servers", json.load(handle)["values"])
