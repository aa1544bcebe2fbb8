"""The ``bitnode`` command: start, stop and query a node, and call any API method.

The CLI talks to a running node through its HTTP API only (the same one a
user scripts against), using the secret and the endpoints file in the basedir.
It needs no reactor: plain ``urllib`` is enough for one request.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from bitnode.interface.routes import LEGACY, ROUTES
from bitnode.main.basedir import Basedir

EXIT_OK, EXIT_ERROR, EXIT_UNREACHABLE, EXIT_NOT_RUNNING = 0, 1, 2, 3


# --- talking to a node ---------------------------------------------------------


def read_endpoints(basedir: Basedir) -> dict | None:
    """The endpoints file a running node wrote, or None."""
    try:
        with open(basedir.endpoints_file, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def read_secret(basedir: Basedir) -> str:
    """The API secret of the node (empty if there is none yet)."""
    try:
        with open(basedir.api_secret_file, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def parse_cli_value(text: str):
    """``key=value`` values: JSON when they parse as JSON (numbers, true, lists...), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_request(base_url: str, secret: str, method: str, kwargs: dict) -> urllib.request.Request:
    """An HTTP request for API method ``method`` following the route table."""
    route = next((r for r in ROUTES if r.name == method), None)
    if route is None:
        alias = next((a for a in LEGACY if a.name == method), None)
        if alias is None:
            raise KeyError(method)
        path, verb = alias.path, "POST"
    else:
        path, verb = route.path, route.verb
        for name in route.path_params:
            if name not in kwargs:
                raise ValueError(f"{method} needs {name}=...")
            path = path.replace("{" + name + "}", urllib.parse.quote(str(kwargs.pop(name)), safe=""))
    url = base_url.rstrip("/") + "/" + path
    data = None
    if verb == "GET":
        query = {k: (json.dumps(v) if not isinstance(v, str) else v) for k, v in kwargs.items()}
        if query:
            url += "?" + urllib.parse.urlencode(query)
    else:
        data = json.dumps(kwargs).encode("utf-8")
    request = urllib.request.Request(url, data=data, method=verb)
    request.add_header("api_secret", secret)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    return request


def call_api(basedir: Basedir, method: str, kwargs: dict, timeout: float = 120.0) -> tuple[int, dict]:
    """Call ``method`` on the node of ``basedir``; (HTTP code, envelope). Raises OSError if unreachable."""
    endpoints = read_endpoints(basedir)
    if not endpoints or "http" not in endpoints:
        raise ConnectionRefusedError(f"no running node found in {basedir.root}")
    request = build_request(endpoints["http"], read_secret(basedir), method, dict(kwargs))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        body = err.read().decode("utf-8", "replace")
        try:
            return err.code, json.loads(body)
        except ValueError:
            return err.code, {"status": "ERROR", "errors": [body or str(err)]}


def node_pid(basedir: Basedir) -> int | None:
    """Pid of the node running in ``basedir`` (from twistd's pid file), if it is alive."""
    try:
        with open(basedir.pid_file, encoding="ascii") as handle:
            pid = int(handle.read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def wait_healthy(basedir: Basedir, timeout: float) -> dict | None:
    """Poll process_health until the node answers ready, or give up after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            code, envelope = call_api(basedir, "process_health", {}, timeout=2.0)
            if code == 200 and envelope.get("result", {}).get("ready"):
                return envelope
        except OSError:
            pass
        time.sleep(0.2)
    return None


# --- commands -----------------------------------------------------------------


def cmd_start(args) -> int:
    """Start a daemonised node and wait until it is ready."""
    basedir = Basedir.at(args.basedir)
    basedir.create()
    pid = node_pid(basedir)
    if pid is not None:
        print(f"bitnode is already running in {basedir.root} (pid {pid})")
        return EXIT_OK
    command = [sys.executable, "-m", "bitnode.main.twistd_main", "--pidfile", basedir.pid_file,
               "--logfile", basedir.log_file, "bitnode", "--basedir", basedir.root]
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        print(f"bitnode failed to start; see {basedir.log_file}", file=sys.stderr)
        return EXIT_ERROR
    if wait_healthy(basedir, args.timeout) is None:
        print(f"bitnode did not become ready within {args.timeout:g}s; see {basedir.log_file}", file=sys.stderr)
        return EXIT_ERROR
    endpoints = read_endpoints(basedir) or {}
    print(f"bitnode is running (pid {node_pid(basedir)}), basedir {basedir.root}")
    print(f"  HTTP API:  {endpoints.get('http')}")
    print(f"  WebSocket: {endpoints.get('ws')}")
    print(f"  secret:    {basedir.api_secret_file}")
    print(f"  try:       curl -H \"api_secret: $(cat {basedir.api_secret_file})\" "
          f"{endpoints.get('http')}process/health/v1")
    return EXIT_OK


def cmd_stop(args) -> int:
    """Stop the node: process_stop through the API, then SIGTERM, then (with --kill) SIGKILL."""
    basedir = Basedir.at(args.basedir)
    pid = node_pid(basedir)
    if pid is None:
        print(f"bitnode is not running in {basedir.root}")
        return EXIT_OK
    try:
        call_api(basedir, "process_stop", {}, timeout=5.0)
    except OSError:
        os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, args.timeout):
        print(f"bitnode stopped (pid {pid})")
        return EXIT_OK
    os.kill(pid, signal.SIGTERM)
    if _wait_gone(pid, 5.0):
        print(f"bitnode stopped by SIGTERM (pid {pid})")
        return EXIT_OK
    if args.kill:
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5.0)
        print(f"bitnode killed (pid {pid})")
        return EXIT_OK
    print(f"bitnode (pid {pid}) did not stop; use --kill", file=sys.stderr)
    return EXIT_ERROR


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return True
        time.sleep(0.1)
    return False


def cmd_status(args) -> int:
    """Say whether a node runs in the basedir, and print its health."""
    basedir = Basedir.at(args.basedir)
    pid = node_pid(basedir)
    if pid is None:
        print(f"bitnode is not running in {basedir.root}")
        return EXIT_NOT_RUNNING
    try:
        code, envelope = call_api(basedir, "process_health", {}, timeout=5.0)
    except OSError as err:
        print(f"bitnode pid {pid} is running but its API does not answer: {err}")
        return EXIT_UNREACHABLE
    endpoints = read_endpoints(basedir) or {}
    print(json.dumps({"pid": pid, "basedir": basedir.root, "api": endpoints.get("http"),
                      "ws": endpoints.get("ws"), "health": envelope}, indent=2))
    return EXIT_OK if code == 200 else EXIT_ERROR


def cmd_api(args) -> int:
    """Call one API method with key=value arguments and print the JSON answer."""
    basedir = Basedir.at(args.basedir)
    kwargs = {}
    for item in args.params:
        if "=" not in item:
            print(f"arguments are key=value, got {item!r}", file=sys.stderr)
            return EXIT_ERROR
        key, value = item.split("=", 1)
        kwargs[key] = parse_cli_value(value)
    try:
        code, envelope = call_api(basedir, args.method, kwargs, timeout=args.timeout)
    except KeyError:
        print(f"unknown API method {args.method!r}; see 'bitnode methods'", file=sys.stderr)
        return EXIT_ERROR
    except ValueError as err:
        print(str(err), file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:
        print(f"cannot reach the node: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(envelope, indent=2))
    return EXIT_OK if envelope.get("status") == "OK" else EXIT_ERROR


def cmd_methods(args) -> int:
    """List every API method with its verb, path and parameters."""
    for route in ROUTES:
        params = ", ".join(p.name if p.required else f"{p.name}={p.default!r}" for p in route.params)
        print(f"{route.name}({params})  {route.verb} /{route.path}")
    print("\nlegacy names:")
    for alias in LEGACY:
        print(f"  {alias.name} -> {alias.target}")
    return EXIT_OK


def cmd_run(args) -> int:
    """Run a node in the foreground (twistd -n), logging to stdout."""
    basedir = Basedir.at(args.basedir)
    command = [sys.executable, "-m", "bitnode.main.twistd_main", "-n", "--pidfile", basedir.pid_file,
               "bitnode", "--basedir", basedir.root]
    os.execv(sys.executable, command)
    return EXIT_ERROR  # pragma: no cover


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bitnode`` command."""
    parser = argparse.ArgumentParser(prog="bitnode", description="Run and control a bitnode node.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name, func, help_text):
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--basedir", default=None, help="node base directory (default $BITNODE_HOME or ~/.bitnode)")
        cmd.set_defaults(func=func)
        return cmd

    add("start", cmd_start, "start a node in the background and wait until it is ready").add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for readiness")
    stop = add("stop", cmd_stop, "stop the node")
    stop.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for a clean stop")
    stop.add_argument("--kill", action="store_true", help="SIGKILL the node if it does not stop")
    add("status", cmd_status, "is a node running here, and is it healthy")
    add("run", cmd_run, "run a node in the foreground (twistd -n), logging to stdout")
    api = add("api", cmd_api, "call an API method: bitnode api METHOD key=value ...")
    api.add_argument("method")
    api.add_argument("params", nargs="*", metavar="key=value")
    api.add_argument("--timeout", type=float, default=120.0)
    sub.add_parser("methods", help="list every API method").set_defaults(func=cmd_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bitnode`` console script."""
    args = make_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
