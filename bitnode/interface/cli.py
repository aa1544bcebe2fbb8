"""The ``bitnode`` command: start, stop and query a node, and call any API method.

The CLI talks to a running node through its HTTP API only (the same one a
user scripts against), using the secret and the endpoints file in the
basedir; it needs no reactor. Each subcommand is a ``cmd_*`` function taking
the parsed arguments and returning the exit code. Other modules add
subcommands: a module listed in :data:`EXTENSION_MODULES` defines
``add_commands(subparsers)``, which adds its parsers with ``func`` defaults
(``bitnode localnet ...`` comes from :mod:`bitnode.localnet.cli`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import shutil
import sys

from bitnode.interface import control
from bitnode.interface.client import (
    NotRunning,
    UnknownMethod,
    call_api,
    find_target,
    parse_cli_params,
    read_endpoints,
    read_secret,
)
from bitnode.interface.control import node_pid
from bitnode.interface.routes import LEGACY, ROUTES, Alias
from bitnode.main import network_file
from bitnode.main.basedir import Basedir, default_basedir

__all__ = ["main", "make_parser", "call_api", "node_pid", "read_endpoints", "read_secret"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_UNREACHABLE = 0, 1, 2, 3, 4

#: Modules that add subcommands; each defines ``add_commands(subparsers)``. A missing one is skipped.
EXTENSION_MODULES: tuple[str, ...] = ("bitnode.localnet.cli",)

EPILOG = """\
exit codes:
  0  done (the API answered OK, the node started / stopped / runs)
  1  failed (the API answered ERROR, the node did not start or stop)
  2  bad command line (unknown command or API method, malformed key=value)
  3  no node runs in the basedir
  4  a node runs but its API does not answer

examples:
  bitnode start                       start a node in ~/.bitnode (or $BITNODE_HOME)
  bitnode start --network net.json    ... joining the network that file names (seeds, id/STUN servers)
  bitnode api process_info            call an API method, print the JSON answer
  bitnode api config_set key=logs/api-calls value=true
  bitnode methods config              API methods whose name contains "config"
  bitnode stop
"""


def _say(text: str = "") -> None:
    print(text, flush=True)


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _program() -> str:
    """How the user called us, for the commands we suggest (``.venv/bin/bitnode`` when not on PATH)."""
    typed = sys.argv[0] if sys.argv else ""
    if os.path.basename(typed) != "bitnode":
        return "bitnode"
    found = shutil.which("bitnode")
    if found and os.path.realpath(found) == os.path.realpath(typed):
        return "bitnode"
    return typed


def _basedir_flag(basedir: Basedir) -> str:
    """`` --basedir D`` for commands we suggest, unless D is the default."""
    return "" if basedir.root == default_basedir() else f" --basedir {shlex.quote(basedir.root)}"


def _print_how_to_call(basedir: Basedir, endpoints: dict) -> None:
    flag, prog = _basedir_flag(basedir), _program()
    http = endpoints.get("http") or "?"
    _say(f"  API:       {http}  (WebSocket {endpoints.get('ws') or '?'})")
    _say(f"  call it:   {prog} api process_info{flag}")
    _say(f"             curl -H \"api_secret: $(cat {shlex.quote(basedir.api_secret_file)})\" "
         f"{http}process/health/v1")
    _say(f"  methods:   {prog} methods")
    _say(f"  stop it:   {prog} stop{flag}")
    _say(f"  log:       {basedir.log_file}")


# --- commands -----------------------------------------------------------------


def cmd_start(args) -> int:
    """Start a daemonised node and wait until it is ready; say where its API is."""
    basedir = Basedir.at(args.basedir)
    if not _network_file_usable(args.network):
        return EXIT_ERROR
    try:
        node = control.start(basedir, args.set, args.timeout, network=args.network)
    except control.ControlError as err:
        _err(f"bitnode: {err}")
        return EXIT_ERROR
    state = "already running" if node.already_running else "running"
    _say(f"bitnode is {state} in {basedir.root} (pid {node.pid})")
    if node.already_running and args.network:
        _err("bitnode: --network was not applied: the node already runs; 'bitnode stop' first")
    _print_how_to_call(basedir, node.endpoints)
    return EXIT_OK


def cmd_stop(args) -> int:
    """Stop the node: process_stop through the API, then SIGTERM, then (with --kill) SIGKILL."""
    basedir = Basedir.at(args.basedir)
    try:
        pid, how = control.stop(basedir, args.timeout, args.kill)
    except control.ControlError as err:
        _err(f"bitnode: {err}")
        return EXIT_ERROR
    if pid is None:
        _say(f"bitnode is not running in {basedir.root}")
    else:
        _say(f"bitnode {how} (pid {pid})")
    return EXIT_OK


def cmd_status(args) -> int:
    """Say whether a node runs in the basedir, where its API is, and whether it is ready."""
    basedir = Basedir.at(args.basedir)
    pid = node_pid(basedir)
    endpoints = (read_endpoints(basedir) or {}) if pid is not None else {}
    health = control.health(basedir, timeout=5.0) if pid is not None else None
    info = {"running": pid is not None, "pid": pid, "basedir": basedir.root, "api": endpoints.get("http"),
            "ws": endpoints.get("ws"), "answering": health is not None,
            "ready": bool(health and health.get("ready"))}
    if args.json:
        _say(json.dumps(info, indent=2))
    elif pid is None:
        _say(f"bitnode is not running in {basedir.root}")
    elif health is None:
        _say(f"bitnode is running in {basedir.root} (pid {pid}) but its API does not answer")
    else:
        state = "ready" if info["ready"] else "starting (not ready yet)"
        _say(f"bitnode is running in {basedir.root} (pid {pid}), {state}")
        _say(f"  API:       {info['api']}  (WebSocket {info['ws']})")
    if pid is None:
        return EXIT_NOT_RUNNING
    return EXIT_OK if health is not None else EXIT_UNREACHABLE


def cmd_api(args) -> int:
    """Call one API method with key=value arguments and print the JSON answer."""
    basedir = Basedir.at(args.basedir)
    try:
        kwargs = parse_cli_params(args.method, args.params)
        code, envelope = call_api(basedir, args.method, kwargs, timeout=args.timeout)
    except UnknownMethod:
        _err(f"bitnode: unknown API method {args.method!r}; see 'bitnode methods'")
        return EXIT_USAGE
    except ValueError as err:
        _err(f"bitnode: {args.method}: {err}; see 'bitnode methods {args.method}'")
        return EXIT_USAGE
    except NotRunning:
        _err(f"bitnode: no node runs in {basedir.root}; start one with '{_program()} start{_basedir_flag(basedir)}'")
        return EXIT_NOT_RUNNING
    except OSError as err:
        _err(f"bitnode: the node in {basedir.root} does not answer: {err}")
        return EXIT_UNREACHABLE
    _say(json.dumps(envelope, indent=2))
    return EXIT_OK if envelope.get("status") == "OK" and code < 400 else EXIT_ERROR


def _signature(target) -> str:
    return ", ".join(p.name if p.required else f"{p.name}={p.default!r}" for p in target.params)


def _describe_method(name: str) -> None:
    target = find_target(name)
    if isinstance(target, Alias):
        _say(f"{target.name}  (legacy name of {target.target})  POST /{target.path}")
    else:
        _say(f"{target.name}  {'|'.join(target.verbs)} /{target.path}")
    _say(f"  {target.description}")
    for param in target.params:
        default = "required" if param.required else f"default {param.default!r}"
        also = f"; also {', '.join(param.aliases)}" if param.aliases else ""
        text = f" - {param.description}" if param.description else ""
        _say(f"  {param.name}: {param.type.name}, {default}{also}{text}")
    _say(f"\ncall it:   bitnode api {target.name}"
         + "".join(f" {p.name}=..." for p in target.params if p.required))


def cmd_methods(args) -> int:
    """List the API methods (all, those whose name contains WORD, or one in detail)."""
    word = args.word or ""
    try:
        find_target(word)
    except UnknownMethod:
        pass
    else:
        _describe_method(word)
        return EXIT_OK
    routes = [r for r in ROUTES if word in r.name]
    aliases = [a for a in LEGACY if word in a.name and a.name not in {r.name for r in ROUTES}]
    if not routes and not aliases:
        _err(f"bitnode: no API method matches {word!r}")
        return EXIT_USAGE
    for route in routes:
        _say(f"{route.name}({_signature(route)})  {route.verb} /{route.path}")
    if aliases:
        _say("\nlegacy names:")
        for alias in aliases:
            _say(f"  {alias.name}({_signature(alias)}) -> {alias.target}")
    _say("\ndetails: bitnode methods METHOD;  call: bitnode api METHOD key=value ...")
    return EXIT_OK


def _network_file_usable(path: str | None) -> bool:
    """Check a ``--network`` file before starting anything; say what is wrong with it."""
    if not path:
        return True
    try:
        network_file.load(path)
    except OSError as err:
        _err(f"bitnode: cannot read the network file {path}: {err.strerror or err}")
        return False
    except network_file.BadNetworkFile as err:
        _err(f"bitnode: {path}: {err}")
        return False
    return True


def cmd_run(args) -> int:
    """Run a node in the foreground (twistd -n), logging to stdout; replaces this process."""
    basedir = Basedir.at(args.basedir)
    pid = node_pid(basedir)
    if pid is not None:
        _err(f"bitnode: a node already runs in {basedir.root} (pid {pid}); 'bitnode stop' first")
        return EXIT_ERROR
    if not _network_file_usable(args.network):
        return EXIT_ERROR
    basedir.create()
    control.remove_stale_files(basedir)
    command = control.twistd_command(basedir, foreground=True, settings=args.set, network=args.network)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)
    return EXIT_ERROR  # pragma: no cover - execv does not return


# --- the parser -----------------------------------------------------------------


def _add_extensions(sub) -> None:
    for name in EXTENSION_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.add_commands(sub)


def make_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bitnode`` command (built-in and extension subcommands)."""
    parser = argparse.ArgumentParser(
        prog="bitnode", description="Run and control a bitnode node, and call its API.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True

    def add(name, func, help_text):
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--basedir", default=None, metavar="DIR",
                         help="node base directory (default $BITNODE_HOME or ~/.bitnode)")
        cmd.set_defaults(func=func)
        return cmd

    def add_set(cmd):
        cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="store a setting before starting, e.g. interface/api/http-port=0 (repeatable)")
        cmd.add_argument("--network", default=None, metavar="FILE",
                         help="a network file (seed nodes, identity and STUN servers) the node uses from now on "
                              "(installed as config/network.json; default: the public network shipped with bitnode)")

    start = add("start", cmd_start, "start a node in the background and say where its API is")
    start.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for readiness (default 60)")
    add_set(start)
    stop = add("stop", cmd_stop, "stop the node (--kill: SIGKILL it if it hangs)")
    stop.add_argument("--timeout", type=float, default=20.0, help="seconds to wait for a clean stop (default 20)")
    stop.add_argument("--kill", action="store_true", help="SIGKILL the node if it does not stop")
    status = add("status", cmd_status, "is a node running here, where is its API, is it ready")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    add_set(add("run", cmd_run, "run a node in the foreground, logging to stdout"))
    api = add("api", cmd_api, "call an API method: bitnode api METHOD key=value ...")
    api.add_argument("method", metavar="METHOD", help="an API method name (see 'bitnode methods')")
    api.add_argument("params", nargs="*", metavar="key=value",
                     help="arguments: text, numbers, true/false, lists as a,b,c or JSON, typed by the method")
    api.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the answer (default 120)")
    methods = sub.add_parser("methods", help="list the API methods, or describe one: methods [WORD]",
                             description="List the API methods, or describe one in detail.")
    methods.add_argument("word", nargs="?", metavar="WORD", help="a method name, or part of names to list")
    methods.set_defaults(func=cmd_methods)
    _add_extensions(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bitnode`` console script."""
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
