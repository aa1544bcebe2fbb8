"""Start, watch and stop the node process of a basedir, from outside it (blocking code).

Used by the ``bitnode`` command and by ``localnet``. A node is found through
files in its basedir: twistd's pid file (``logs/twistd.pid``) says which
process it is, ``metadata/endpoints.json`` where its API listens. Nothing here
runs a reactor; waiting is polling with short intervals and a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import psutil

from bitnode.interface.client import call_api, read_endpoints
from bitnode.main import netns
from bitnode.main.basedir import Basedir

POLL = 0.1
LOG_TAIL_LINES = 15


class ControlError(Exception):
    """A node did not start or stop as asked; the message says why and where to look."""


@dataclass(frozen=True)
class NodeProcess:
    """A running node: pid, endpoints (``http``, ``ws``) and whether it was already running."""

    pid: int
    endpoints: dict = field(default_factory=dict)
    already_running: bool = False


def _alive(pid: int) -> bool:
    """True for a live process (a zombie is dead: it only waits to be reaped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # pragma: no cover - someone else's process: it exists
        return True


def _looks_like_node(pid: int) -> bool:
    """Guards against a stale pid file whose pid now belongs to an unrelated process."""
    try:
        return any("bitnode" in part for part in psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # pragma: no cover
        return True


def node_pid(basedir: Basedir) -> int | None:
    """Pid of the node running in ``basedir``, if one is alive.

    twistd's pid file says which process it is. While a node restarts
    (``process_restart`` re-executes it) there is a moment without a pid
    file; then the node is found by its command line.
    """
    try:
        with open(basedir.pid_file, encoding="ascii") as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        pid = 0
    if pid > 0 and _alive(pid) and _looks_like_node(pid):
        return pid
    return _find_by_command_line(basedir)


def _twistd_basedir(cmdline: list[str], cwd: Callable[[], str]) -> str | None:
    """The ``--basedir`` of a ``twistd ... bitnode --basedir D`` command line (absolute), else None."""
    if "bitnode" not in cmdline:
        return None
    plugin = cmdline.index("bitnode")
    if not any("twistd" in os.path.basename(part) for part in cmdline[:plugin]):
        return None  # e.g. the `bitnode ...` command itself
    rest = cmdline[plugin + 1:]
    for index, arg in enumerate(rest):
        if arg in ("--basedir", "-b") and index + 1 < len(rest):
            value = rest[index + 1]
        elif arg.startswith("--basedir="):
            value = arg.split("=", 1)[1]
        else:
            continue
        return os.path.abspath(os.path.join(cwd(), os.path.expanduser(value)))
    return None


def _find_by_command_line(basedir: Basedir) -> int | None:
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if proc.info["pid"] == os.getpid() or "bitnode" not in cmdline:
                continue
            if _twistd_basedir(cmdline, proc.cwd) == basedir.root and _alive(proc.info["pid"]):
                return proc.info["pid"]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def wait_gone(pid: int, timeout: float) -> bool:
    """Poll until process ``pid`` has exited; False if it still runs after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL / 2)
    return True


def remove_stale_files(basedir: Basedir) -> None:
    """Remove the pid and endpoints files a dead node left behind (after SIGKILL or a crash)."""
    if node_pid(basedir) is not None:
        return
    for path in (basedir.pid_file, basedir.endpoints_file):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def log_tail(basedir: Basedir, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of the node's log file (empty if there is none)."""
    try:
        with open(basedir.log_file, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return ""


def twistd_command(basedir: Basedir, foreground: bool = False, settings: Sequence[str] = (),
                   network: str | None = None) -> list[str]:
    """The command line that runs the node of ``basedir`` under twistd.

    ``settings`` are ``KEY=VALUE`` texts given to the plugin's ``--set``;
    ``network`` a network file for its ``--network``.
    ``python -m bitnode.main.twistd_main`` is twistd itself, run by this
    interpreter, so the node uses the same environment as the caller.
    """
    command = [sys.executable, "-m", "bitnode.main.twistd_main"]
    if foreground:
        command += ["--nodaemon", "--pidfile", basedir.pid_file]
    else:
        command += ["--pidfile", basedir.pid_file, "--logfile", basedir.log_file]
    command += ["bitnode", "--basedir", basedir.root]
    if network:
        command += ["--network", os.path.abspath(network)]
    for item in settings:
        command += ["--set", item]
    return command


def health(basedir: Basedir, timeout: float = 2.0) -> dict | None:
    """The ``process_health`` result of the node, or None if it does not answer OK."""
    try:
        code, envelope = call_api(basedir, "process_health", {}, timeout=timeout)
    except OSError:
        return None
    result = envelope.get("result")
    return result if code == 200 and isinstance(result, dict) else None


def wait_ready(basedir: Basedir, timeout: float) -> NodeProcess:
    """Poll until the node of ``basedir`` says it is ready; ControlError if it dies or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        pid = node_pid(basedir)
        if pid is None:
            raise ControlError(f"the node exited during start-up; see {basedir.log_file}\n{log_tail(basedir)}")
        endpoints = read_endpoints(basedir) or {}
        # The pid check skips an endpoints file left by an earlier process.
        if endpoints.get("pid") == pid and (health(basedir) or {}).get("ready"):
            return NodeProcess(pid, endpoints)
        if time.monotonic() >= deadline:
            raise ControlError(f"the node (pid {pid}) was not ready within {timeout:g}s; "
                               f"see {basedir.log_file}\n{log_tail(basedir)}")
        time.sleep(POLL)


def start(basedir: Basedir, settings: Sequence[str] = (), timeout: float = 60.0,
          network: str | None = None, namespace: str | None = None) -> NodeProcess:
    """Start a daemonised node in ``basedir`` and wait until it is ready.

    ``network``: a network file the node installs as its own before it starts.
    ``namespace``: the name of a network namespace (``ip netns``) to start it
    in (root only); clients find it there through its endpoints file.
    A node already running there is left alone (``already_running``; its
    network file is not changed).
    twistd forks, reports start-up errors (a port in use, a bad ``--set``)
    before its first process exits, and then the API is polled.
    """
    basedir.create()
    pid = node_pid(basedir)
    if pid is not None:
        return NodeProcess(pid, read_endpoints(basedir) or {}, already_running=True)
    remove_stale_files(basedir)
    command = twistd_command(basedir, settings=settings, network=network)
    try:
        with netns.entered(namespace):  # the child is born in the namespace
            result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                    timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ControlError(f"twistd did not detach within {timeout:g}s; see {basedir.log_file}") from None
    except OSError as err:
        if namespace is None:
            raise
        raise ControlError(f"cannot start the node in network namespace {namespace!r}: {err}") from None
    if result.returncode != 0:
        # twistd cuts the daemon's error to 100 bytes; the log has all of it.
        output = (result.stdout + result.stderr).strip() or log_tail(basedir)
        # The daemon that reported the failure may still be exiting: once we say "failed",
        # `bitnode status` must not find it running.
        leftover = node_pid(basedir)
        if leftover is not None:
            wait_gone(leftover, 10.0)
        raise ControlError(f"the node failed to start (twistd exit {result.returncode}):\n{output}\n"
                           f"the log: {basedir.log_file}")
    return wait_ready(basedir, timeout)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop(basedir: Basedir, timeout: float = 20.0, kill: bool = False) -> tuple[int | None, str]:
    """Stop the node of ``basedir``: (pid, how) with how one of not-running, stopped, terminated, killed.

    First politely (``process_stop`` through the API, or SIGTERM if the API
    does not answer), waiting up to ``timeout`` seconds; then SIGTERM; then,
    only with ``kill``, SIGKILL (and the files the node could not remove are
    cleaned up). ControlError if the node is still running after all that.
    """
    stopped: tuple[int | None, str] = (None, "not-running")
    # More than once only when a restart was under way: its next process may appear as the first ends.
    for _ in range(3):
        pid = node_pid(basedir)
        if pid is None:
            remove_stale_files(basedir)
            return stopped
        stopped = pid, _stop_process(basedir, pid, timeout, kill)
    raise ControlError(f"a node keeps running in {basedir.root} (pid {node_pid(basedir)})")


def _stop_process(basedir: Basedir, pid: int, timeout: float, kill: bool) -> str:
    try:
        code, _ = call_api(basedir, "process_stop", {}, timeout=min(5.0, timeout))
        asked = code == 200
    except OSError:
        asked = False
    if not asked:
        _signal(pid, signal.SIGTERM)
    if wait_gone(pid, timeout):
        return "stopped" if asked else "terminated"
    if asked:
        _signal(pid, signal.SIGTERM)
        if wait_gone(pid, min(5.0, timeout)):
            return "terminated"
    if not kill:
        raise ControlError(f"the node (pid {pid}) did not stop within {timeout:g}s; use --kill")
    _signal(pid, signal.SIGKILL)
    if not wait_gone(pid, 5.0):
        raise ControlError(f"the node (pid {pid}) survived SIGKILL")
    remove_stale_files(basedir)
    return "killed"
