"""Tests for scripts/gen_docs.py: the generated API reference, OpenAPI file and automat diagrams."""

from __future__ import annotations

import io
import json
import os
import sys
import textwrap
from contextlib import redirect_stderr, redirect_stdout

from twisted.trial import unittest

from automats.diagram import to_dot
from bitnode.interface.api import API
from bitnode.interface.dispatch import Dispatcher
from bitnode.interface.routes import LEGACY, ROUTES
from tests.scripts import load_script

gen_docs = load_script("gen_docs.py", "bitnode_gen_docs_under_test")

MACHINE_SOURCE = textwrap.dedent('''
    from automats import Automat


    class Lamp(Automat):
        name = "lamp"
        initial = "OFF"
        timers = {"timer-1min": (60.0, {"ON"})}
        transitions = [
            ("OFF", "switch", None, "ON", ["light"]),
            ("ON", "switch", None, "OFF", []),
            ("ON", "timer-1min", None, "OFF", []),
        ]

        def light(self):
            pass
''')


def _section(text: str, name: str) -> str:
    """The text of the ``### name`` section of api.md."""
    start = text.index(f"\n### {name}\n")
    end = text.find("\n### ", start + 1)
    return text[start:end if end != -1 else len(text)]


def _tree(root: str) -> dict:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                out[os.path.relpath(path, root)] = handle.read()
    return out


class FakePackageMixin:
    """A throw-away package on sys.path holding one machine module (and optionally a broken one)."""

    def make_package(self, broken: bool = False) -> str:
        root = self.mktemp()
        name = "gendocs_fixture_" + str(abs(hash(root)))
        os.makedirs(os.path.join(root, name, "sub"))
        files = {"__init__.py": "", "sub/__init__.py": "", "sub/lamp.py": MACHINE_SOURCE,
                 "plain.py": "VALUE = 1\n"}
        if broken:
            files["broken.py"] = "raise RuntimeError('half-written module')\n"
        for rel, text in files.items():
            with open(os.path.join(root, name, rel), "w", encoding="utf-8") as handle:
                handle.write(text)
        sys.path.insert(0, root)
        self.addCleanup(sys.path.remove, root)
        self.addCleanup(self._forget_modules, name)
        return name

    @staticmethod
    def _forget_modules(name: str) -> None:
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            del sys.modules[module]


class ApiReferenceTests(unittest.TestCase):
    """docs/api.md and docs/openapi.json generated for the real route table."""

    def setUp(self):
        self.text = gen_docs.render_api_md(Dispatcher(API).is_implemented)

    def test_every_route_name_appears_with_its_path(self):
        for route in ROUTES:
            self.assertIn(f"\n### {route.name}\n", self.text)
            self.assertIn(f"`{route.verb} /{route.path}`", _section(self.text, route.name))

    def test_every_legacy_name_appears(self):
        for alias in LEGACY:
            self.assertIn(f"| `{alias.name}` |", self.text)

    def test_process_health_is_marked_implemented(self):
        self.assertIn("**implemented**", _section(self.text, "process_health"))

    def test_marks_follow_the_dispatcher_check(self):
        text = gen_docs.render_api_md(lambda target: target.name == "process_info")
        self.assertIn("**implemented**", _section(text, "process_info"))
        self.assertIn("**501 not implemented yet**", _section(text, "process_health"))

    def test_each_method_says_what_bitnode_does_from_its_docstring(self):
        section = _section(self.text, "message_send")
        self.assertIn("> **In bitnode:** Send an encrypted private message", section)
        self.assertIn("queued on the recipient's suppliers", section)
        for route in ROUTES:
            self.assertIn("**In bitnode:**", _section(self.text, route.name), route.name)

    def test_parameters_show_type_default_and_aliases(self):
        section = _section(self.text, "customer_reject")
        self.assertIn("| `customer_id` | string | required | `idurl` |", section)
        self.assertIn("| `include_info` | boolean | `false` |", _section(self.text, "config_get"))

    def test_explains_envelope_authentication_and_websocket(self):
        for needle in ('"status": "OK"', '"status": "ERROR"', "api_secret: <token>", "?api_secret=",
                       '"command": "api_call"', '"type": "event"'):
            self.assertIn(needle, self.text)

    def test_routes_are_grouped_by_area_in_table_order(self):
        self.assertLess(self.text.index("\n## Process\n"), self.text.index("\n## Settings\n"))
        self.assertLess(self.text.index("\n## Settings\n"), self.text.index("\n### config_get\n"))


class GenerateTests(FakePackageMixin, unittest.TestCase):
    """generate() writing a whole docs tree."""

    def test_the_bitnode_package_generates_without_problems(self):
        out = self.mktemp()
        _, problems = gen_docs.generate(out, "bitnode", dot=None)
        self.assertEqual(problems, [])
        with open(os.path.join(out, "api.md"), encoding="utf-8") as handle:
            text = handle.read()
        for route in ROUTES:
            self.assertIn(f"### {route.name}\n", text)
        self.assertTrue(os.path.exists(os.path.join(out, "automats", "README.md")))

    def test_writes_api_openapi_and_diagrams(self):
        package = self.make_package()
        out = self.mktemp()
        written, problems = gen_docs.generate(out, package, dot=None)
        self.assertEqual(problems, [])
        with open(os.path.join(out, "openapi.json"), encoding="utf-8") as handle:
            doc = json.load(handle)
        self.assertTrue({"/" + r.path for r in ROUTES}.issubset(doc["paths"]))
        self.assertTrue(doc["paths"]["/process/health/v1"]["get"]["x-implemented"])
        lamp = sys.modules[package + ".sub.lamp"].Lamp
        with open(os.path.join(out, "automats", "lamp.dot"), encoding="utf-8") as handle:
            self.assertEqual(handle.read(), to_dot(lamp))
        with open(os.path.join(out, "automats", "README.md"), encoding="utf-8") as handle:
            readme = handle.read()
        self.assertIn(f"`{package}.sub.lamp.Lamp`", readme)
        self.assertIn("Graphviz `dot` was not installed", readme)
        self.assertIn(os.path.join(out, "api.md"), written)

    def test_running_twice_gives_identical_files_and_rewrites_nothing(self):
        package = self.make_package()
        out = self.mktemp()
        gen_docs.generate(out, package, dot=None)
        first = _tree(out)
        stamps = {p: os.stat(os.path.join(out, p)).st_mtime_ns for p in first}
        gen_docs.generate(out, package, dot=None)
        self.assertEqual(_tree(out), first)
        self.assertEqual({p: os.stat(os.path.join(out, p)).st_mtime_ns for p in first}, stamps)
        other = self.mktemp()
        gen_docs.generate(other, package, dot=None)
        self.assertEqual(_tree(other), first)

    def test_stale_diagrams_are_removed(self):
        package = self.make_package()
        out = self.mktemp()
        os.makedirs(os.path.join(out, "automats"))
        for name in ("gone.dot", "gone.svg"):
            with open(os.path.join(out, "automats", name), "w") as handle:
                handle.write("old")
        gen_docs.generate(out, package, dot=None)
        self.assertEqual(sorted(os.listdir(os.path.join(out, "automats"))), ["README.md", "lamp.dot"])

    def test_a_module_that_fails_to_import_is_reported_and_the_rest_still_written(self):
        package = self.make_package(broken=True)
        out = self.mktemp()
        _, problems = gen_docs.generate(out, package, dot=None)
        self.assertEqual(len(problems), 1)
        self.assertIn("broken: RuntimeError: half-written module", problems[0])
        self.assertTrue(os.path.exists(os.path.join(out, "automats", "lamp.dot")))

    def test_svg_is_rendered_beside_the_dot_when_dot_exists(self):
        package = self.make_package()
        fake_dot = self._script("#!/bin/sh\n# args: -Tsvg -o OUT IN\ncp \"$4\" \"$3\"\n")
        out = self.mktemp()
        _, problems = gen_docs.generate(out, package, dot=fake_dot)
        self.assertEqual(problems, [])
        folder = os.path.join(out, "automats")
        self.assertEqual(sorted(os.listdir(folder)), ["README.md", "lamp.dot", "lamp.svg"])
        with open(os.path.join(folder, "README.md"), encoding="utf-8") as handle:
            readme = handle.read()
        self.assertIn("[lamp.svg](lamp.svg)", readme)
        self.assertNotIn("not installed", readme)

    def test_a_failing_dot_is_reported(self):
        package = self.make_package()
        fake_dot = self._script("#!/bin/sh\necho 'syntax error' >&2\nexit 1\n")
        _, problems = gen_docs.generate(self.mktemp(), package, dot=fake_dot)
        self.assertEqual(problems, ["lamp.svg: syntax error"])

    def test_no_machines_says_so(self):
        package = self.make_package()
        out = self.mktemp()
        gen_docs.generate(out, package + ".plain", dot=None)
        with open(os.path.join(out, "automats", "README.md"), encoding="utf-8") as handle:
            self.assertIn("No state machines", handle.read())

    def test_main_writes_into_out_and_exits_zero(self):
        package = self.make_package()
        out = self.mktemp()
        stdout, stderr = io.StringIO(), io.StringIO()
        with redirect_stdout(stdout), redirect_stderr(stderr):
            status = gen_docs.main(["--out", out, "--package", package])
        self.assertEqual(status, 0, stderr.getvalue())
        self.assertTrue(os.path.exists(os.path.join(out, "api.md")))

    def test_main_exits_one_when_a_module_is_broken(self):
        package = self.make_package(broken=True)
        stderr = io.StringIO()
        with redirect_stdout(io.StringIO()), redirect_stderr(stderr):
            status = gen_docs.main(["--out", self.mktemp(), "--package", package])
        self.assertEqual(status, 1)
        self.assertIn("half-written module", stderr.getvalue())

    def _script(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, 0o755)
        return path
