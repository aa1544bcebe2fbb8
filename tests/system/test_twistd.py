"""System tests: ``twistd -n bitnode --basedir D`` as a real foreground process."""

from __future__ import annotations

import os
import signal
import subprocess

from tests.system.support import (
    DEADLINE,
    ProcessTestCase,
    http_get,
    pid_alive,
    port_settings,
    read_json,
    script,
    wait_for,
)


class TwistdForegroundTests(ProcessTestCase):
    """The node under ``twistd -n``, the way a supervisor runs it."""

    def start_node(self, *extra: str):
        basedir = self.make_basedir()
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        sets = [arg for item in port_settings() for arg in ("--set", item)]
        proc = self.spawn([*script("twistd"), "-n", "bitnode", "--basedir", basedir.root, *sets, *extra], cwd=cwd)
        endpoints = self.wait_endpoints(basedir, proc.pid)
        with open(basedir.api_secret_file, encoding="ascii") as handle:
            secret = handle.read().strip()
        return proc, basedir, cwd, endpoints, secret

    def assert_stops_cleanly(self, sig: int) -> None:
        proc, basedir, cwd, endpoints, secret = self.start_node()
        self.wait_ready(basedir, secret)
        self.assertTrue(endpoints["http"].startswith("http://127.0.0.1:"))
        self.assertEqual(os.stat(basedir.api_secret_file).st_mode & 0o777, 0o600)
        code, body = http_get(endpoints["http"] + "process/health/v1", secret)
        self.assertEqual((code, body["status"], body["result"]["alive"]), (200, "OK", True))
        self.assertEqual(http_get(endpoints["http"] + "process/health/v1", "wrong")[0], 401)
        # The pid file goes into the basedir (so `bitnode status` finds the node), not the working directory.
        with open(basedir.pid_file, encoding="ascii") as handle:
            self.assertEqual(int(handle.read()), proc.pid)

        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=DEADLINE)
        self.assertEqual(proc.returncode, 0, output)
        self.assertFalse(pid_alive(proc.pid))
        self.assertFalse(os.path.exists(basedir.endpoints_file))
        self.assertFalse(os.path.exists(basedir.pid_file))
        self.assertEqual(os.listdir(cwd), [])
        self.assertIn("Server Shut Down", output)
        self.assertNotIn("Traceback", output)

    def test_sigterm_stops_the_node_cleanly_with_exit_status_0(self):
        self.assert_stops_cleanly(signal.SIGTERM)

    def test_sigint_stops_the_node_cleanly_with_exit_status_0(self):
        self.assert_stops_cleanly(signal.SIGINT)

    def test_process_restart_in_the_foreground_keeps_the_pid_and_restarts(self):
        proc, basedir, _cwd, endpoints, secret = self.start_node()
        self.wait_ready(basedir, secret)
        _, info = http_get(endpoints["http"] + "process/info/v1", secret)
        first_start = info["result"]["started"]
        self.assertEqual(http_get(endpoints["http"] + "process/restart/v1", secret)[0], 200)

        def restarted():
            data = read_json(basedir.endpoints_file)
            try:
                code, again = http_get(data["http"] + "process/info/v1", secret, timeout=2.0)
            except (OSError, TypeError):
                return None  # between the two lives: no endpoints file, or nobody listening yet
            fresh = code == 200 and again["result"]["started"] != first_start and again["result"]["ready"]
            return again["result"] if fresh else None

        result = wait_for(restarted, "the node to come back with a new start time")
        self.assertEqual(result["pid"], proc.pid)
        self.assertIsNone(proc.poll())
        proc.terminate()
        output, _ = proc.communicate(timeout=DEADLINE)
        self.assertEqual(proc.returncode, 0, output)

    def test_process_stop_through_the_api_exits_with_status_0(self):
        proc, basedir, _cwd, endpoints, secret = self.start_node()
        self.wait_ready(basedir, secret)
        code, body = http_get(endpoints["http"] + "process/stop/v1", secret)
        self.assertEqual((code, body["result"]["stopping"]), (200, True))
        output, _ = proc.communicate(timeout=DEADLINE)
        self.assertEqual(proc.returncode, 0, output)
        self.assertFalse(os.path.exists(basedir.endpoints_file))

    def test_an_unknown_setting_ends_twistd_with_a_message(self):
        basedir = self.make_basedir()
        result = subprocess.run([*script("twistd"), "-n", "bitnode", "--basedir", basedir.root,
                                 "--set", "no/such-option=1"], capture_output=True, text=True, timeout=DEADLINE)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("no/such-option", result.stdout + result.stderr)
        self.assertFalse(os.path.exists(basedir.endpoints_file))

    def test_twistd_lists_the_plugin_and_its_options(self):
        result = subprocess.run([*script("twistd"), "bitnode", "--help"], capture_output=True, text=True,
                                timeout=DEADLINE)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("--basedir", result.stdout)
        self.assertIn("--set", result.stdout)
