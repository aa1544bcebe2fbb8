"""Generate docs/ from the code: the API reference, the OpenAPI document and the automat diagrams.

Usage::

    python scripts/gen_docs.py [--out DIR] [--package bitnode]

Writes, under ``DIR`` (default: ``docs/`` of this repository):

* ``api.md``: every method of :data:`bitnode.interface.routes.ROUTES`, grouped
  by area, with verb, path, parameters, description and whether the node
  implements it or answers 501 (decided exactly as the dispatcher decides);
  then the legacy aliases, the envelope, authentication and the WebSocket
  protocol;
* ``openapi.json``: :func:`bitnode.interface.openapi.build_openapi`;
* ``automats/<name>.dot`` for every :class:`automats.Automat` subclass defined
  in a module of ``--package``, an ``.svg`` beside it when Graphviz ``dot`` is
  installed, and ``automats/README.md`` listing them.

Output is deterministic (sorted, no dates), so running it twice changes
nothing; diagram files of machines that no longer exist are removed. A module
that fails to import is reported and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from automats import Automat
from automats.diagram import find_dot, load_machines, to_dot
from bitnode.interface.api import API
from bitnode.interface.dispatch import Dispatcher
from bitnode.interface.openapi import area_of, build_openapi, json_default
from bitnode.interface.routes import LEGACY, ROUTES, Alias, Param, Route
from bitnode.main.schema import SCHEMA

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "docs")

AREA_TITLES = {
    "process": "Process", "config": "Settings", "identity": "Identity", "key": "Keys", "file": "Files",
    "share": "Shares", "group": "Groups", "friend": "Friends", "user": "Users", "message": "Messages",
    "supplier": "Suppliers", "customer": "Customers", "space": "Space", "service": "Services",
    "packet": "Packets", "transfer": "Transfers", "connection": "Connections", "stream": "Streams",
    "queue": "Queues", "event": "Events", "network": "Network", "dht": "DHT", "automat": "Automats",
}

IMPLEMENTED = "implemented"
NOT_YET = "501 not implemented yet"
BEYOND = "implemented, beyond the spec"


# --- state machines -------------------------------------------------------------


@dataclass(frozen=True)
class MachineDoc:
    """One machine class and the file stem its diagram is written under."""

    cls: type[Automat]
    stem: str


def find_machines(package: str) -> tuple[list[type[Automat]], list[str]]:
    """Import every module of ``package`` and collect the machine classes each defines.

    Returns the classes sorted by (name, module, class) and the import
    errors as text (one per module that failed).
    """
    root = importlib.import_module(package)
    names = [package]
    errors: list[str] = []

    def walk_error(name: str) -> None:
        err = sys.exc_info()[1]
        errors.append(f"{name}: {type(err).__name__}: {err}")

    if hasattr(root, "__path__"):
        walked = pkgutil.walk_packages(root.__path__, package + ".", onerror=walk_error)
        names += sorted(info.name for info in walked)
    found: dict[tuple[str, str], type[Automat]] = {}
    for name in names:
        try:
            classes = load_machines(name)
        except LookupError:
            continue
        except Exception as err:  # noqa: BLE001 - any import failure is reported, not fatal for the rest
            errors.append(f"{name}: {type(err).__name__}: {err}")
            continue
        for cls in classes:
            found[(cls.__module__, cls.__qualname__)] = cls
    machines = sorted(found.values(), key=lambda c: (c.name, c.__module__, c.__qualname__))
    return machines, errors


def machine_docs(machines: Iterable[type[Automat]]) -> list[MachineDoc]:
    """File stems: the machine name, qualified by module when two machines share a name."""
    machines = list(machines)
    counts: dict[str, int] = {}
    for cls in machines:
        counts[cls.name] = counts.get(cls.name, 0) + 1
    return [MachineDoc(cls, cls.name if counts[cls.name] == 1 else f"{cls.name}.{cls.__module__}")
            for cls in machines]


def _render_svg(dot_path: str, svg_path: str, dot: str) -> str | None:
    result = subprocess.run([dot, "-Tsvg", "-o", svg_path, dot_path], capture_output=True, check=False)
    if result.returncode != 0:
        return result.stderr.decode("utf-8", "replace").strip() or f"dot exited with {result.returncode}"
    return None


def write_automats(out_dir: str, machines: list[type[Automat]], dot: str | None) -> tuple[list[str], list[str]]:
    """Write the .dot (and .svg) files and README.md; remove stale diagrams. Returns (written, errors)."""
    os.makedirs(out_dir, exist_ok=True)
    docs = machine_docs(machines)
    written, errors = [], []
    keep = {"README.md"}
    for doc in docs:
        dot_path = os.path.join(out_dir, doc.stem + ".dot")
        _write(dot_path, to_dot(doc.cls))
        written.append(dot_path)
        keep.add(doc.stem + ".dot")
        if dot is not None:
            svg_path = os.path.join(out_dir, doc.stem + ".svg")
            problem = _render_svg(dot_path, svg_path, dot)
            if problem:
                errors.append(f"{doc.stem}.svg: {problem}")
            else:
                written.append(svg_path)
                keep.add(doc.stem + ".svg")
    for name in sorted(os.listdir(out_dir)):
        if name.endswith((".dot", ".svg")) and name not in keep:
            os.unlink(os.path.join(out_dir, name))
    readme = os.path.join(out_dir, "README.md")
    _write(readme, automats_readme(docs, dot is not None))
    written.append(readme)
    return written, errors


def automats_readme(docs: list[MachineDoc], with_svg: bool) -> str:
    """The index of the diagrams."""
    lines = [
        "# State machine diagrams",
        "",
        "Generated by `make docs` (`scripts/gen_docs.py`) from the transition tables of every",
        "`automats.Automat` subclass in the bitnode package. Do not edit by hand.",
        "",
        "Each state is a box (the initial one has a double border); each row of the table is an",
        "edge labelled `event [guard] / actions`; timers are listed under the states they run in.",
        "The same tables at run time: the `automats_list` API method (state, timers, recent transitions).",
        "",
    ]
    if not docs:
        lines += ["No state machines are defined in the bitnode package yet.", ""]
    else:
        lines += ["| Machine | Class | States | Rows | Diagram |", "|---|---|---|---|---|"]
        for doc in docs:
            cls = doc.cls
            links = f"[{doc.stem}.dot]({doc.stem}.dot)"
            if with_svg:
                links += f", [{doc.stem}.svg]({doc.stem}.svg)"
            lines.append(f"| {cls.name} | `{cls.__module__}.{cls.__qualname__}` | {len(cls.states())} "
                         f"| {len(cls.table())} | {links} |")
        lines.append("")
    if not with_svg:
        lines += [
            "SVG files are not included: Graphviz `dot` was not installed where these docs were",
            "generated. Install Graphviz and run `make docs` again, or render one diagram with",
            "`dot -Tsvg NAME.dot -o NAME.svg`.",
            "",
        ]
    return "\n".join(lines)


# --- the API reference ------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default_text(param: Param) -> str:
    if param.required:
        return "required"
    return f"`{json.dumps(json_default(param))}`"


def _params_table(params: tuple[Param, ...], in_path: tuple[str, ...] = ()) -> list[str]:
    if not params:
        return ["No parameters.", ""]
    lines = ["| Parameter | Type | Default | Aliases | Description |", "|---|---|---|---|---|"]
    for p in params:
        notes = [p.description] if p.description else []
        if p.name in in_path:
            notes.insert(0, "in the path")
        aliases = ", ".join(f"`{a}`" for a in p.aliases)
        lines.append(f"| `{p.name}` | {p.type.name} | {_default_text(p)} | {aliases} | {_cell('; '.join(notes))} |")
    lines.append("")
    return lines


def _status(is_built: bool, route: Route | Alias | None = None) -> str:
    if is_built and getattr(route, "beyond_spec", False):
        return BEYOND
    return IMPLEMENTED if is_built else NOT_YET


def _verbs(target: Route | Alias) -> str:
    return ", ".join(target.verbs)


def _anchor(name: str) -> str:
    """The GitHub-style anchor of a heading that is a method name."""
    return name.lower()


def group_routes(routes: Iterable[Route]) -> list[tuple[str, list[Route]]]:
    """Routes by area (first path segment), areas in the order they first appear in the table."""
    areas: dict[str, list[Route]] = {}
    for route in routes:
        areas.setdefault(area_of(route.path), []).append(route)
    return list(areas.items())


def _our_behaviour(name: str) -> list[str]:
    """What bitnode's method says about itself (its docstring), as a quoted paragraph."""
    doc = inspect.getdoc(getattr(API, name, None))
    if not doc:
        return []
    return [f"> **In bitnode:** {line}" if index == 0 else f"> {line}" if line else ">"
            for index, line in enumerate(doc.splitlines())] + [""]


def render_api_md(implemented: Callable[[Route | Alias], bool]) -> str:
    """The whole of docs/api.md."""
    defaults = {option.key: option.default for option in SCHEMA}
    http_port = defaults.get("interface/api/http-port", 8180)
    ws_port = defaults.get("interface/api/ws-port", 8280)
    groups = [(AREA_TITLES.get(area, area.capitalize()), routes) for area, routes in group_routes(ROUTES)]
    built = sum(1 for r in ROUTES if implemented(r))
    lines = [
        "# bitnode API reference",
        "",
        "Generated by `make docs` (`scripts/gen_docs.py`) from `bitnode/interface/routes.py`, the one",
        "route table that REST, WebSocket, the CLI and `openapi.json` are built from. Do not edit by hand.",
        "",
        f"{len(ROUTES)} methods, {built} implemented; the other {len(ROUTES) - built} answer "
        "HTTP 501 `<method> is not implemented yet` until their subsystem is built. "
        f"Methods marked \"beyond the spec\" go further than the spec: {sum(1 for r in ROUTES if r.beyond_spec)}.",
        f"HTTP on `http://127.0.0.1:{http_port}/`, WebSocket on `ws://127.0.0.1:{ws_port}/` (settings",
        "`interface/api/http-port` and `interface/api/ws-port`). The machine-readable form is",
        "[openapi.json](openapi.json) (OpenAPI 3.1).",
        "",
        "GET methods take their parameters in the query string; POST, PUT and DELETE take a JSON object",
        "body (query-string parameters are accepted too). `{placeholders}` in a path are parameters.",
        "Methods listed as \"GET, POST\" change state although the spec made them GET; they accept both.",
        "",
        "## Contents",
        "",
    ]
    for title, routes in groups:
        lines.append(f"- [{title}](#{title.lower()}): " + ", ".join(f"`{r.name}`" for r in routes))
    lines += [
        "- [Legacy method names](#legacy-method-names)",
        "- [Envelope and errors](#envelope-and-errors)",
        "- [Authentication](#authentication)",
        "- [WebSocket protocol](#websocket-protocol)",
        "",
    ]
    for title, routes in groups:
        lines += [f"## {title}", "", "| Method | Verb | Path | Status |", "|---|---|---|---|"]
        for r in routes:
            lines.append(f"| [`{r.name}`](#{_anchor(r.name)}) | {_verbs(r)} | `/{r.path}` | {_status(implemented(r), r)} |")
        lines.append("")
        for r in routes:
            also = " (also POST)" if len(r.verbs) > 1 else ""
            lines += [
                f"### {r.name}",
                "",
                f"`{r.verb} /{r.path}`{also} — **{_status(implemented(r), r)}**",
                "",
                r.description or "(no description in the spec)",
                "",
                *_our_behaviour(r.name),
                *_params_table(r.params, r.path_params),
            ]
    lines += legacy_section(implemented)
    lines += static_sections(http_port, ws_port)
    return "\n".join(lines)


def legacy_section(implemented: Callable[[Route | Alias], bool]) -> list[str]:
    """The table of legacy names and where each is routed."""
    v1 = {r.name for r in ROUTES}
    lines = [
        "## Legacy method names",
        "",
        "The older method set (`spec/bitdust-api-legacy.txt`) is routed to the same code. Each name is",
        "callable by name (WebSocket `method`, `bitnode api NAME`) and over HTTP as",
        "`GET` or `POST /legacy/<name>/v1`. Parameters are the legacy ones; renamed ones are translated.",
        "",
        "| Legacy name | Routed to | Parameters | Translation | Status | Description |",
        "|---|---|---|---|---|---|",
    ]
    for alias in sorted(LEGACY, key=lambda a: a.name):
        if alias.target in v1:
            target = f"[`{alias.target}`](#{_anchor(alias.target)})"
        else:
            target = "legacy-only method"
        params = ", ".join(f"`{p.name}`" + ("" if p.required else f"={_default_text(p)}") for p in alias.params)
        notes = [f"`{old}` → `{new}`" for old, new in alias.rename]
        notes += [f"`{key}`={json.dumps(value)}" for key, value in alias.fixed]
        notes += [f"`{name}` ignored" for name in alias.ignored]
        if alias.name in v1:
            status = "shadowed by the v1 method of the same name"
        else:
            status = _status(implemented(alias))
        lines.append(f"| `{alias.name}` | {target} | {params} | {', '.join(notes)} | {status} "
                     f"| {_cell(alias.description)} |")
    lines.append("")
    return lines


def static_sections(http_port: int, ws_port: int) -> list[str]:
    """Envelope, authentication and WebSocket protocol (facts of rest.py, auth.py, websocket.py)."""
    return [
        "## Envelope and errors",
        "",
        "Every answer is JSON. Success (HTTP 200):",
        "",
        "```json",
        '{"status": "OK", "result": {"alive": true, "ready": true}, "execution": "0.0012"}',
        "```",
        "",
        "`result` is a dict or a list as described for the method; `execution` is the seconds spent.",
        "Failure:",
        "",
        "```json",
        '{"status": "ERROR", "errors": ["config_get: missing parameter \'key\'"], "execution": "0.0001"}',
        "```",
        "",
        "with the HTTP code from the one error table (`bitnode/errors.py`):",
        "",
        "| Code | Meaning |",
        "|---|---|",
        "| 400 | bad request: unknown, missing or malformed parameter, malformed JSON body |",
        "| 401 | missing or wrong `api_secret` |",
        "| 403 | foreign `Host` or `Origin` header (browser CSRF / DNS rebinding), or not allowed |",
        "| 404 | unknown method or path, or the named thing does not exist |",
        "| 405 | known path, wrong verb (the `Allow` header lists the right ones) |",
        "| 409 | conflicts with the current state |",
        "| 429 | rate limit hit (`Retry-After` header, seconds); settings `interface/api/rate-limit`, `rate-burst` |",
        "| 500 | unexpected internal error (logged with its traceback on the node, never sent) |",
        "| 501 | the method is in the spec but not implemented yet |",
        "| 503 | a needed subsystem or peer is unavailable, or timed out |",
        "| 507 | not enough storage space |",
        "",
        "## Authentication",
        "",
        "The API listens on 127.0.0.1 only (setting `interface/api/interface`). Every request must carry",
        "the token stored in `basedir/metadata/apisecret` (created at first start, mode 0600):",
        "",
        "- HTTP: header `api_secret: <token>`;",
        "- WebSocket: the same header on the upgrade request (preferred), or a first message",
        "  `{\"command\": \"auth\", \"api_secret\": \"<token>\"}` within `interface/api/ws-auth-timeout`",
        "  seconds (nothing else is answered or pushed before it; a wrong token closes the connection),",
        "  or `ws://127.0.0.1:%d/?api_secret=<token>` as BitDust's clients send it." % ws_port,
        "",
        "The token is compared in constant time and never written to the log (it is redacted from",
        "handshake URLs, headers and access-log lines at every `logs/debug-level`). Requests whose",
        "`Host` is not a local name, or that carry a foreign `Origin`, are refused with 403 before the",
        "token is looked at. All of this happens as soon as a request's headers arrive: a refused",
        "request is answered at once and its body is never stored; a body over",
        "`interface/api/max-body-bytes` is a 413 (JSON nested deeper than `interface/api/max-json-depth`",
        "a 400). `process_info` shows these limits and what they refused under `api_limits`. The",
        "`bitnode` command reads the token and the node's addresses from the basedir itself:",
        "",
        "```sh",
        "curl -H \"api_secret: $(cat ~/.bitnode/metadata/apisecret)\" http://127.0.0.1:%d/process/health/v1" % http_port,
        "bitnode api process_health",
        "```",
        "",
        "## WebSocket protocol",
        "",
        "Send one JSON object per text frame:",
        "",
        "```json",
        '{"command": "api_call", "method": "process_health", "kwargs": {}, "call_id": 7}',
        "```",
        "",
        "`method` is any method name above (or a legacy name), `kwargs` its parameters. The answer goes",
        "to the calling client only, with the same envelope as HTTP:",
        "",
        "```json",
        '{"type": "api_call", "call_id": 7, "payload": {"status": "OK", "result": {"alive": true, "ready": true}}}',
        "```",
        "",
        "Every event of the node is pushed to every connected client with a monotonically increasing",
        "sequence id:",
        "",
        "```json",
        '{"type": "event", "seq": 42, "payload": {"event_id": "automat-state-changed", "data": {}}}',
        "```",
        "",
        "To resume after a disconnection, connect with `?since=N` on the URL or send",
        "`{\"command\": \"resume\", \"since\": N}`: buffered events after N are replayed first; if some",
        "were already dropped from the buffer a `{\"type\": \"events_missed\", ...}` frame says how many.",
        "A malformed frame is answered with `{\"type\": \"error\", \"payload\": <error envelope>}` (or",
        "`\"type\": \"api_call\"` when it had a `call_id`). Binary frames and frames over 1 MiB are refused.",
        "HTTP clients can long-poll the same events with `event_listen`.",
        "",
    ]


# --- putting it together -------------------------------------------------------------


def _write(path: str, text: str) -> bool:
    """Write only when the content changes, so an unchanged tree keeps its timestamps; True if written."""
    data = text.encode("utf-8")
    try:
        with open(path, "rb") as handle:
            if handle.read() == data:
                return False
    except FileNotFoundError:
        pass
    with open(path, "wb") as handle:
        handle.write(data)
    return True


def implemented_check() -> Callable[[Route | Alias], bool]:
    """The dispatcher's own test (a callable attribute of API), applied to the API class."""
    return Dispatcher(API).is_implemented


def generate(out_dir: str, package: str = "bitnode", dot: str | None = None) -> tuple[list[str], list[str]]:
    """Write every generated doc under ``out_dir``; returns (files written, problems)."""
    os.makedirs(out_dir, exist_ok=True)
    implemented = implemented_check()
    api_md = os.path.join(out_dir, "api.md")
    _write(api_md, render_api_md(implemented))
    openapi = os.path.join(out_dir, "openapi.json")
    _write(openapi, json.dumps(build_openapi(implemented), indent=2, sort_keys=True) + "\n")
    machines, errors = find_machines(package)
    written, svg_errors = write_automats(os.path.join(out_dir, "automats"), machines, dot)
    return [api_md, openapi, *written], errors + svg_errors


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exit status 1 if any module failed to import or render."""
    parser = argparse.ArgumentParser(description="Generate docs/ (API reference, OpenAPI, automat diagrams).")
    parser.add_argument("--out", default=DEFAULT_OUT, help="output directory (default: docs/ of the repository)")
    parser.add_argument("--package", default="bitnode", help="package searched for state machines")
    args = parser.parse_args(argv)
    dot = find_dot()
    written, problems = generate(args.out, args.package, dot)
    print(f"generated {len(written)} files under {os.path.relpath(args.out)}")
    if dot is None:
        print("note: Graphviz 'dot' is not installed; diagrams are written as .dot only (no .svg)")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
