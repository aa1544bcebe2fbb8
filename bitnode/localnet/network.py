"""A whole bitnode network on one machine: identity servers, suppliers, customers.

``bitnode localnet up --dir D`` plans the nodes, gives each its own basedir
under ``D`` and its own loopback ports, writes the network's own network file
(``D/bitnode-network.json``: its identity servers, DHT seed and STUN servers;
every node gets a copy as ``config/network.json``), starts every node as a
separate daemonised process, creates each node's identity on the network's
identity servers (``--id-servers N``: all N are every identity's sources), waits until every node is connected and every service it has
switched on is ON (a user who runs ``make run`` gets a ready network), and
writes ``D/network.json``.
The plan (names, roles, ports) is kept in that file, so ``up`` again after a
``down`` restarts the same nodes with the same identities and ports.

The orchestration is plain blocking code (subprocesses and urllib through each
node's public HTTP API, the way a user drives a node); it runs in the CLI, not
inside a reactor. The identity servers come first; the other nodes then start,
create their identities and stop side by side, each step in a few threads.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Optional

from bitnode.errors import BadRequest, Conflict, NotFound
from bitnode.interface import control
from bitnode.interface.client import call_api, read_endpoints, read_secret
from bitnode.interface.control import node_pid
from bitnode.localnet.shapes import (
    BEHIND_NAT,
    ROUTER,
    SHAPE_SETTINGS,
    routers_of,
    routers_wanted,
    shaped_names,
)
from bitnode.main import network_file
from bitnode.main.basedir import Basedir
from bitnode.main.fileutil import atomic_write
from bitnode.main.schema import TCP_INTERFACE_KEY

NETWORK_FORMAT = 1
#: Where a local network's nodes listen unless placed elsewhere (``placements``).
LOOPBACK = "127.0.0.1"
SERVER_NAME = "idserver"
#: The network file the nodes of a local network use (in its directory; a copy in each basedir's config/).
NETWORK_FILE_NAME = "bitnode-network.json"
#: Identity servers one local network may have.
MAX_ID_SERVERS = 8
#: Settings the network file gives; a node's settings no longer name them (the file is the one place).
NETWORK_SETTINGS = tuple(network_file.SETTING_KEYS.values())

#: Settings each role switches on; keys of services not built yet are stored and ignored until they exist.
ROLE_SETTINGS: dict[str, dict] = {
    "identity-server": {"services/identity-server/enabled": True, "services/ip-port-responder/enabled": True},
    "dht-seed": {},
    "supplier": {"services/supplier/enabled": True},
    # A local network replaces a stopped supplier within about a minute (a real one waits 10 minutes).
    "customer": {"services/customer/enabled": True, "services/customer/dead-after": 30.0,
                 "services/customer/ping-interval": 10.0, "services/customer/check-interval": 15.0},
    **SHAPE_SETTINGS,
}
#: With several identity servers, a local network's nodes leave a dead one within about a minute
#: (a real node checks every 10 minutes and waits 30 before it moves).
SEVERAL_ID_SERVERS_SETTINGS = {"services/identity-propagate/check-interval": 20.0,
                               "services/identity-propagate/recheck-interval": 10.0,
                               "services/identity-propagate/dead-after": 45.0}
#: How many suppliers a localnet customer hires (at most this many; the setting's minimum is 2).
LOCALNET_SUPPLIERS_NUMBER = 4
#: How often a node is started again on new ports when one of its planned ports was taken.
PORT_RETRIES = 2
PORT_TAKEN = ("Couldn't listen", "Address already in use", "CannotListenError")
#: Names ``add_node`` accepts (they become basedir names and usernames).
NODE_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
#: Nodes handled at once by up and down (starting one is mostly Python imports and waiting).
PARALLEL_NODES = 8

Log = Callable[[str], None]


class LocalnetError(Exception):
    """Something the user must see: a node did not start, did not connect..."""


@dataclass(frozen=True)
class Placement:
    """Where a node runs: a network namespace (``ip netns``; None: the host's) and its address there."""

    netns: Optional[str]
    host: str


@dataclass
class NodePlan:
    """One node of the network: its name, roles, basedir and ports; its address (loopback unless placed)."""

    name: str
    roles: tuple[str, ...]
    basedir: str
    ports: dict[str, int] = field(default_factory=dict)
    #: the address its peer transport, DHT and servers listen on, and that the others use to reach it
    host: str = LOOPBACK
    #: the network namespace it runs in (its API is on that namespace's 127.0.0.1); None: the host's
    netns: Optional[str] = None

    @classmethod
    def from_dict(cls, data: dict) -> NodePlan:
        """Read one entry of ``network.json``."""
        return cls(data["name"], tuple(data["roles"]), data["basedir"], dict(data["ports"]),
                   data.get("host", LOOPBACK), data.get("netns"))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel says is free on 127.0.0.1 right now (TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def preferred_port(port: int) -> int:
    """``port`` if it is free on 127.0.0.1 now, else any free port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


def plan_network(directory: str, suppliers: int, customers: int, documented_ports: bool = True, *,
                 id_servers: int = 1, routers: int | None = None, suppliers_behind_nat: int = 0,
                 customers_behind_nat: int = 0, placements: Mapping[str, Placement] | None = None) -> list[NodePlan]:
    """Names, roles, basedirs and fresh ports for a network of that shape.

    With ``documented_ports`` the first customer gets the API ports of the
    documentation (8180/8280) when they are free; tests running several
    networks at once turn it off so they never race for them. The
    ``id_servers`` identity servers are ``idserver``, ``idserver-2`` ...;
    each is also a DHT seed, so a node that starts while one of them is down
    still joins the DHT through another. Routers and nodes behind NAT: see
    :mod:`bitnode.localnet.shapes`. ``placements`` puts nodes (by name) in
    network namespaces at other addresses (a real NAT: tests/system/test_netns_nat.py).
    """
    if suppliers < 0 or customers < 0 or suppliers + customers == 0:
        raise BadRequest("a local network needs at least one supplier or customer")
    routers = routers_wanted(routers, suppliers_behind_nat + customers_behind_nat)
    if suppliers + customers + routers > 64:
        raise BadRequest("at most 64 nodes on one machine")
    if not 1 <= id_servers <= MAX_ID_SERVERS:
        raise BadRequest(f"a local network has 1 to {MAX_ID_SERVERS} identity servers")
    names = [(SERVER_NAME, ("identity-server", "dht-seed"))]
    names += [(f"{SERVER_NAME}-{i}", ("identity-server", "dht-seed")) for i in range(2, id_servers + 1)]
    names += shaped_names(suppliers, customers, routers, suppliers_behind_nat, customers_behind_nat)
    plans = []
    for name, roles in names:
        ports = node_ports(roles)
        if documented_ports and name == "customer-1":
            # The node a user drives gets the documented API ports when they are free.
            ports["http"], ports["ws"] = preferred_port(8180), preferred_port(8280)
        plan = NodePlan(name, roles, os.path.join(directory, name), ports)
        placement = (placements or {}).get(name)
        if placement is not None:
            plan.host, plan.netns = placement.host, placement.netns
        plans.append(plan)
    unknown = set(placements or {}) - {plan.name for plan in plans}
    if unknown:
        raise BadRequest(f"placements name nodes the network does not have: {sorted(unknown)}")
    return plans


def node_ports(roles: tuple[str, ...]) -> dict[str, int]:
    """Fresh loopback ports for one node with these roles."""
    ports = {"http": free_port(), "ws": free_port(), "tcp": free_port(), "dht": free_port(socket.SOCK_DGRAM)}
    if "identity-server" in roles:
        ports["idserver"] = free_port()
        ports["stun"] = free_port(socket.SOCK_DGRAM)
    return ports


def suppliers_to_hire(plans: list[NodePlan]) -> int:
    """How many suppliers a customer of this network hires (LOCALNET_SUPPLIERS_NUMBER at most)."""
    return min(LOCALNET_SUPPLIERS_NUMBER, sum(1 for p in plans if "supplier" in p.roles))


def identity_servers(plans: list[NodePlan]) -> list[NodePlan]:
    """The identity servers of the network, the first (the DHT seed) first."""
    return [plan for plan in plans if "identity-server" in plan.roles]


def dht_peers(plan: NodePlan, nodes: list[NodePlan], plans: list[NodePlan]) -> list[NodePlan]:
    """Those of ``nodes`` that the DHT of ``plan`` surely exchanges packets with: all of them on one host.

    With placements, the identity servers' namespace is the public network:
    only its nodes and those of ``plan``'s own namespace count. Nodes behind
    two NATs never reach each other, and a public node hears from one behind
    a NAT only if that one asks it something.
    """
    public = {server.netns for server in identity_servers(plans)}
    return [other for other in nodes if other is not plan and (other.netns in public or other.netns == plan.netns)]


def network_document(directory: str, plans: list[NodePlan]) -> network_file.NetworkFile:
    """The network file of a local network: its identity servers, the DHT seed, the STUN servers."""
    servers = identity_servers(plans)
    seeds = [plan for plan in plans if "dht-seed" in plan.roles]
    return network_file.NetworkFile(
        name=f"bitnode localnet {os.path.basename(directory)}"[:network_file.MAX_NAME],
        identity_servers=tuple(f"{plan.host}:{plan.ports['idserver']}" for plan in servers),
        seeds=tuple(f"{plan.host}:{plan.ports['dht']}" for plan in seeds),
        stun_servers=tuple(f"{plan.host}:{plan.ports['stun']}" for plan in servers if "stun" in plan.ports),
    )


def node_settings(plan: NodePlan, key_size: int) -> dict:
    """The settings a node of the network starts with (the servers come from the network file)."""
    values = {
        "interface/api/http-port": plan.ports["http"],
        "interface/api/ws-port": plan.ports["ws"],
        "services/tcp-connections/tcp-port": plan.ports["tcp"],
        "services/entangled-dht/udp-port": plan.ports["dht"],
        "personal/private-key-size": key_size,
    }
    if plan.host != LOOPBACK:
        # the peer transport (and the identity and STUN servers with it) and the DHT listen there
        values[TCP_INTERFACE_KEY] = plan.host
        values["services/entangled-dht/interface"] = plan.host
    if "stun" in plan.ports:
        values["services/ip-port-responder/udp-port"] = plan.ports["stun"]
    if "idserver" in plan.ports:
        values["services/identity-server/web-port"] = plan.ports["idserver"]
        values["services/identity-server/host"] = plan.host
        # Every node of the network registers from 127.0.0.1: the per-address limits meant for strangers
        # would throttle the network itself.
        values["services/identity-server/registrations-per-hour"] = 0
        values["services/identity-server/posts-per-minute"] = 0
    for role in plan.roles:
        values.update(ROLE_SETTINGS[role])
    return values


def write_settings(basedir: Basedir, values: dict, forget: tuple[str, ...] = ()) -> None:
    """Merge ``values`` into the node's stored settings (before it starts); ``forget`` keys go back to default."""
    stored: dict = {}
    try:
        with open(basedir.settings_file, encoding="utf-8") as handle:
            stored = json.load(handle).get("values", {})
    except (OSError, ValueError, AttributeError):
        stored = {}
    for key in forget:
        stored.pop(key, None)
    stored.update(values)
    data = json.dumps({"format": 1, "values": stored}, indent=1, sort_keys=True)
    atomic_write(basedir.settings_file, data.encode("utf-8"), mode=0o600)


def api(basedir: Basedir, method: str, timeout: float = 60.0, **kwargs) -> tuple[int, dict]:
    """Call one API method; (HTTP code, envelope). Unreachable nodes answer (0, error envelope)."""
    try:
        return call_api(basedir, method, kwargs, timeout=timeout)
    except OSError as err:
        return 0, {"status": "ERROR", "errors": [f"node not reachable: {err}"]}


def wait_for(check: Callable[[], object], timeout: float, what: str, interval: float = 0.2,
             error: type[Exception] = LocalnetError):
    """Poll ``check`` until it returns something true; ``error`` naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise error(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _error_text(envelope: dict) -> str:
    return "; ".join(str(e) for e in envelope.get("errors", [])) or json.dumps(envelope)


class LocalNet:
    """The network described by ``<directory>/network.json``."""

    def __init__(self, directory: str, log: Log = print, documented_ports: bool = True):
        self.directory = os.path.abspath(directory)
        self.documented_ports = documented_ports
        self.network_file = os.path.join(self.directory, "network.json")
        #: the network file its nodes use (identity servers, DHT seed, STUN servers)
        self.bitnode_network_file = os.path.join(self.directory, NETWORK_FILE_NAME)
        self._log = log
        self._lock = threading.Lock()  # network.json and the log, written from the worker threads

    def log(self, text: str) -> None:
        """One line of progress for the user (whole lines, whichever thread writes)."""
        with self._lock:
            self._log(text)

    # --- the plan on disk -------------------------------------------------------

    def load(self) -> list[NodePlan]:
        """The nodes of the existing network; NotFound if there is none here."""
        try:
            with open(self.network_file, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            raise NotFound(f"no local network in {self.directory} (run 'bitnode localnet up')") from None
        if data.get("format") != NETWORK_FORMAT:
            raise BadRequest(f"{self.network_file} has an unknown format")
        return [NodePlan.from_dict(item) for item in data["nodes"]]

    def save(self, plans: list[NodePlan]) -> dict:
        """Write network.json: the plan plus what a user or a test needs to reach every node."""
        nodes = []
        for plan in plans:
            basedir = Basedir.at(plan.basedir)
            endpoints = read_endpoints(basedir) or {}
            entry = asdict(plan)
            entry["roles"] = list(plan.roles)
            entry.update({
                "api_url": endpoints.get("http"),
                "ws_url": endpoints.get("ws"),
                "api_secret": read_secret(basedir),
                "pid": node_pid(basedir),
                "global_id": self._global_id(basedir),
            })
            nodes.append(entry)
        data = {"format": NETWORK_FORMAT, "directory": self.directory, "nodes": nodes}
        with self._lock:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            atomic_write(self.network_file, json.dumps(data, indent=1).encode("utf-8"), mode=0o600)
        return data

    def node(self, name: str) -> NodePlan:
        """One node of the plan by name."""
        for plan in self.load():
            if plan.name == name:
                return plan
        raise NotFound(f"no node {name!r} in {self.network_file}")

    # --- commands -----------------------------------------------------------------

    def up(self, suppliers: int = 4, customers: int = 1, key_size: int = 2048, timeout: float = 120.0, *,
           id_servers: int = 1, routers: int | None = None, suppliers_behind_nat: int = 0,
           customers_behind_nat: int = 0, placements: Mapping[str, Placement] | None = None) -> dict:
        """Start (or restart) every node, create missing identities, wait until all are connected.

        For a new network: ``id_servers`` identity servers (every node's
        identity lists all of them as its sources); ``routers`` routers and
        that many suppliers / customers behind NAT (:mod:`bitnode.localnet.shapes`);
        ``placements``: nodes (by name) in network namespaces at other addresses.
        """
        try:
            plans = self.load()
            self.log(f"local network in {self.directory}: starting its {len(plans)} nodes again")
        except NotFound:
            plans = plan_network(self.directory, suppliers, customers, self.documented_ports,
                                 id_servers=id_servers, routers=routers, suppliers_behind_nat=suppliers_behind_nat,
                                 customers_behind_nat=customers_behind_nat, placements=placements)
            natted = sum(1 for plan in plans if BEHIND_NAT in plan.roles)
            self.log(f"new local network in {self.directory}: {id_servers} identity server(s), "
                     f"{suppliers} supplier(s), {customers} customer(s)"
                     + (f", {len(routers_of(plans))} router(s), {natted} behind NAT" if routers_of(plans) else ""))
        hire = suppliers_to_hire(plans)
        for plan in plans:
            Basedir.at(plan.basedir).create()
            self._write_settings(plan, plans, key_size)
        self.save(plans)
        # The identity servers first: every other node registers its identity on all of them.
        servers = identity_servers(plans)
        server, others = servers[0], [plan for plan in plans if plan not in servers]
        self._each(servers, lambda plan: self._start_on_free_ports(plan, plans, key_size, timeout))
        self._ensure_identity(server, timeout)
        self._each(servers[1:], lambda plan: self._ensure_identity(plan, timeout))
        self._each(others, lambda plan: self._start_on_free_ports(plan, plans, key_size, timeout))
        # Routers before the others: a node behind NAT looks for one in the DHT as soon as it has an identity.
        # Customers last: they look for suppliers in the DHT as soon as they have an identity.
        customers = [plan for plan in plans if "customer" in plan.roles]
        routers_first = routers_of(plans)
        joined: list[NodePlan] = []
        for group in (routers_first, [plan for plan in plans if plan not in customers + routers_first], customers):
            joined += group
            # (the servers have their identities already: the DHT seed is up before anyone bootstraps from it)
            self._each([plan for plan in group if plan not in servers],
                       lambda plan: self._ensure_identity(plan, timeout))
            self._each(group, lambda plan: self._wait_connected(plan, timeout, plans, key_size))
            self._each(group, lambda plan, nodes=list(joined): self._wait_dht(
                plan, len(dht_peers(plan, nodes, plans)) + 1, timeout))
            self._each(group, lambda plan: self._wait_services(plan, timeout))
        self._each(routers_first, lambda plan: self._wait_advertised(plan, timeout))
        self._each(customers, lambda plan: self._wait_suppliers(plan, hire, timeout))
        # The others were ON before the customers joined; a customer's storage comes ON once it has hired.
        self._each(customers, lambda plan: self._wait_services(plan, timeout))
        data = self.save(plans)
        self.log(f"local network up: {len(plans)} nodes; see {self.network_file}")
        return data

    def down(self, kill: bool = False, timeout: float = 20.0) -> None:
        """Stop every node (the identity servers last)."""
        plans = self.load()
        servers = identity_servers(plans)
        # The others side by side, then the identity servers (they may still publish to them on the way down).
        self._each([plan for plan in plans if plan not in servers], lambda plan: self._stop(plan, kill, timeout))
        self._each(servers, lambda plan: self._stop(plan, kill, timeout))
        self.save(plans)
        self.log("local network down")

    def start_node(self, name: str, timeout: float = 60.0) -> None:
        """Start one node of the network again."""
        plans = self.load()
        plan = next((p for p in plans if p.name == name), None)
        if plan is None:
            raise NotFound(f"no node {name!r} in {self.network_file}")
        self._start(plan, timeout)
        self._wait_connected(plan, timeout)
        self._wait_services(plan, timeout)
        self.save(plans)

    def add_node(self, name: str, roles: tuple[str, ...] = ("customer",), key_size: int = 2048,
                 timeout: float = 60.0) -> dict:
        """Start one more node with the network's settings and ports of its own, but no identity.

        For a user who restores an identity on a "new machine"
        (``identity_recover``), or creates one later. The node joins
        ``network.json``, so ``down`` stops it (and ``up`` gives it an identity
        if it still has none). Answers its ``network.json`` entry.
        """
        if not isinstance(name, str) or not NODE_NAME.fullmatch(name):
            raise BadRequest("a node name is 1-32 lowercase letters, digits or '-', starting with a letter")
        unknown = set(roles) - set(ROLE_SETTINGS)
        if not roles or unknown or "identity-server" in roles or "dht-seed" in roles:
            raise BadRequest(f"roles must be some of supplier, customer, {ROUTER}, {BEHIND_NAT} (got {list(roles)})")
        plans = self.load()
        if any(p.name == name for p in plans):
            raise Conflict(f"the network already has a node {name!r}")
        plan = NodePlan(name, tuple(roles), os.path.join(self.directory, name), node_ports(tuple(roles)))
        Basedir.at(plan.basedir).create()
        plans.append(plan)
        self._write_settings(plan, plans, key_size)
        self.save(plans)
        self._start_on_free_ports(plan, plans, key_size, timeout)
        data = self.save(plans)
        return next(node for node in data["nodes"] if node["name"] == name)

    def stop_node(self, name: str, kill: bool = False, timeout: float = 20.0) -> None:
        """Stop one node (``kill``: SIGKILL at once, as a crash would)."""
        plans = self.load()
        plan = next((p for p in plans if p.name == name), None)
        if plan is None:
            raise NotFound(f"no node {name!r} in {self.network_file}")
        self._stop(plan, kill, timeout)
        self.save(plans)

    def status(self) -> list[dict]:
        """Per node: name, roles, pid, API URL, health and global id."""
        rows = []
        for plan in self.load():
            basedir = Basedir.at(plan.basedir)
            pid = node_pid(basedir)
            health = api(basedir, "process_health", timeout=5.0)[1] if pid else None
            rows.append({
                "name": plan.name, "roles": list(plan.roles), "pid": pid,
                "api_url": (read_endpoints(basedir) or {}).get("http") if pid else None,
                "running": pid is not None,
                "ready": bool(health and health.get("result", {}).get("ready")),
                "global_id": self._global_id(basedir) if pid else None,
            })
        return rows

    # --- steps ----------------------------------------------------------------------

    def _write_settings(self, plan: NodePlan, plans: list[NodePlan], key_size: int) -> None:
        """The node's settings, and the network file (written for the network, installed in the node)."""
        values = node_settings(plan, key_size)
        if "dht-seed" in plan.roles:
            # A seed does not bootstrap from itself; the later ones join through the earlier ones.
            seeds = [other for other in plans if "dht-seed" in other.roles]
            values["services/entangled-dht/known-nodes"] = [
                f"{other.host}:{other.ports['dht']}" for other in seeds[:seeds.index(plan)]]
        if len(identity_servers(plans)) > 1:
            values.update(SEVERAL_ID_SERVERS_SETTINGS)
        hire = suppliers_to_hire(plans)
        if "customer" in plan.roles and hire >= 2:
            values["services/customer/suppliers-number"] = hire
        basedir = Basedir.at(plan.basedir)
        network = network_document(self.directory, plans)
        with self._lock:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            atomic_write(self.bitnode_network_file, network.to_json(), mode=0o644)
        network_file.install(basedir.config, network)
        write_settings(basedir, values, forget=tuple(k for k in NETWORK_SETTINGS if k not in values))

    def _start_on_free_ports(self, plan: NodePlan, plans: list[NodePlan], key_size: int, timeout: float) -> None:
        """Start a node; if a planned port was taken meanwhile, plan new ones and try again.

        A port free when planned can be taken by then (any process's outgoing
        connection may get it as its local port). An identity server's web
        port stays: it is part of IDURLs of the network. Only the servers'
        ports are in the network file, and the servers start first.
        """
        for attempt in range(PORT_RETRIES + 1):
            try:
                self._start(plan, timeout)
                return
            except LocalnetError as err:
                if attempt == PORT_RETRIES or not any(text in str(err) for text in PORT_TAKEN):
                    raise
                self.log(f"  {plan.name}: a port was taken, trying new ones ({str(err).splitlines()[0]})")
            self._move_to_new_ports(plan, plans, key_size)

    def _move_to_new_ports(self, plan: NodePlan, plans: list[NodePlan], key_size: int) -> None:
        """Give ``plan`` fresh ports, rewrite the settings that name them, and save the network.

        An identity server's web port stays (it is part of IDURLs); when a
        server moves, every node's network file names its new DHT and STUN ports.
        """
        kept = {key: port for key, port in plan.ports.items() if key == "idserver"}
        plan.ports = node_ports(plan.roles) | kept
        for other in plans if "identity-server" in plan.roles else [plan]:
            self._write_settings(other, plans, key_size)
        self.save(plans)

    def _start(self, plan: NodePlan, timeout: float) -> None:
        basedir = Basedir.at(plan.basedir)
        try:
            process = control.start(basedir, timeout=timeout, namespace=plan.netns)
        except control.ControlError as err:
            raise LocalnetError(f"node {plan.name}: {err}") from None
        self.log(f"  {plan.name}: {'running' if process.already_running else 'started'} "
                 f"(pid {process.pid}, {process.endpoints.get('http')})")

    def _ensure_identity(self, plan: NodePlan, timeout: float) -> None:
        basedir = Basedir.at(plan.basedir)
        code, envelope = api(basedir, "identity_get", timeout=timeout)
        if code == 200:
            return
        if code == 501:
            self.log(f"  {plan.name}: identities are not implemented yet; node runs without one")
            return
        code, envelope = api(basedir, "identity_create", timeout=timeout, username=plan.name)
        if code != 200:
            raise LocalnetError(f"identity_create on {plan.name} failed: {_error_text(envelope)}")
        self.log(f"  {plan.name}: identity {envelope['result'].get('global_id', '?')}")

    def _wait_connected(self, plan: NodePlan, timeout: float, plans: list[NodePlan] | None = None,
                        key_size: int = 2048) -> None:
        """Wait for network_connected; a node whose TCP/DHT port was taken meanwhile moves to new ports.

        Those ports are bound only once the node has an identity, so the
        start-up retry of :meth:`_start_on_free_ports` cannot see them taken.
        """
        basedir = Basedir.at(plan.basedir)
        for attempt in range(PORT_RETRIES + 1):
            code, envelope = api(basedir, "network_connected", timeout=timeout + 5, wait_timeout=timeout)
            if code in (200, 501):
                return
            _, services = api(basedir, "services_list", timeout=timeout)
            port_taken = any(text in json.dumps(services) for text in PORT_TAKEN)
            if attempt == PORT_RETRIES or not port_taken or plans is None or "identity-server" in plan.roles:
                raise LocalnetError(f"node {plan.name} did not connect: {_error_text(envelope)}")
            self.log(f"  {plan.name}: a peer port was taken, restarting it on new ones")
            control.stop(basedir, timeout=timeout)
            self._move_to_new_ports(plan, plans, key_size)
            self._start(plan, timeout)

    def _wait_dht(self, plan: NodePlan, nodes: int, timeout: float) -> None:
        """Wait until the node's DHT routing table knows the others (or most of them)."""
        basedir = Basedir.at(plan.basedir)
        wanted = max(1, min(nodes - 1, 8))

        def populated():
            code, envelope = api(basedir, "network_status", timeout=5.0, dht=True)
            dht = envelope.get("result", {}).get("dht", {}) if code == 200 else {}
            if not dht.get("available"):
                return "unavailable"  # no DHT service on this node: nothing to wait for
            return dht.get("contacts", {}).get("0", 0) >= wanted

        if wait_for(populated, timeout, f"the DHT of {plan.name} to know {wanted} node(s)") == "unavailable":
            self.log(f"  {plan.name}: no DHT service running")

    def _wait_advertised(self, plan: NodePlan, timeout: float) -> None:
        """Wait until a router has joined the routers' DHT layer (nodes behind NAT find it there)."""
        basedir = Basedir.at(plan.basedir)

        def joined():
            code, envelope = api(basedir, "network_status", timeout=5.0, proxy=True)
            server = envelope.get("result", {}).get("proxy", {}).get("server", {}) if code == 200 else {}
            return server.get("layer_joined")

        wait_for(joined, timeout, f"router {plan.name} to advertise itself in the DHT")

    def _wait_suppliers(self, plan: NodePlan, wanted: int, timeout: float) -> None:
        """Wait until a customer has ``wanted`` CONNECTED suppliers (a customer needs at least 2)."""
        basedir = Basedir.at(plan.basedir)
        if wanted < 2:
            self.log(f"  {plan.name}: fewer than 2 suppliers in this network: nothing to hire")
            return
        started = time.monotonic()

        def hired():
            code, envelope = api(basedir, "suppliers_list", timeout=5.0)
            if code == 501:
                return "unavailable"  # no market in this build: nothing to wait for
            rows = envelope.get("result") if code == 200 else None
            return bool(rows) and sum(1 for r in rows if r.get("state") == "CONNECTED") >= wanted

        if wait_for(hired, timeout, f"{plan.name} to hire {wanted} suppliers") == "unavailable":
            self.log(f"  {plan.name}: no customer service")
            return
        self.log(f"  {plan.name}: {wanted} suppliers hired in {time.monotonic() - started:.1f}s")

    def _wait_services(self, plan: NodePlan, timeout: float) -> None:
        """Wait until every enabled service of the node is ON; the error names those that are not, and why."""
        basedir = Basedir.at(plan.basedir)
        waiting: list[str] = []

        def all_on():
            code, envelope = api(basedir, "services_list", timeout=5.0)
            if code != 200:
                waiting[:] = [f"services_list: {_error_text(envelope)}"]
                return False
            waiting[:] = [f"{row['name']} {row['state']}" + (f" ({row['reason']})" if row.get("reason") else "")
                          for row in envelope["result"] if row.get("enabled") and row.get("state") != "ON"]
            return not waiting

        try:
            wait_for(all_on, timeout, f"the services of {plan.name} to be ON")
        except LocalnetError as err:
            raise LocalnetError(f"{err}: {'; '.join(waiting)}") from None

    def _each(self, plans: list[NodePlan], step: Callable[[NodePlan], None]) -> None:
        """``step(plan)`` for every plan, a few at once; the first error (in plan order) once all are done."""
        if not plans:
            return
        with ThreadPoolExecutor(max_workers=min(PARALLEL_NODES, len(plans))) as pool:
            futures = [pool.submit(step, plan) for plan in plans]
        for future in futures:
            error = future.exception()
            if error is not None:
                raise error

    def _stop(self, plan: NodePlan, kill: bool, timeout: float) -> None:
        basedir = Basedir.at(plan.basedir)
        if kill:
            pid = node_pid(basedir)
            if pid is not None:
                os.kill(pid, 9)  # a crash, on purpose: no clean shutdown
                control.wait_gone(pid, timeout)
                control.remove_stale_files(basedir)
                self.log(f"  {plan.name}: killed")
            return
        try:
            pid, how = control.stop(basedir, timeout=timeout, kill=True)
        except control.ControlError as err:
            raise LocalnetError(f"node {plan.name}: {err}") from None
        if pid is not None:
            self.log(f"  {plan.name}: {how}")

    def _global_id(self, basedir: Basedir) -> str | None:
        if node_pid(basedir) is None:
            return None
        code, envelope = api(basedir, "identity_get", timeout=5.0)
        if code != 200:
            return None
        return envelope.get("result", {}).get("global_id")
