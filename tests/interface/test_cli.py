"""Tests for bitnode.interface.cli without a running node: help, methods, exit codes.

The commands against real node processes are in tests/system/test_cli.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from bitnode.interface import cli
from bitnode.main.basedir import Basedir
from bitnode.main.fileutil import atomic_write

BUILT_IN = ("start", "stop", "status", "run", "api", "methods")


class CliTests(SynchronousTestCase):
    def setUp(self):
        self.basedir = Basedir.at(os.path.abspath(self.mktemp()))

    def run_main(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(argv))
            except SystemExit as exit_:
                code = exit_.code
        return code, out.getvalue(), err.getvalue()

    def test_help_lists_every_command_with_a_one_line_description(self):
        text = cli.make_parser().format_help()
        lines = text.splitlines()
        for name in BUILT_IN:
            line = next((line for line in lines if line.strip().startswith(name + " ")), None)
            self.assertIsNotNone(line, f"{name} missing from:\n{text}")
            self.assertGreater(len(line.split(None, 1)[1]), 10)
        self.assertIn("exit codes", text)

    def test_every_command_that_needs_a_node_takes_basedir(self):
        for name in ("start", "stop", "status", "run", "api"):
            argv = [name, "--basedir", "/x"] + (["process_health"] if name == "api" else [])
            self.assertEqual(cli.make_parser().parse_args(argv).basedir, "/x")

    def test_status_without_a_node_says_not_running_with_exit_3(self):
        code, out, _ = self.run_main("status", "--basedir", self.basedir.root)
        self.assertEqual(code, cli.EXIT_NOT_RUNNING)
        self.assertIn("not running", out)
        code, out, _ = self.run_main("status", "--basedir", self.basedir.root, "--json")
        self.assertEqual(json.loads(out)["running"], False)

    def test_api_without_a_node_exits_3_and_says_how_to_start_one(self):
        code, out, err = self.run_main("api", "process_health", "--basedir", self.basedir.root)
        self.assertEqual((code, out), (cli.EXIT_NOT_RUNNING, ""))
        self.assertIn("start --basedir", err)

    def test_api_with_a_dead_node_exits_4(self):
        self.basedir.create()
        atomic_write(self.basedir.endpoints_file, json.dumps({"http": "http://127.0.0.1:1/"}).encode())
        code, _, err = self.run_main("api", "process_health", "--basedir", self.basedir.root)
        self.assertEqual(code, cli.EXIT_UNREACHABLE)
        self.assertIn("does not answer", err)

    def test_api_usage_errors_exit_2(self):
        code, _, err = self.run_main("api", "no_such_method", "--basedir", self.basedir.root)
        self.assertEqual(code, cli.EXIT_USAGE)
        self.assertIn("bitnode methods", err)
        code, _, err = self.run_main("api", "config_get", "include_info=maybe", "--basedir", self.basedir.root)
        self.assertEqual(code, cli.EXIT_USAGE)
        self.assertIn("include_info", err)
        code, _, err = self.run_main("api", "config_get", "keyonly", "--basedir", self.basedir.root)
        self.assertEqual(code, cli.EXIT_USAGE)
        self.assertEqual(self.run_main("no-such-command")[0], 2)

    def test_start_and_run_refuse_a_bad_network_file_before_starting_anything(self):
        bad = os.path.abspath(self.mktemp())
        with open(bad, "w", encoding="utf-8") as handle:
            handle.write('{"version": 1, "stun-servers": ["stun.example.net"]}')
        for command in ("start", "run"):
            code, _, err = self.run_main(command, "--basedir", self.basedir.root, "--network", bad)
            self.assertEqual(code, cli.EXIT_ERROR)
            self.assertIn("host:port", err)
            code, _, err = self.run_main(command, "--basedir", self.basedir.root, "--network", bad + ".missing")
            self.assertEqual(code, cli.EXIT_ERROR)
            self.assertIn("cannot read", err)
        self.assertFalse(os.path.exists(self.basedir.pid_file))

    def test_stop_without_a_node_is_fine(self):
        code, out, _ = self.run_main("stop", "--basedir", self.basedir.root)
        self.assertEqual(code, cli.EXIT_OK)
        self.assertIn("not running", out)

    def test_methods_lists_filters_and_describes(self):
        code, out, _ = self.run_main("methods")
        self.assertEqual(code, 0)
        self.assertIn("process_health()  GET /process/health/v1", out)
        self.assertIn("legacy names:", out)
        code, out, _ = self.run_main("methods", "config")
        self.assertIn("config_set(key, value)  POST /config/set/v1", out)
        self.assertNotIn("process_health", out)
        code, out, _ = self.run_main("methods", "config_get")
        self.assertIn("include_info: boolean, default False", out)
        self.assertIn("bitnode api config_get key=...", out)
        code, out, _ = self.run_main("methods", "ping")
        self.assertIn("legacy name of user_ping", out)
        self.assertEqual(self.run_main("methods", "zzzz-nothing")[0], cli.EXIT_USAGE)

    def test_a_missing_extension_module_is_skipped(self):
        self.patch(cli, "EXTENSION_MODULES", ("bitnode.no_such_module_here",))
        text = cli.make_parser().format_help()
        self.assertIn("methods", text)

    def test_extension_modules_add_their_commands(self):
        self.patch(cli, "EXTENSION_MODULES", (__name__,))
        args = cli.make_parser().parse_args(["hello", "--loud"])
        self.assertEqual(args.func(args), 7)

    def test_the_helpers_other_tools_import_are_still_here(self):
        for name in ("call_api", "node_pid", "read_endpoints", "read_secret"):
            self.assertTrue(callable(getattr(cli, name)))


def add_commands(sub) -> None:
    """An extension for test_extension_modules_add_their_commands."""
    hello = sub.add_parser("hello", help="say hello")
    hello.add_argument("--loud", action="store_true")
    hello.set_defaults(func=lambda args: 7 if args.loud else 0)
