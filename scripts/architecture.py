"""The architecture of bitnode, read from the code: layers, the import graph, services and their dependencies.

Usage::

    python scripts/architecture.py [--out docs/architecture.md] [--check]

Writes ``docs/architecture.md`` (``make docs`` runs it): the layers with their
packages, every service with the dependencies its class declares (the same
graph the service driver starts from), which services each API module calls,
and the path of one upload from the API to a supplier's disk.
``tests/test_architecture.py`` checks the import graph against the layers and
that the file is current; ``--check`` exits 1 when it is not.

The layer table here is the one DESIGN.md names; a module imports only from
its own layer or a lower one (type-only imports included), and packages form
no cycle.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import sys
from collections import defaultdict
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: make the repository's packages importable
    sys.path.insert(0, REPO)

DEFAULT_OUT = os.path.join(REPO, "docs", "architecture.md")

#: Layers, lowest first: number -> (name, packages or top-level modules, what lives there).
LAYERS: dict[int, tuple[str, tuple[str, ...], str]] = {
    1: ("automats", ("automats",), "the state-machine framework; imports nothing from bitnode"),
    2: ("foundation", ("bitnode", "bitnode.errors", "bitnode.globalid", "bitnode.boundedjson", "bitnode.main",
                       "bitnode.crypt", "bitnode.services"),
        "errors, names and ids, settings, basedir, events, sqlite and file helpers, crypto, the service "
        "framework (base, driver, declared dependencies, NodeContext)"),
    3: ("identity and wire", ("bitnode.userid", "bitnode.transport", "bitnode.dht"),
        "identities and identity servers, packets, the gateway and its packet router, the Kademlia DHT"),
    4: ("network", ("bitnode.p2p",), "network_connector, online status, STUN"),
    5: ("storage and market", ("bitnode.storage", "bitnode.supplier", "bitnode.customer"),
        "catalog, encrypt+erasure jobs, backups; the supplier's desk; hiring suppliers (storage declares "
        "the ports the market provides)"),
    6: ("social", ("bitnode.chat", "bitnode.access"), "messages and nicknames; keys, friends, shares, groups"),
    7: ("composition and interface", ("bitnode.app", "bitnode.node", "bitnode.runner", "bitnode.interface"),
        "the composition root, the Node, twistd glue, the API server, routes, CLI"),
    8: ("tools", ("bitnode.localnet", "bitnode.sim", "scripts"),
        "localnet, the simulations (make sim) and the runnable scripts"),
}
LAYER_OF: dict[str, int] = {package: number for number, (_, packages, _) in LAYERS.items() for package in packages}


# --- the import graph ---------------------------------------------------------------------------


def module_name(path: str) -> str:
    """``bitnode/storage/ports.py`` -> ``bitnode.storage.ports``."""
    parts = os.path.relpath(path, REPO)[:-len(".py")].split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def source_modules() -> dict[str, str]:
    """Every module of the layered code (automats/, bitnode/, scripts/): dotted name -> file."""
    found = {}
    for top in ("automats", "bitnode", "scripts"):
        for folder, _, files in os.walk(os.path.join(REPO, top)):
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    found[module_name(path)] = path
    return found


def imports_of(path: str, known: set[str]) -> set[str]:
    """The known modules ``path`` imports anywhere in the file (in functions and TYPE_CHECKING blocks too)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    out = set()
    for name in names:
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in known:
            out.add(name)
    return out


def package_of(module: str) -> str:
    """The unit of the layer table a module belongs to (``bitnode.storage.ports`` -> ``bitnode.storage``)."""
    parts = module.split(".")
    if parts[0] in ("automats", "scripts"):
        return parts[0]
    return ".".join(parts[:2])


def import_graph() -> dict[str, set[str]]:
    """module -> the modules it imports."""
    modules = source_modules()
    known = set(modules)
    return {name: imports_of(path, known) for name, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a lower layer to a higher one, as text."""
    wrong = []
    for module, targets in sorted(graph.items()):
        layer = LAYER_OF.get(package_of(module))
        for target in sorted(targets):
            target_layer = LAYER_OF.get(package_of(target))
            if layer is not None and target_layer is not None and target_layer > layer:
                wrong.append(f"{module} ({LAYERS[layer][0]}) imports {target} ({LAYERS[target_layer][0]})")
    return wrong


def package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """package -> the other packages it imports."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module, targets in graph.items():
        for target in targets:
            if package_of(target) != package_of(module):
                edges[package_of(module)].add(package_of(target))
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one package (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


# --- services and the API --------------------------------------------------------------------------


def _path(module: str) -> str:
    return module.replace(".", "/") + ".py"


def _kind_name(kind: type) -> str:
    from bitnode.services.deps import is_service_class

    return f"`{kind.name}`" if is_service_class(kind) else f"{kind.__name__} (port)"


def services_section() -> list[str]:
    """The services table and the dependency graph, from the service classes' declarations."""
    from bitnode.app import SERVICES
    from bitnode.services.deps import resolve

    graph = resolve(SERVICES)
    lines = [
        "## Services and their declared dependencies",
        "",
        "From the service classes in `bitnode/app.py: SERVICES` (the driver resolves the same declarations,",
        "`bitnode/services/deps.py`), in start-up order. *requires*: must run first, and stopping it stops",
        "this one; *optional*: used while it runs, `None` otherwise. A port is a small Protocol declared by",
        "the layer that needs it and provided by a service of a higher one.",
        "",
        "| service | class | requires | optional | provides | on by default |",
        "|---|---|---|---|---|---|",
    ]
    for name in graph.order:
        cls = graph.classes[name]
        requires = ", ".join(f"{key}: {_kind_name(kind)}" for key, kind in cls.requires.items()) or "—"
        optional = ", ".join(f"{key}: {_kind_name(kind)}" + (f" → `{graph.optional[name][key]}`"
                                                              if key in graph.optional[name]
                                                              and not _is_service(kind) else "")
                             for key, kind in cls.optional.items()) or "—"
        provides = ", ".join(port.__name__ for port in cls.provides) or "—"
        lines.append(f"| `{name}` | `{cls.__name__}` ({_path(cls.__module__)}) | {requires} | {optional} | "
                     f"{provides} | {'yes' if cls.enabled_by_default else 'no'} |")
    lines += ["", "```mermaid", "graph BT"]
    for name in graph.order:
        for dep in graph.depends(name):
            lines.append(f"  {name} --> {dep}")
        for dep in graph.uses(name):
            lines.append(f"  {name} -.-> {dep}")
    lines += ["```", "", "Solid: requires; dotted: optional.", ""]
    return lines


def _is_service(kind: type) -> bool:
    from bitnode.services.deps import is_service_class

    return is_service_class(kind)


def api_section(graph: dict[str, set[str]]) -> list[str]:
    """Which module implements each group of API methods, and which services it calls."""
    from bitnode.app import SERVICES
    from bitnode.interface.routes import ROUTES

    service_modules = {cls.__module__: cls.name for cls in SERVICES}
    by_module: dict[str, list[str]] = defaultdict(list)
    for route in ROUTES:
        by_module[route.impl].append(route.name)
    lines = [
        "## Where an API method goes",
        "",
        "Every route in `bitnode/interface/routes.py` names its module (`impl=`); that module checks the",
        "arguments and calls the services below (it imports their classes and asks the driver for the",
        "running one: `node.service_driver.running(BackupsService)`).",
        "",
        "| API module | methods | services it calls |",
        "|---|---|---|",
    ]
    for module in sorted(by_module):
        used = sorted(service_modules[target] for target in graph.get(module, ()) if target in service_modules)
        names = ", ".join(f"`{n}`" for n in by_module[module])
        lines.append(f"| {_path(module)} | {names} | {', '.join(f'`{u}`' for u in used) or '— (the node itself)'} |")
    return lines + [""]


@dataclass(frozen=True)
class Hop:
    """One step of the upload path: where (module, attribute path) and what happens there."""

    module: str
    qualname: str
    what: str


#: The path of one upload, from the API call to the supplier's disk (each hop is checked to exist).
UPLOAD_PATH = (
    Hop("bitnode.interface.routes", "ROUTES", '`R("file_upload_start", "POST", "file/upload/start/v1", ..., '
        'impl=API_FILES)`: the route; REST, WebSocket and the CLI dispatch to `API.file_upload_start`'),
    Hop("bitnode.interface.api_files", "FilesMethods.file_upload_start",
        "checks the local and remote paths, asks the driver for the running `service_backups`"),
    Hop("bitnode.storage.backups_service", "BackupsService.check_remote_path",
        "the key must be mine (its `identity` dependency's key store)"),
    Hop("bitnode.storage.queries", "FileQueries.upload",
        "a file becomes one upload; a folder is walked (`storage/folders.py`) into one upload per file"),
    Hop("bitnode.storage.transfers", "TransferManager.start_upload",
        "queues the upload (at most `max-uploads` at once) and starts an upload job"),
    Hop("bitnode.storage.jobs", "UploadJob", "the job machine: a new catalog version, segment after segment"),
    Hop("bitnode.storage.backups_service", "BackupsService.placement",
        "which supplier holds which position: the `SupplierProvider` port (optional dependency `suppliers`)"),
    Hop("bitnode.storage.ports", "SupplierProvider", "the port storage declares"),
    Hop("bitnode.customer.customer_service", "CustomerService.server",
        "provides it: one `RemoteStorageServer` per hired supplier (fire_hire keeps the roster)"),
    Hop("bitnode.storage.uploader", "Uploader",
        "each segment encrypted (AES-256-GCM, in the thread pool), split k-of-n by zfec "
        "(`bitnode/storage/k_of_n.py` says k), one block per position"),
    Hop("bitnode.customer.remote_store", "RemoteStorageServer.store_block",
        "a `Data` packet to the supplier of that position"),
    Hop("bitnode.transport.gateway", "Gateway.request", "signs and sends it, waits for the Ack"),
    Hop("bitnode.transport.router", "PacketRouter.handler_for",
        "on the supplier's node: the route `service_supplier` added for the storage commands"),
    Hop("bitnode.supplier.supplier_service", "SupplierService.handle_packet",
        "the sender must be the owner; counted, rate-limited"),
    Hop("bitnode.supplier.desk", "SupplierDesk.handle", "the customer's contract and quota"),
    Hop("bitnode.supplier.disk_store", "DiskStore.store_block",
        "written under `basedir/customers/<customer>/<version>/<segment>/<block>` (temp + fsync + rename), "
        "then Ack"),
)


def check_hop(hop: Hop) -> str | None:
    """None when ``hop`` names something that exists, else why not."""
    try:
        target = importlib.import_module(hop.module)
    except ImportError as err:
        return f"{hop.module}: {err}"
    for part in hop.qualname.split("."):
        if not hasattr(target, part):
            return f"{hop.module}.{hop.qualname}: no {part}"
        target = getattr(target, part)
    return None


def upload_section() -> list[str]:
    """The path of one upload."""
    lines = ["## The path of one upload: `file_upload_start` to a supplier's disk", ""]
    for number, hop in enumerate(UPLOAD_PATH, 1):
        lines.append(f"{number}. `{_path(hop.module)}` `{hop.qualname}` — {hop.what}")
    return lines + [""]


def layers_section(graph: dict[str, set[str]]) -> list[str]:
    """The layer table (the packages that have modules; no counts, so a new module needs no new map)."""
    present = {package_of(module) for module in graph}
    lines = [
        "## Layers",
        "",
        "Lowest first. A module imports only from its own layer or a lower one (type-only imports",
        "included) and packages form no cycle: `tests/test_architecture.py` fails otherwise. When it does,",
        "move the shared piece down, or declare a port in the lower layer that the higher one provides.",
        "",
        "| layer | packages | what lives there |",
        "|---|---|---|",
    ]
    for number, (name, packages, what) in LAYERS.items():
        listed = ", ".join(f"`{p}`" for p in packages if p in present)
        lines.append(f"| {number}. {name} | {listed} | {what} |")
    return lines + [""]


def render(graph: dict[str, set[str]] | None = None) -> str:
    """The whole of docs/architecture.md (``graph``: the import graph, when already read)."""
    graph = import_graph() if graph is None else graph
    lines = [
        "# bitnode architecture",
        "",
        "Generated from the code by `scripts/architecture.py` (`make docs`); `tests/test_architecture.py`",
        "fails when it is out of date. How to write a service, the packet router and the renamed modules:",
        "the docstrings of `bitnode/services/base.py`, `bitnode/transport/router.py` and `bitnode/app.py`.",
        "",
        "A node is `bitnode/app.py: build_node()`: the `Node` (`bitnode/node.py`: settings, event bus, automats,",
        "thread pool, the service driver) with its services and, as a child service, the API server",
        "(`bitnode/interface/api_server.py`). A service sees a `NodeContext` (`self.ctx`) and the neighbours",
        "its class declares (`self.deps`); no service finds another by a name string.",
        "",
    ]
    lines += layers_section(graph)
    lines += services_section()
    lines += api_section(graph)
    lines += upload_section()
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Write docs/architecture.md (``--check``: only say whether it is current)."""
    parser = argparse.ArgumentParser(description="Generate docs/architecture.md from the code.")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="exit 1 when the file is not current")
    args = parser.parse_args(argv)
    text = render()
    problems = [problem for problem in map(check_hop, UPLOAD_PATH) if problem]
    for problem in problems:
        print(f"upload path: {problem}", file=sys.stderr)
    try:
        with open(args.out, encoding="utf-8") as handle:
            current = handle.read() == text
    except FileNotFoundError:
        current = False
    if args.check:
        print(f"{args.out} is {'current' if current else 'out of date: run make docs'}")
        return 0 if current and not problems else 1
    if not current:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
