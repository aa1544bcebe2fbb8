"""System tests: the ``bitnode`` command against real daemonised nodes."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

from bitnode.interface import control
from tests.system.support import (
    DEADLINE,
    ProcessTestCase,
    pid_alive,
    port_settings,
    read_json,
    script,
    wait_for,
)


class BitnodeCommandTests(ProcessTestCase):
    """start / status / api / stop, exactly as a user types them."""

    def sets(self) -> list[str]:
        return [arg for item in port_settings() for arg in ("--set", item)]

    def start(self, basedir) -> int:
        result = self.run_cli("start", "--basedir", basedir.root, *self.sets(), "--timeout", str(DEADLINE))
        self.kill_at_cleanup(lambda: (read_json(basedir.endpoints_file) or {}).get("pid"))
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        endpoints = read_json(basedir.endpoints_file)
        self.assertIn(endpoints["http"], result.stdout)
        self.assertIn(f"bitnode api process_info --basedir {basedir.root}", result.stdout)
        self.assertIn("api_secret: $(cat", result.stdout)
        return endpoints["pid"]

    def api(self, basedir, *args: str):
        result = self.run_cli("api", *args, "--basedir", basedir.root)
        return result.returncode, json.loads(result.stdout) if result.stdout.strip() else None, result.stderr

    def test_start_status_api_restart_stop(self):
        basedir = self.make_basedir()
        pid = self.start(basedir)
        self.assertTrue(pid_alive(pid))

        again = self.run_cli("start", "--basedir", basedir.root)
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn(f"already running in {basedir.root} (pid {pid})", again.stdout)

        status = self.run_cli("status", "--basedir", basedir.root)
        self.assertEqual(status.returncode, 0, status.stderr)
        self.assertIn(f"running in {basedir.root} (pid {pid}), ready", status.stdout)
        status = self.run_cli("status", "--basedir", basedir.root, "--json")
        self.assertEqual(json.loads(status.stdout)["pid"], pid)

        code, answer, _ = self.api(basedir, "process_health")
        self.assertEqual((code, answer["status"], answer["result"]["ready"]), (0, "OK", True))
        code, answer, _ = self.api(basedir, "config_get", "key=nope")
        self.assertEqual((code, answer["status"]), (1, "ERROR"))
        self.assertIn("nope", answer["errors"][0])
        # Values are typed by the route table: a boolean here, JSON there.
        code, answer, _ = self.api(basedir, "config_set", "key=logs/api-calls", "value=true")
        self.assertEqual((code, answer["result"]["value"]), (0, True))
        code, answer, _ = self.api(basedir, "config_get", "key=logs/api-calls", "include_info=yes")
        self.assertEqual((code, answer["result"]["value"], answer["result"]["default"]), (0, True, False))
        code, _, err = self.api(basedir, "config_get", "key=logs/api-calls", "include_info=maybe")
        self.assertEqual(code, 2)
        self.assertIn("include_info", err)
        code, _, err = self.api(basedir, "no_such_method")
        self.assertEqual(code, 2)
        self.assertIn("bitnode methods", err)

        code, answer, _ = self.api(basedir, "process_info")
        first_start = answer["result"]["started"]
        code, answer, _ = self.api(basedir, "process_restart")
        self.assertEqual((code, answer["result"]["restarting"]), (0, True))

        def restarted():
            result = self.run_cli("api", "process_info", "--basedir", basedir.root, "--timeout", "2")
            if result.returncode != 0:
                return None
            info = json.loads(result.stdout)["result"]
            return info if info["started"] != first_start and info["ready"] else None

        info = wait_for(restarted, "the node to come back with a new start time")
        new_pid = info["pid"]  # daemonised twistd forks again after execv: the pid may change
        self.kill_at_cleanup(lambda: new_pid)

        stop = self.run_cli("stop", "--basedir", basedir.root)
        self.assertEqual(stop.returncode, 0, stop.stderr)
        self.assertIn(f"stopped (pid {new_pid})", stop.stdout)
        self.assertFalse(pid_alive(new_pid))
        self.assertFalse(os.path.exists(basedir.pid_file))
        self.assertFalse(os.path.exists(basedir.endpoints_file))
        self.assert_stays_stopped(basedir)

        status = self.run_cli("status", "--basedir", basedir.root)
        self.assertEqual(status.returncode, 3)
        self.assertIn("not running", status.stdout)
        code, _, err = self.api(basedir, "process_health")
        self.assertEqual(code, 3)
        self.assertIn("bitnode start", err)
        stop = self.run_cli("stop", "--basedir", basedir.root)
        self.assertEqual((stop.returncode, "not running" in stop.stdout), (0, True))

    def assert_stays_stopped(self, basedir) -> None:
        """No node process of ``basedir`` shows up for a moment (a restart could bring one back)."""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            self.assertIsNone(control.node_pid(basedir))
            time.sleep(0.1)

    def test_stop_right_after_process_restart_stops_the_node_for_good(self):
        basedir = self.make_basedir()
        self.start(basedir)
        self.kill_at_cleanup(lambda: control.node_pid(basedir))
        code, answer, _ = self.api(basedir, "process_restart")
        self.assertEqual((code, answer["result"]["restarting"]), (0, True))
        stop = self.run_cli("stop", "--basedir", basedir.root)
        self.assertEqual(stop.returncode, 0, stop.stdout + stop.stderr)
        self.assert_stays_stopped(basedir)
        self.assertEqual(self.run_cli("status", "--basedir", basedir.root).returncode, 3)

    def test_stop_kill_ends_a_hung_node(self):
        basedir = self.make_basedir()
        pid = self.start(basedir)
        os.kill(pid, signal.SIGSTOP)  # hung: accepts connections (kernel backlog) but never answers

        polite = self.run_cli("stop", "--basedir", basedir.root, "--timeout", "1")
        self.assertEqual(polite.returncode, 1, polite.stdout)
        self.assertIn("--kill", polite.stderr)
        self.assertTrue(pid_alive(pid))

        forced = self.run_cli("stop", "--basedir", basedir.root, "--timeout", "1", "--kill")
        self.assertEqual(forced.returncode, 0, forced.stderr)
        self.assertIn(f"killed (pid {pid})", forced.stdout)
        self.assertFalse(pid_alive(pid))
        self.assertFalse(os.path.exists(basedir.pid_file))
        self.assertFalse(os.path.exists(basedir.endpoints_file))
        self.assertEqual(self.run_cli("status", "--basedir", basedir.root).returncode, 3)

    def test_start_fails_clearly_when_the_api_port_is_taken(self):
        basedir = self.make_basedir()
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = self.run_cli("start", "--basedir", basedir.root, *self.sets(),
                              "--set", f"interface/api/http-port={port}", "--timeout", str(DEADLINE))
        self.kill_at_cleanup(lambda: (read_json(basedir.endpoints_file) or {}).get("pid"))
        self.assertEqual(result.returncode, 1, result.stdout)
        self.assertIn(str(port), result.stderr)
        self.assertFalse(os.path.exists(basedir.pid_file))
        self.assertEqual(self.run_cli("status", "--basedir", basedir.root).returncode, 3)

    def test_run_keeps_the_node_in_the_foreground_until_sigterm(self):
        basedir = self.make_basedir()
        proc = self.spawn([*script("bitnode"), "run", "--basedir", basedir.root, *self.sets()])
        self.wait_endpoints(basedir, proc.pid)  # `run` execs twistd: same process
        status = self.run_cli("status", "--basedir", basedir.root)
        self.assertEqual(status.returncode, 0, status.stdout)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=DEADLINE)
        self.assertEqual(proc.returncode, 0, output)
        self.assertIn("node ready", output)  # it logs to stdout
        self.assertFalse(os.path.exists(basedir.pid_file))
