"""Helpers for system tests: real node processes, driven the way a user drives them.

Everything waits by polling with short intervals under an overall deadline;
nothing sleeps for a fixed long time. Every process a test starts is killed in
cleanup if the test did not stop it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Callable

from twisted.trial.unittest import SynchronousTestCase

from bitnode.main.basedir import Basedir
from bitnode.main.fileutil import sha256_file

DEADLINE = 20.0
POLL = 0.05
VENV_BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_for(predicate: Callable[[], object], what: str, timeout: float = DEADLINE):
    """Poll ``predicate`` until it returns something true; AssertionError naming ``what`` after ``timeout``."""
    from bitnode.localnet.network import wait_for as poll

    return poll(predicate, timeout, what, interval=POLL, error=AssertionError)


def run_script(case: SynchronousTestCase, script: str, args: list[str], timeout: float,
               env: dict | None = None, tail: int = 3000) -> str:
    """Run ``scripts/<script>`` with this Python; its stdout and stderr (the test fails on a non-zero exit,
    showing the last ``tail`` characters)."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args], env=env,
                            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    out = result.stdout + result.stderr
    case.assertEqual(result.returncode, 0, out[-tail:])
    return out


def port_settings() -> list[str]:
    """``KEY=0`` for every port option a node has, so a test node never collides with another."""
    from bitnode.app import SERVICES
    from bitnode.main.schema import SCHEMA

    keys = [option.key for option in SCHEMA]
    for service in SERVICES:
        keys += [option.key for option in getattr(service, "options", ())]
    return [f"{key}=0" for key in keys if key.endswith("port")]


def script(name: str) -> list[str]:
    """The command of console script ``name`` of this interpreter's environment."""
    path = os.path.join(VENV_BIN, name)
    if os.path.exists(path):
        return [path]
    fallback = {"bitnode": "bitnode.interface.cli", "twistd": "bitnode.main.twistd_main"}[name]
    return [sys.executable, "-m", fallback]


def read_json(path: str) -> dict | None:
    """A JSON file's content, or None while it does not exist or is being written."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def http_get(url: str, secret: str | None = None, timeout: float = 5.0) -> tuple[int, dict]:
    """GET ``url`` with the ``api_secret`` header: (HTTP code, JSON body)."""
    request = urllib.request.Request(url)
    if secret is not None:
        request.add_header("api_secret", secret)
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read())


#: SHA-256 (hex) of a file, read in 1 MiB chunks.
sha256_of = sha256_file


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs (zombies count as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class ProcessTestCase(SynchronousTestCase):
    """A test case that owns real processes and basedirs, and cleans them up."""

    def make_basedir(self) -> Basedir:
        """A fresh basedir path inside the test's temporary directory."""
        return Basedir.at(os.path.abspath(self.mktemp()))

    def kill_at_cleanup(self, pid_source: Callable[[], int | None]) -> None:
        """SIGKILL whatever pid ``pid_source`` names at cleanup, if still alive."""

        def kill():
            pid = pid_source()
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)

        self.addCleanup(kill)

    def spawn(self, command: list[str], cwd: str | None = None) -> subprocess.Popen:
        """Start ``command`` with output captured; killed and reaped at cleanup."""
        proc = subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

        def reap():
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=DEADLINE)

        self.addCleanup(reap)
        return proc

    def run_cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run ``bitnode ARGS`` to completion: (returncode, stdout, stderr)."""
        return subprocess.run([*script("bitnode"), *args], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)

    def wait_endpoints(self, basedir: Basedir, pid: int | None = None) -> dict:
        """The endpoints file of a node once written (by process ``pid`` when given)."""

        def written():
            data = read_json(basedir.endpoints_file)
            if data and "http" in data and (pid is None or data.get("pid") == pid):
                return data
            return None

        return wait_for(written, f"{basedir.endpoints_file}")

    def wait_ready(self, basedir: Basedir, secret: str) -> dict:
        """Poll process_health until the node says ready; its endpoints."""

        def ready():
            endpoints = read_json(basedir.endpoints_file)
            if not endpoints:
                return None
            try:
                code, body = http_get(endpoints["http"] + "process/health/v1", secret, timeout=2.0)
            except OSError:
                return None
            return endpoints if code == 200 and body["result"]["ready"] else None

        return wait_for(ready, "process_health to say ready")


class LocalnetTestCase(SynchronousTestCase):
    """A test case that runs one local network (``LocalNet``) and talks to its nodes' APIs.

    ``start_network`` brings the network up in a fresh directory and takes it
    down at cleanup (waiting for every process to be gone); ``api`` asserts
    HTTP 200 and answers the result, ``api_error`` asserts a code and answers
    the error text.
    """

    def start_network(self, suppliers: int, customers: int, prefix: str, timeout: float = 90.0, **shape) -> dict:
        """``localnet up`` with 2048-bit keys; the nodes by name (their network.json entries).

        ``shape``: more keywords of ``LocalNet.up`` (``id_servers``, ``routers``, ``customers_behind_nat`` ...).
        """
        from bitnode.localnet.network import LocalNet

        # Under trial's temp directory: kept after a failure for its logs, wiped by the next run.
        self.dir = os.path.join(os.path.abspath(self.mktemp()), prefix.rstrip("-"))
        os.makedirs(self.dir)
        self.net = LocalNet(self.dir, log=lambda _line: None, documented_ports=False)
        self.addCleanup(self._down)
        data = self.net.up(suppliers=suppliers, customers=customers, key_size=2048, timeout=timeout, **shape)
        self.nodes = {node["name"]: node for node in data["nodes"]}
        return self.nodes

    def run_cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """``bitnode ARGS``, the way a user types it."""
        return subprocess.run([*script("bitnode"), *args], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)

    def kill_node(self, name: str) -> None:
        """``bitnode localnet stop-node NAME --kill`` (SIGKILL: no clean shutdown); waits until it is gone."""
        pid = self.nodes[name]["pid"]
        done = self.run_cli("localnet", "stop-node", name, "--kill", "--dir", self.dir)
        self.assertEqual(done.returncode, 0, done.stderr)
        wait_for(lambda: not pid_alive(pid), f"{name} to be gone")

    def start_node(self, name: str) -> None:
        """``bitnode localnet start-node NAME``; its new pid goes into ``self.nodes``."""
        done = self.run_cli("localnet", "start-node", name, "--dir", self.dir, timeout=180)
        self.assertEqual(done.returncode, 0, done.stderr)
        pid = next(row["pid"] for row in self.net.status() if row["name"] == name)
        self.nodes[name] = dict(self.nodes[name], pid=pid)

    def freeze(self, names: list[str]) -> list[int]:
        """SIGSTOP the nodes ``names`` (resumed at cleanup) and wait until each is stopped; their pids."""
        import psutil

        def stopped(pid: int) -> bool:
            try:
                return psutil.Process(pid).status() == psutil.STATUS_STOPPED
            except psutil.NoSuchProcess:
                return False

        pids = [self.nodes[name]["pid"] for name in names]
        for pid in pids:
            self.addCleanup(self.resume, pid)
            os.kill(pid, signal.SIGSTOP)
        for pid in pids:
            wait_for(lambda p=pid: stopped(p), f"pid {pid} to be stopped", timeout=5)
        return pids

    @staticmethod
    def resume(pid: int) -> None:
        """SIGCONT a process this test stopped, if it still runs (a cleanup)."""
        if pid_alive(pid):
            os.kill(pid, signal.SIGCONT)

    def _down(self) -> None:
        pids = [row["pid"] for row in self.net.status() if row["pid"]]
        self.net.down(kill=False)
        for pid in pids:
            wait_for(lambda p=pid: not pid_alive(p), f"pid {pid} to exit")

    def call(self, name: str, method: str, timeout: float = 60.0, **kwargs) -> tuple[int, dict]:
        """(HTTP code, envelope) of one API call to node ``name``."""
        from bitnode.interface.client import call_api

        return call_api(Basedir.at(self.nodes[name]["basedir"]), method, kwargs, timeout=timeout)

    def api(self, name: str, method: str, timeout: float = 60.0, **kwargs):
        """The result of a call that must answer 200."""
        code, envelope = self.call(name, method, timeout=timeout, **kwargs)
        self.assertEqual(code, 200, (name, method, envelope))
        return envelope["result"]

    def api_error(self, code: int, name: str, method: str, **kwargs) -> str:
        """The error text of a call that must answer ``code``."""
        got, envelope = self.call(name, method, **kwargs)
        self.assertEqual(got, code, (name, method, envelope))
        return " ".join(str(e) for e in envelope.get("errors", []))

    def upload_random(self, customer: str, name: str, size: int) -> tuple[str, str]:
        """``size`` random bytes uploaded by ``customer`` as ``name``: (remote path, SHA-256 of the bytes)."""
        local = os.path.join(self.dir, name)
        with open(local, "wb") as handle:
            handle.write(os.urandom(size))
        remote = f"master${self.nodes[customer]['global_id']}:{name}"
        done = self.api(customer, "file_upload_start", local_path=local, remote_path=remote, wait_result=True,
                        timeout=60)
        self.assertEqual(done["state"], "DONE", done)
        return remote, sha256_of(local)

    def download_digest(self, customer: str, remote: str) -> str:
        """SHA-256 of ``remote`` downloaded by ``customer`` into a fresh folder (the download must be DONE)."""
        target = os.path.join(self.dir, "download-" + str(time.monotonic_ns()))
        os.makedirs(target)
        done = self.api(customer, "file_download_start", remote_path=remote, destination_path=target,
                        wait_result=True, timeout=60)
        self.assertEqual(done["state"], "DONE", done)
        return sha256_of(os.path.join(target, os.path.basename(remote.split(":", 1)[1])))
