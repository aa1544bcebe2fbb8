"""Render :class:`~automats.Automat` tables as Graphviz DOT (and SVG).

Usage::

    python -m automats.diagram MODULE:CLASS [-o FILE] [--svg FILE]
    python -m automats.diagram MODULE        [-o FILE] [--svg FILE]

With just ``MODULE`` every machine class defined in that module is drawn, one
cluster each, in one graph.  DOT goes to ``-o FILE`` or stdout.  ``--svg``
also runs Graphviz's ``dot`` to write an SVG; if ``dot`` is not installed
that is reported on stderr and the exit status is non-zero.

In the drawing each state is a node; the initial state has a double border
and an arrow from a dot.  Each row is an edge labelled
``event [guard] / action, action``.  Rows for ``"*"`` (any state) start from
a dashed "any state" node; a ``"*"`` next state is a loop on that node.
Timers are listed under the states in which they run.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import subprocess
import sys
from collections.abc import Sequence

from automats.machine import ANY, Automat

__all__ = ["find_dot", "load_machines", "main", "to_dot", "to_dot_many"]

_START = "__start__"
_ANY_NODE = "__any_state__"


def _quote(text: str) -> str:
    """Quote ``text`` as a DOT string (a label's ``\\n`` must be added after)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _label(*lines: str) -> str:
    """A quoted DOT label with one line per argument."""
    escaped = (_quote(line)[1:-1] for line in lines)
    return '"' + "\\n".join(escaped) + '"'


def _edge_label(event: str, guard: str | None, actions: Sequence[str], stay: bool = False) -> str:
    text = event
    if guard is not None:
        text += f" [{guard}]"
    if actions:
        text += " / " + ", ".join(actions)
    if stay:
        text += " (stay)"
    return text


def _body(cls: type[Automat], prefix: str, indent: str) -> list[str]:
    """The node and edge statements of one machine; node ids start with ``prefix``."""

    def node(state: str) -> str:
        return _quote(prefix + state)

    timers_in: dict[str, list[str]] = {}
    for event, (interval, states) in sorted(cls.timer_specs().items()):
        for state in states:
            timers_in.setdefault(state, []).append(f"{event} every {interval:g}s")
    lines = [
        f"{node(_START)} [shape=point, label=\"\"];",
        f"{node(_START)} -> {node(cls.initial or '')};",
    ]
    for state in sorted(cls.states()):
        attrs = [f"label={_label(state, *timers_in.get(state, []))}"]
        if state == cls.initial:
            attrs.append("peripheries=2")
        lines.append(f"{node(state)} [{', '.join(attrs)}];")
    rows = cls.table()
    if any(row.state == ANY for row in rows):
        lines.append(f"{node(_ANY_NODE)} [label=\"* (any state)\", style=\"rounded,dashed\"];")
    for row in rows:
        source = _ANY_NODE if row.state == ANY else row.state
        if row.next_state == ANY:
            target, stay = source, True
        else:
            target, stay = row.next_state, False
        label = _label(_edge_label(row.event, row.guard, row.actions, stay))
        style = ", style=dashed" if row.state == ANY else ""
        lines.append(f"{node(source)} -> {node(target)} [label={label}{style}];")
    return [indent + line for line in lines]


def to_dot(cls: type[Automat]) -> str:
    """Return a Graphviz DOT digraph of one machine class's table."""
    _check_machine(cls)
    lines = [
        f"digraph {_quote(cls.name)} {{",
        f"  label={_label(f'{cls.__qualname__} ({cls.name})')};",
        "  labelloc=t;",
        "  rankdir=LR;",
        "  node [shape=box, style=rounded, fontname=\"Helvetica\"];",
        "  edge [fontname=\"Helvetica\", fontsize=10];",
        *_body(cls, "", "  "),
        "}",
    ]
    return "\n".join(lines) + "\n"


def to_dot_many(classes: Sequence[type[Automat]], title: str = "automats") -> str:
    """Return one DOT digraph with a cluster per machine class (for a whole module)."""
    if not classes:
        raise ValueError("no machine classes to draw")
    lines = [
        f"digraph {_quote(title)} {{",
        "  rankdir=LR;",
        "  node [shape=box, style=rounded, fontname=\"Helvetica\"];",
        "  edge [fontname=\"Helvetica\", fontsize=10];",
    ]
    for cls in classes:
        _check_machine(cls)
        lines += [
            f"  subgraph {_quote('cluster_' + cls.__qualname__)} {{",
            f"    label={_label(f'{cls.__qualname__} ({cls.name})')};",
            *_body(cls, cls.__qualname__ + ":", "    "),
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _check_machine(cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Automat) and cls.table()):
        raise TypeError(f"{cls!r} is not an Automat subclass with transitions")


def load_machines(target: str) -> list[type[Automat]]:
    """Import ``MODULE:CLASS`` (one class) or ``MODULE`` (its machine classes).

    For a module, the concrete :class:`~automats.Automat` subclasses defined in
    it (not imported into it) are returned in definition order.  Raises
    ``ImportError``, ``AttributeError`` or ``TypeError`` on a bad target, and
    ``LookupError`` if a module defines no machine.
    """
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    if class_name:
        obj: object = module
        for part in class_name.split("."):
            obj = getattr(obj, part)
        _check_machine(obj)
        return [obj]  # type: ignore[list-item]
    found = [
        obj for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Automat) and obj.table()
        and obj.__module__ == module.__name__
    ]
    if not found:
        raise LookupError(f"module {module_name!r} defines no Automat subclass with transitions")
    return found


def find_dot() -> str | None:
    """Return the path of Graphviz's ``dot`` program, or ``None`` if it is not installed."""
    return shutil.which("dot")


def _write_svg(dot_source: str, path: str) -> int:
    dot = find_dot()
    if dot is None:
        print("automats.diagram: Graphviz 'dot' is not installed; cannot write SVG", file=sys.stderr)
        return 3
    result = subprocess.run(
        [dot, "-Tsvg", "-o", path], input=dot_source.encode("utf-8"), capture_output=True, check=False
    )
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip()
        print(f"automats.diagram: dot failed: {message}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 on success).

    Status 2 is a bad target, 3 is ``--svg`` without Graphviz, 1 is a
    Graphviz failure.  DOT is written even when the SVG step fails.
    """
    parser = argparse.ArgumentParser(
        prog="python -m automats.diagram",
        description="Render automats transition tables as Graphviz DOT.",
    )
    parser.add_argument("target", help="MODULE:CLASS, or MODULE to draw every machine defined in it")
    parser.add_argument("-o", "--output", metavar="FILE", help="write DOT to FILE instead of stdout")
    parser.add_argument("--svg", metavar="FILE", help="also render SVG to FILE with Graphviz 'dot'")
    args = parser.parse_args(argv)
    try:
        classes = load_machines(args.target)
    except (ImportError, AttributeError, TypeError, LookupError) as e:
        print(f"automats.diagram: {args.target}: {e}", file=sys.stderr)
        return 2
    source = to_dot(classes[0]) if len(classes) == 1 else to_dot_many(classes, args.target)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(source)
    else:
        sys.stdout.write(source)
    if args.svg:
        return _write_svg(source, args.svg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
