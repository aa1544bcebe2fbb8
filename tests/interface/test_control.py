"""Tests for bitnode.interface.control with stand-in processes (real node processes: tests/system)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from bitnode.interface import control
from bitnode.main import netns
from bitnode.main.basedir import Basedir
from bitnode.main.fileutil import atomic_write
from tests.main.test_netns import scratch_netns

# A process whose command line mentions bitnode, as a node's does; it prints once its handlers are set.
STAND_IN = "import signal, sys, time; {setup}; print('up', flush=True); time.sleep(30)"


class ControlTests(SynchronousTestCase):
    def setUp(self):
        self.basedir = Basedir.at(os.path.abspath(self.mktemp()))
        self.basedir.create()

    def spawn(self, *, ignore_term: bool = False, name: str = "bitnode") -> subprocess.Popen:
        setup = "signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignore_term else "pass"
        proc = subprocess.Popen([sys.executable, "-c", STAND_IN.format(setup=setup), name],
                                stdout=subprocess.PIPE, text=True)
        self.addCleanup(lambda: (proc.kill(), proc.wait(), proc.stdout.close()))
        self.assertEqual(proc.stdout.readline().strip(), "up")
        return proc

    def write_pid(self, pid) -> None:
        atomic_write(self.basedir.pid_file, str(pid).encode())

    def test_node_pid_needs_a_live_process_that_looks_like_a_node(self):
        self.assertIsNone(control.node_pid(self.basedir))
        self.write_pid("garbage")
        self.assertIsNone(control.node_pid(self.basedir))
        node = self.spawn()
        self.write_pid(node.pid)
        self.assertEqual(control.node_pid(self.basedir), node.pid)
        stranger = self.spawn(name="something-else")
        self.write_pid(stranger.pid)  # a stale pid file whose pid was reused
        self.assertIsNone(control.node_pid(self.basedir))

    def test_a_zombie_is_not_running(self):
        node = self.spawn()
        self.write_pid(node.pid)
        node.kill()  # not reaped yet: a zombie
        self.assertTrue(control.wait_gone(node.pid, 5.0))
        self.assertIsNone(control.node_pid(self.basedir))

    def test_remove_stale_files_keeps_the_files_of_a_live_node(self):
        node = self.spawn()
        self.write_pid(node.pid)
        atomic_write(self.basedir.endpoints_file, b"{}")
        control.remove_stale_files(self.basedir)
        self.assertTrue(os.path.exists(self.basedir.pid_file))
        node.kill()
        node.wait()
        control.remove_stale_files(self.basedir)
        self.assertFalse(os.path.exists(self.basedir.pid_file))
        self.assertFalse(os.path.exists(self.basedir.endpoints_file))

    def test_twistd_command_lines(self):
        daemon = control.twistd_command(self.basedir, settings=["a=1", "b=2"])
        self.assertEqual(daemon[:3], [sys.executable, "-m", "bitnode.main.twistd_main"])
        self.assertIn(self.basedir.log_file, daemon)
        self.assertNotIn("--nodaemon", daemon)
        self.assertEqual(daemon[-4:], ["--set", "a=1", "--set", "b=2"])
        self.assertEqual(daemon[daemon.index("bitnode") + 1:daemon.index("bitnode") + 3],
                         ["--basedir", self.basedir.root])
        foreground = control.twistd_command(self.basedir, foreground=True)
        self.assertIn("--nodaemon", foreground)
        self.assertNotIn(self.basedir.log_file, foreground)
        self.assertIn(self.basedir.pid_file, foreground)
        with_network = control.twistd_command(self.basedir, network="net.json")
        self.assertEqual(with_network[-2:], ["--network", os.path.abspath("net.json")])

    def test_start_leaves_a_running_node_alone(self):
        node = self.spawn()
        self.write_pid(node.pid)
        atomic_write(self.basedir.endpoints_file, json.dumps({"http": "http://127.0.0.1:1/"}).encode())
        started = control.start(self.basedir)
        self.assertEqual((started.pid, started.already_running), (node.pid, True))
        self.assertEqual(started.endpoints["http"], "http://127.0.0.1:1/")

    def test_wait_ready_gives_up_when_the_node_is_gone(self):
        atomic_write(self.basedir.log_file, b"line 1\nthe reason it died\n")
        err = self.assertRaises(control.ControlError, control.wait_ready, self.basedir, 5.0)
        self.assertIn("exited during start-up", str(err))
        self.assertIn("the reason it died", str(err))

    def test_wait_ready_gives_up_after_the_timeout(self):
        node = self.spawn()
        self.write_pid(node.pid)
        err = self.assertRaises(control.ControlError, control.wait_ready, self.basedir, 0.2)
        self.assertIn("not ready within", str(err))

    def test_stop_when_nothing_runs_cleans_up(self):
        self.write_pid(999999999)
        self.assertEqual(control.stop(self.basedir), (None, "not-running"))
        self.assertFalse(os.path.exists(self.basedir.pid_file))

    def test_stop_sends_sigterm_when_the_api_does_not_answer(self):
        node = self.spawn()
        self.write_pid(node.pid)
        self.assertEqual(control.stop(self.basedir, timeout=5.0), (node.pid, "terminated"))

    def test_stop_fails_on_a_node_ignoring_sigterm_unless_kill(self):
        node = self.spawn(ignore_term=True)
        self.write_pid(node.pid)
        err = self.assertRaises(control.ControlError, control.stop, self.basedir, 0.2)
        self.assertIn("--kill", str(err))
        self.assertEqual(control.stop(self.basedir, timeout=0.2, kill=True), (node.pid, "killed"))
        self.assertFalse(os.path.exists(self.basedir.pid_file))


class CommandLineScanTests(SynchronousTestCase):
    """Finding a node by its command line while it has no pid file (between the lives of a restart)."""

    def test_twistd_basedir_reads_the_plugin_arguments(self):
        here = lambda: "/home/u"  # noqa: E731
        read = control._twistd_basedir
        self.assertEqual(read(["/v/bin/twistd", "-n", "bitnode", "--basedir", "d"], here), "/home/u/d")
        self.assertEqual(read(["py", "-m", "bitnode.main.twistd_main", "bitnode", "--basedir=/x"], here), "/x")
        self.assertEqual(read(["py", "/v/bin/twistd", "bitnode", "-b", "/x"], here), "/x")
        self.assertIsNone(read(["py", "/v/bin/bitnode", "stop", "--basedir", "/x"], here))
        self.assertIsNone(read(["py", "/v/bin/twistd", "bitnode"], here))
        self.assertIsNone(read(["py", "/v/bin/twistd", "web"], here))

    def test_a_node_without_a_pid_file_is_found_by_its_command_line(self):
        basedir = Basedir.at(os.path.abspath(self.mktemp()))
        other = Basedir.at(os.path.abspath(self.mktemp()))
        script = "import time; print('up', flush=True); time.sleep(30)"
        proc = subprocess.Popen([sys.executable, "-c", script, "twistd", "bitnode", "--basedir", basedir.root],
                                stdout=subprocess.PIPE, text=True)
        self.addCleanup(lambda: (proc.kill(), proc.wait(), proc.stdout.close()))
        self.assertEqual(proc.stdout.readline().strip(), "up")
        self.assertEqual(control.node_pid(basedir), proc.pid)
        self.assertIsNone(control.node_pid(other))


class NamespaceStartTests(SynchronousTestCase):
    def setUp(self):
        self.basedir = Basedir.at(os.path.abspath(self.mktemp()))
        self.basedir.create()

    def test_start_in_a_network_namespace_runs_twistd_from_inside_it(self):
        err = self.assertRaises(control.ControlError, control.start, self.basedir, timeout=5.0,
                                namespace="bitnode-no-such-namespace")
        self.assertIn("cannot start the node in network namespace 'bitnode-no-such-namespace'", str(err))
        name = scratch_netns(self)
        seen = []

        def fake_run(command, **kwargs):
            seen.append(os.stat(netns.THREAD_NETNS).st_ino)  # where the child would be born
            return subprocess.CompletedProcess(command, 1, "", "twistd said no")

        self.patch(control.subprocess, "run", fake_run)
        err = self.assertRaises(control.ControlError, control.start, self.basedir, timeout=5.0, namespace=name)
        self.assertIn("twistd said no", str(err))
        self.assertEqual(seen, [os.stat(netns.path_of(name)).st_ino])
        self.assertNotEqual(os.stat(netns.THREAD_NETNS).st_ino, seen[0])  # and this thread came back
