"""Tests for automats.diagram: DOT rendering and the command line."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

from twisted.trial import unittest

from automats import Automat, diagram


class Connector(Automat):
    """The example machine of the design notes, drawn by these tests."""

    name = "connector"
    initial = "AT_STARTUP"
    timers = {"timer-10sec": (10.0, {"CONNECTED?"}), "timer-1min": (60.0, {"DISCONNECTED"})}
    transitions = [
        # state          event          guard            next            actions
        ("AT_STARTUP",   "init",        None,            "CONNECTED?",   ["check_network"]),
        ("CONNECTED?",   "network-ok",  None,            "CONNECTED",    ["announce_up", "log_up"]),
        ("CONNECTED?",   "timer-10sec", None,            "DISCONNECTED", ["announce_down"]),
        ("DISCONNECTED", "timer-1min",  "may_retry",     "CONNECTED?",   ["check_network"]),
        ("DISCONNECTED", "timer-1min",  "not may_retry", "DISCONNECTED", []),  # wait for the next minute
        ("*",            "shutdown",    None,            "CLOSED",       ["close_all"]),
        ("*",            "ping",        None,            "*",            []),  # answered everywhere
    ]

    def may_retry(self) -> bool:
        return True

    def check_network(self) -> None:
        pass

    def announce_up(self) -> None:
        pass

    def log_up(self) -> None:
        pass

    def announce_down(self) -> None:
        pass

    def close_all(self) -> None:
        pass


class Quoted(Automat):
    initial = 'SAY "HI"'
    transitions = [('SAY "HI"', "back\\slash", None, "DONE", [])]


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(diagram.__file__)))


class ToDotTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dot = diagram.to_dot(Connector)

    def test_is_a_named_digraph(self) -> None:
        self.assertTrue(self.dot.startswith('digraph "connector" {'))
        self.assertTrue(self.dot.rstrip().endswith("}"))

    def test_one_node_per_state(self) -> None:
        for state in Connector.states():
            self.assertEqual(self.dot.count(f'\n  "{state}" ['), 1, state)

    def test_initial_state_is_marked(self) -> None:
        self.assertIn('"__start__" -> "AT_STARTUP";', self.dot)
        self.assertIn('"AT_STARTUP" [label="AT_STARTUP", peripheries=2];', self.dot)

    def test_edge_per_row_with_event_guard_and_actions(self) -> None:
        self.assertIn('"CONNECTED?" -> "CONNECTED" [label="network-ok / announce_up, log_up"];', self.dot)
        self.assertIn('"DISCONNECTED" -> "CONNECTED?" [label="timer-1min [may_retry] / check_network"];', self.dot)
        self.assertIn('"DISCONNECTED" -> "DISCONNECTED" [label="timer-1min [not may_retry]"];', self.dot)
        self.assertEqual(self.dot.count(" -> ") - 1, len(Connector.table()))

    def test_star_rows_start_from_any_state_node(self) -> None:
        self.assertIn('"__any_state__" [label="* (any state)"', self.dot)
        self.assertIn('"__any_state__" -> "CLOSED" [label="shutdown / close_all", style=dashed];', self.dot)
        self.assertIn('"__any_state__" -> "__any_state__" [label="ping (stay)", style=dashed];', self.dot)

    def test_timers_noted_on_their_states(self) -> None:
        self.assertIn('"CONNECTED?" [label="CONNECTED?\\ntimer-10sec every 10s"];', self.dot)
        self.assertIn('"DISCONNECTED" [label="DISCONNECTED\\ntimer-1min every 60s"];', self.dot)

    def test_quotes_and_backslashes_are_escaped(self) -> None:
        dot = diagram.to_dot(Quoted)
        self.assertIn('"SAY \\"HI\\"" -> "DONE" [label="back\\\\slash"];', dot)

    def test_non_machine_is_rejected(self) -> None:
        self.assertRaises(TypeError, diagram.to_dot, int)
        self.assertRaises(TypeError, diagram.to_dot, Automat)

    def test_many_classes_become_clusters_with_separate_nodes(self) -> None:
        dot = diagram.to_dot_many([Connector, Quoted], "machines")
        self.assertTrue(dot.startswith('digraph "machines" {'))
        self.assertIn('subgraph "cluster_Connector" {', dot)
        self.assertIn('subgraph "cluster_Quoted" {', dot)
        self.assertIn('"Connector:__start__" -> "Connector:AT_STARTUP";', dot)
        self.assertIn('"Quoted:__start__" -> "Quoted:SAY \\"HI\\"";', dot)


class MainTests(unittest.TestCase):
    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def test_class_target_prints_dot(self) -> None:
        status = diagram.main(["tests.automats.test_diagram:Connector"])
        self.assertEqual((status, self.stdout.getvalue()), (0, diagram.to_dot(Connector)))

    def test_output_option_writes_file(self) -> None:
        path = self.mktemp()
        status = diagram.main(["tests.automats.test_diagram:Connector", "-o", path])
        with open(path, encoding="utf-8") as f:
            self.assertEqual((status, f.read(), self.stdout.getvalue()), (0, diagram.to_dot(Connector), ""))

    def test_module_target_draws_machines_defined_there(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "automats_sample_mod.py"), "w", encoding="utf-8") as f:
            f.write(textwrap.dedent("""\
                from automats import Automat
                from tests.automats.test_diagram import Connector  # imported: not drawn

                class Abstract(Automat):
                    pass

                class One(Automat):
                    initial = "A"
                    transitions = [("A", "go", None, "B", [])]

                class Two(Automat):
                    initial = "X"
                    transitions = [("X", "go", None, "Y", [])]
                """))
        self.patch(sys, "path", [directory, *sys.path])
        self.addCleanup(sys.modules.pop, "automats_sample_mod", None)
        status = diagram.main(["automats_sample_mod"])
        out = self.stdout.getvalue()
        self.assertEqual(status, 0)
        self.assertIn('subgraph "cluster_One"', out)
        self.assertIn('subgraph "cluster_Two"', out)
        self.assertNotIn("Connector", out)
        self.assertNotIn("Abstract", out)

    def test_load_machines_returns_module_classes_in_definition_order(self) -> None:
        self.assertEqual(diagram.load_machines("tests.automats.test_diagram"), [Connector, Quoted])

    def test_bad_targets_exit_2_with_message(self) -> None:
        for target in (
            "no.such.module_xyz",
            "tests.automats.test_diagram:Missing",
            "tests.automats.test_diagram:REPO_ROOT",
            "automats.machine",  # defines only the abstract base
        ):
            self.assertEqual(diagram.main([target]), 2, target)
            self.assertIn(target, self.stderr.getvalue())

    def test_svg_without_graphviz_reports_and_fails(self) -> None:
        self.patch(diagram, "find_dot", lambda: None)
        status = diagram.main(["tests.automats.test_diagram:Connector", "--svg", self.mktemp()])
        self.assertEqual(status, 3)
        self.assertIn("'dot' is not installed", self.stderr.getvalue())
        self.assertIn("digraph", self.stdout.getvalue())

    def test_svg_runs_dot_with_the_source(self) -> None:
        fake_dot = self.mktemp()
        with open(fake_dot, "w", encoding="utf-8") as f:
            # Stands in for Graphviz: called as `dot -Tsvg -o FILE`, copies stdin to FILE.
            f.write(f"#!{sys.executable}\nimport sys\nopen(sys.argv[3], 'wb').write(sys.stdin.buffer.read())\n")
        os.chmod(fake_dot, 0o755)
        self.patch(diagram, "find_dot", lambda: fake_dot)
        svg = self.mktemp()
        status = diagram.main(["tests.automats.test_diagram:Connector", "--svg", svg])
        with open(svg, encoding="utf-8") as f:
            self.assertEqual((status, f.read()), (0, diagram.to_dot(Connector)))

    def test_svg_reports_graphviz_failure(self) -> None:
        self.patch(diagram, "find_dot", lambda: "/bin/false")
        status = diagram.main(["tests.automats.test_diagram:Connector", "--svg", self.mktemp()])
        self.assertEqual(status, 1)
        self.assertIn("dot failed", self.stderr.getvalue())


class SubprocessTests(unittest.TestCase):
    def test_python_dash_m_prints_dot(self) -> None:
        env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        result = subprocess.run(
            [sys.executable, "-m", "automats.diagram", "tests.automats.test_diagram:Connector"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False,
        )
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(result.stdout, diagram.to_dot(Connector))
