"""``bitnode localnet ...``: start, stop and inspect a local network from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time

from bitnode.errors import BitnodeError
from bitnode.localnet.network import LocalNet, LocalnetError

DEFAULT_DIR = ".localnet"


def _run(action) -> int:
    try:
        action()
    except (LocalnetError, BitnodeError) as err:
        print(f"localnet: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_up(args) -> int:
    """Start the network (create it on first use) and wait until every node is connected."""

    def up():
        data = LocalNet(args.dir).up(args.suppliers, args.customers, args.key_size, args.timeout,
                                     id_servers=args.id_servers, routers=args.routers,
                                     suppliers_behind_nat=args.suppliers_behind_nat,
                                     customers_behind_nat=args.customers if args.behind_nat else 0)
        print()
        for node in data["nodes"]:
            print(f"  {node['name']:<12} {','.join(node['roles']):<26} {node['api_url']}  "
                  f"{node.get('global_id') or '(no identity)'}")
        customer = next((n for n in data["nodes"] if "customer" in n["roles"]), data["nodes"][-1])
        print()
        print(f"API of {customer['name']}: {customer['api_url']} (WebSocket {customer['ws_url']})")
        print(f"  curl -H \"api_secret: $(cat {customer['basedir']}/metadata/apisecret)\" "
              f"{customer['api_url']}process/info/v1")
        print(f"  bitnode api process_info --basedir {customer['basedir']}")
        print(f"Every node: {LocalNet(args.dir).network_file}")
        print(f"The network file its nodes use: {LocalNet(args.dir).bitnode_network_file}")

    code = _run(up)
    if code != 0 or args.detach:
        return code
    print("The network runs until Ctrl-C (or run 'bitnode localnet up --detach' to leave it running).")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print()
    return _run(lambda: LocalNet(args.dir).down())


def cmd_down(args) -> int:
    """Stop every node of the network."""
    return _run(lambda: LocalNet(args.dir).down(kill=args.kill))


def cmd_status(args) -> int:
    """Print every node with its state as JSON."""
    return _run(lambda: print(json.dumps(LocalNet(args.dir, log=lambda _m: None).status(), indent=2)))


def cmd_start_node(args) -> int:
    """Start one node of the network again."""
    return _run(lambda: LocalNet(args.dir).start_node(args.name))


def cmd_stop_node(args) -> int:
    """Stop one node (--kill: SIGKILL, as a crash)."""
    return _run(lambda: LocalNet(args.dir).stop_node(args.name, kill=args.kill))


def cmd_add_node(args) -> int:
    """Start one more node with the network's settings but no identity (e.g. to recover one there)."""

    def add():
        roles = tuple(args.role or ("customer",))
        node = LocalNet(args.dir).add_node(args.name, roles, args.key_size, args.timeout)
        print(f"  {node['name']:<12} {','.join(node['roles']):<26} {node['api_url']}  (no identity yet)")
        print(f"  bitnode api identity_recover private_key_source=/path/to/identity-backup --basedir {node['basedir']}")
        print(f"  bitnode api identity_create username=NAME --basedir {node['basedir']}")

    return _run(add)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add ``localnet`` and its sub-commands to the ``bitnode`` parser."""
    text = "run a whole network (identity servers, routers, suppliers, customers) on this machine"
    localnet = sub.add_parser("localnet", help=text, description=text)
    actions = localnet.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    def add(name, func, help_text):
        cmd = actions.add_parser(name, help=help_text, description=help_text)
        cmd.add_argument("--dir", default=DEFAULT_DIR, help=f"network directory (default {DEFAULT_DIR})")
        cmd.set_defaults(func=func)
        return cmd

    up = add("up", cmd_up, "start the network and wait until every node is connected")
    up.add_argument("--suppliers", type=int, default=4, help="how many supplier nodes (default 4)")
    up.add_argument("--customers", type=int, default=1, help="how many customer nodes (default 1)")
    up.add_argument("--id-servers", type=int, default=1,
                    help="how many identity servers; every identity lists all of them as sources (default 1)")
    up.add_argument("--behind-nat", action="store_true",
                    help="every customer is behind NAT: no listening port, it works through a router")
    up.add_argument("--suppliers-behind-nat", type=int, default=0, metavar="N",
                    help="the last N suppliers are behind NAT (default 0)")
    up.add_argument("--routers", type=int, default=None, metavar="N",
                    help="how many router nodes (default 1 when any node is behind NAT, else 0)")
    up.add_argument("--key-size", type=int, default=2048, choices=(2048, 3072, 4096),
                    help="RSA key size of new identities (default 2048)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each step")
    up.add_argument("--detach", action="store_true",
                    help="return once the network is up and leave it running (default: run until Ctrl-C, then stop it)")
    add("down", cmd_down, "stop every node").add_argument("--kill", action="store_true", help="SIGKILL")
    add("status", cmd_status, "show every node and whether it runs")
    add("start-node", cmd_start_node, "start one node again").add_argument("name")
    more = add("add-node", cmd_add_node, "start one more node without an identity (to recover or create one)")
    more.add_argument("name")
    more.add_argument("--role", action="append", choices=("customer", "supplier", "router", "behind-nat"),
                      help="customer (default), supplier, router, behind-nat (no listening port); repeat for more")
    more.add_argument("--key-size", type=int, default=2048, choices=(2048, 3072, 4096),
                      help="RSA key size if an identity is created later by `up` (default 2048)")
    more.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the node")
    more.set_defaults(role=None)
    stop = add("stop-node", cmd_stop_node, "stop one node")
    stop.add_argument("name")
    stop.add_argument("--kill", action="store_true", help="SIGKILL, as a crash would")
