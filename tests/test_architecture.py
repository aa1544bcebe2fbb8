"""The import graph is the design: layers as DESIGN.md names them, no cycle, no service found by a string.

The rules and the map live in ``scripts/architecture.py``; this checks the code
against them and that ``docs/architecture.md`` (generated from the code) is current.
"""

from __future__ import annotations

import functools
import os
import re

from twisted.trial import unittest

from tests.scripts import load_script

arch = load_script("architecture.py", "architecture_script")


@functools.lru_cache(maxsize=1)
def _graph() -> dict:
    """The import graph, read once per run (parsing every module takes a moment)."""
    return arch.import_graph()


class ImportGraphTests(unittest.TestCase):
    def setUp(self) -> None:
        self.graph = _graph()

    def test_every_package_has_a_layer(self) -> None:
        unplaced = sorted({arch.package_of(module) for module in self.graph} - set(arch.LAYER_OF))
        self.assertEqual(unplaced, [], "add the new package to scripts/architecture.py LAYERS (and DESIGN.md)")

    def test_no_import_from_a_lower_layer_to_a_higher_one(self) -> None:
        self.assertEqual(arch.upward_imports(self.graph), [])

    def test_no_cycle_between_packages(self) -> None:
        self.assertEqual(arch.cycles(arch.package_edges(self.graph)), [])

    def test_the_node_imports_nothing_from_the_interface(self) -> None:
        self.assertEqual(sorted(t for t in self.graph["bitnode.node"] if t.startswith("bitnode.interface")), [])

    def test_no_helper_is_taken_from_another_domains_service_module(self) -> None:
        """Only the composition root, the API and services that declare a neighbour import a ``*_service`` module."""
        sideways = [f"{module} imports {target}" for module, targets in sorted(self.graph.items())
                    for target in sorted(targets)
                    if target.endswith("_service") and arch.package_of(target) != arch.package_of(module)
                    and not module.endswith("_service")
                    and arch.package_of(module) not in ("bitnode.app", "bitnode.interface", "scripts")]
        self.assertEqual(sideways, [])

    def test_the_checks_find_what_they_are_meant_to(self) -> None:
        graph = {"bitnode.storage.x": {"bitnode.access.y"}, "bitnode.access.y": {"bitnode.storage.x"}}
        self.assertEqual(arch.upward_imports(graph),
                         ["bitnode.storage.x (storage and market) imports bitnode.access.y (social)"])
        self.assertEqual(arch.cycles(arch.package_edges(graph)), [["bitnode.access", "bitnode.storage"]])


class ServiceLookupTests(unittest.TestCase):
    """No service finds another by a name string: dependencies are declared on the classes."""

    LOOKUP = re.compile(r"service_driver\.(get|is_on|names)\(|\bdepends_on\b|running_service\(")
    #: The driver itself, and the API methods that take a service name from the user (service_start ...).
    ALLOWED = {os.path.join("bitnode", "services", "driver.py"), os.path.join("bitnode", "interface", "api.py")}

    def test_no_lookup_by_name_outside_the_driver(self) -> None:
        found = []
        for folder, _, files in os.walk(os.path.join(arch.REPO, "bitnode")):
            for name in files:
                path = os.path.join(folder, name)
                relative = os.path.relpath(path, arch.REPO)
                if name.endswith(".py") and relative not in self.ALLOWED:
                    with open(path, encoding="utf-8") as handle:
                        for number, line in enumerate(handle, 1):
                            if self.LOOKUP.search(line):
                                found.append(f"{relative}:{number}: {line.strip()}")
        self.assertEqual(found, [])


class ArchitectureDocTests(unittest.TestCase):
    def test_docs_architecture_md_is_current(self) -> None:
        with open(arch.DEFAULT_OUT, encoding="utf-8") as handle:
            written = handle.read()
        self.assertEqual(written, arch.render(_graph()), "docs/architecture.md is out of date: run make docs")

    def test_every_hop_of_the_upload_path_exists(self) -> None:
        self.assertEqual([problem for problem in map(arch.check_hop, arch.UPLOAD_PATH) if problem], [])

    def test_the_map_names_every_service_with_its_dependencies(self) -> None:
        from bitnode.app import SERVICES

        text = arch.render(_graph())
        for cls in SERVICES:
            self.assertIn(f"| `{cls.name}` | `{cls.__name__}`", text)
        self.assertIn("suppliers: SupplierProvider (port) → `service_customer`", text)
        self.assertIn("`file_upload_start`", text)

    def test_check_mode_says_whether_the_file_is_current(self) -> None:
        graph = _graph()
        self.patch(arch, "import_graph", lambda: graph)  # read once per run
        out = self.mktemp()
        self.assertEqual(arch.main(["--out", out, "--check"]), 1)
        self.assertEqual(arch.main(["--out", out]), 0)
        self.assertEqual(arch.main(["--out", out, "--check"]), 0)
