"""`make sim`: internet scale by simulation (one process, in-memory network, simulated clock).

Usage::

    python scripts/sim.py [--nodes 10000] [--hours 1] [--quick] [--out docs/sim] [--page docs/performance.md]
                          [--from-results] [--strict]

Runs the real DHT code (bitnode/sim/dht_churn.py) on a simulated network,
prints one PASS/FAIL line per target, writes SVG charts and ``results.json``
under ``--out`` and regenerates the simulation section of ``--page``.
``--quick`` is a small run (500 nodes, half an hour) for trying things out; it
writes nothing unless ``--out`` is given. ``--from-results`` only redraws the
charts and the page from the saved results. ``--strict`` exits 1 when a target
is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from bitnode.sim import report  # noqa: E402
from bitnode.sim.dht_churn import ChurnSettings, run_churn  # noqa: E402


def load_average() -> str:
    """The 1/5/15-minute load (the machine is shared: say how busy it was)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def dht_section(result: dict) -> str:
    """Markdown for the DHT churn run."""
    s = result["settings"]
    lines = [
        "### DHT under churn",
        "",
        f"{s['nodes']:,} real `DHTNode`s (k={s['k']}, alpha={s['alpha']}, RPC timeout {s['rpc_timeout']:g} s, "
        f"production refresh/republish intervals and rate limits) on a simulated network "
        f"({s['latency'] * 1000:.0f} ± {s['jitter'] * 1000:.0f} ms per datagram); "
        f"{s['churn_per_hour']:.0%} of the nodes leave without a word and as many new nodes join "
        f"(real bootstrap from one random live node) per simulated hour, for {s['hours']:g} h. "
        f"Measured: {s['lookups_per_hour']} lookups per hour by random nodes, half `get_value` of one of "
        f"{s['records']} records written before the churn, half `find_node` of a random id.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| value lookups that found the record | {result['success']:.2%} |",
        f"| find_node lookups whose first result is the true closest live node | {result['exact']:.2%} |",
        f"| median hops (all measured lookups) | {result['median_hops']:g} |",
        f"| hops histogram | {', '.join(f'{h}: {n}' for h, n in result['hops'].items())} |",
        f"| max routing state per node (contacts + replacement caches) | {result['state_max']} "
        f"(bound {result['state_bound']} = 2k·log2 N) |",
        f"| joins that failed to bootstrap | {result['joins_failed']} |",
        f"| datagrams simulated | {result['datagrams']:,} |",
        f"| wall time (setup) | {result['wall_seconds']:.0f} s ({result['setup_seconds']:.0f} s) |",
        f"| load average at the end | {result.get('load', '?')} |",
        "",
        "![lookup success](sim/dht-success.svg)",
        "![hops](sim/dht-hops.svg)",
        "![hops over time](sim/dht-hops-time.svg)",
        "![routing state](sim/dht-state.svg)",
        "",
    ]
    return "\n".join(lines)


def section(results: dict) -> str:
    """The whole simulation section of the performance page."""
    parts = [
        "## Internet scale, by simulation (`make sim`)",
        "",
        "One process, the real code, an in-memory network (`bitnode/dht/simnet.py`) and a simulated clock. "
        "Charts are plain SVG written by `bitnode/sim/svg.py` (standard library only: matplotlib would be a "
        "heavy dependency for a few line charts). Verdicts of the last run:",
        "",
        "```",
        *[line for part in results.values() for line in part.get("verdicts", ())],
        "```",
        "",
    ]
    if "dht" in results:
        parts.append(dht_section(results["dht"]))
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the simulations (or redraw from saved results); print the verdicts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="500 nodes for half an hour; writes nothing")
    parser.add_argument("--out", default=None, help="folder for charts and results (default docs/sim)")
    parser.add_argument("--page", default=None, help="markdown page with the sim section (default docs/performance.md)")
    parser.add_argument("--from-results", action="store_true", help="redraw charts and page from saved results")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    root = os.path.dirname(HERE)
    write = not args.quick or args.out is not None
    out = args.out or os.path.join(root, "docs", "sim")
    page = args.page or os.path.join(root, "docs", "performance.md")
    if args.from_results:
        with open(os.path.join(out, report.RESULTS), encoding="utf-8") as f:
            results = json.load(f)
    else:
        nodes, hours = (500, 0.5) if args.quick else (args.nodes, args.hours)
        started = time.perf_counter()
        print(f"sim: DHT of {nodes} nodes, {hours:g} simulated hour(s); load {load_average()}", flush=True)
        dht = run_churn(ChurnSettings(nodes=nodes, hours=hours, seed=args.seed),
                        progress=lambda text: print(text, flush=True)).to_dict()
        dht["load"] = load_average()
        results = {"dht": dht}
        print(f"sim: done in {time.perf_counter() - started:.0f} s; load {load_average()}", flush=True)
    charts = report.dht_charts(results["dht"]) if "dht" in results else {}
    if write:
        report.write(out, results, charts)
        try:
            with open(page, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            text = "# Performance\n"
        with open(page, "w", encoding="utf-8") as f:
            f.write(report.replace_section(text, section(results)))
        print(f"sim: charts and results in {out}, section in {page}")
    lines = [line for part in results.values() for line in part.get("verdicts", ())]
    print("\n".join(lines))
    return 1 if args.strict and any(line.startswith("FAIL") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
