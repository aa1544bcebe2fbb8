"""Upload and download through a router against the direct path, measured in the same run (issue 16).

Usage::

    python scripts/bench_relay.py [--size 32MB] [--rounds 2] [--route-bandwidth MIB_PER_S] [--keep]

A localnet of real node processes: an identity server, one router, three
suppliers (reachable), ``customer-1`` (reachable: its packets go direct) and
``customer-2`` (behind NAT: no listening port, every packet goes through the
router).  Both hire the same three suppliers.  Each round uploads the same
file of random bytes from each customer (``file_upload_start``, answered when
the transfer is DONE) and downloads it back (compared by SHA-256), direct and
routed alternately; the best round of each counts.  The router's relay
counters (bytes each way) show the routed transfer went through it.

``--route-bandwidth`` sets the router's ``services/proxy-server/route-bandwidth``
(MiB/s per route each way, 0: not shaped) before it starts; by default the
router keeps its default setting.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bitnode.interface.client import call_api  # noqa: E402
from bitnode.localnet.network import LocalNet, plan_network, write_settings  # noqa: E402
from bitnode.main.basedir import Basedir  # noqa: E402
from bitnode.main.fileutil import sha256_file  # noqa: E402

MiB = 1024 * 1024
DIRECT, ROUTED = "customer-1", "customer-2"


def parse_size(text: str) -> int:
    """``32MB`` / ``512KB`` / ``1GB`` / bytes."""
    text = text.strip().upper()
    for suffix, factor in (("GB", 1024 * MiB), ("MB", MiB), ("KB", 1024)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


class Bench:
    def __init__(self, workdir: str, say=print) -> None:
        self.workdir = workdir
        self.say = say
        self.net = LocalNet(os.path.join(workdir, "net"), log=lambda _line: None, documented_ports=False)
        self.nodes: dict = {}

    def api(self, name: str, method: str, timeout: float = 600.0, **kwargs):
        code, envelope = call_api(Basedir.at(self.nodes[name]["basedir"]), method, kwargs, timeout=timeout)
        if code != 200:
            raise SystemExit(f"{name} {method}: HTTP {code}: {envelope.get('errors')}")
        return envelope["result"]

    def up(self, route_bandwidth: float | None) -> None:
        plans = plan_network(self.net.directory, 3, 2, False, routers=1, customers_behind_nat=1)
        for plan in plans:
            Basedir.at(plan.basedir).create()
        self.net.save(plans)
        if route_bandwidth is not None:
            router = next(plan for plan in plans if plan.name == "router-1")
            write_settings(Basedir.at(router.basedir),
                           {"services/proxy-server/route-bandwidth": int(route_bandwidth * MiB)})
        started = time.monotonic()
        data = self.net.up(suppliers=3, customers=2, key_size=2048, timeout=180.0, customers_behind_nat=1)
        self.nodes = {node["name"]: node for node in data["nodes"]}
        self.say(f"localnet up in {time.monotonic() - started:.1f}s: {', '.join(self.nodes)}")
        for name, mode in ((DIRECT, "direct"), (ROUTED, "routed")):
            got = self.api(name, "network_status", proxy=True)["proxy"]["mode"]
            if got != mode:
                raise SystemExit(f"{name} is {got}, expected {mode}")

    def transfer(self, name: str, local: str, round_no: int) -> dict:
        me = self.nodes[name]["global_id"]
        remote = f"master${me}:bench-{round_no}.bin"
        started = time.monotonic()
        done = self.api(name, "file_upload_start", local_path=local, remote_path=remote, wait_result=True)
        up = time.monotonic() - started
        if done["state"] != "DONE":
            raise SystemExit(f"{name} upload: {done}")
        target = os.path.join(self.workdir, f"{name}-{round_no}.out")
        started = time.monotonic()
        done = self.api(name, "file_download_start", remote_path=remote, destination_path=target, wait_result=True)
        down = time.monotonic() - started
        if done["state"] != "DONE" or sha256_file(target) != sha256_file(local):
            raise SystemExit(f"{name} download came back different: {done}")
        os.unlink(target)
        return {"upload_s": up, "download_s": down}

    def router(self) -> dict:
        return self.api("router-1", "network_status", proxy=True)["proxy"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("32MB"), help="file size (default 32MB)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of direct + routed (the best counts)")
    parser.add_argument("--route-bandwidth", type=float, default=None, metavar="MIB_PER_S",
                        help="the router's per-route limit (0: none; default: the router's default setting)")
    parser.add_argument("--keep", action="store_true", help="leave the localnet directory (it is stopped anyway)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="bitnode-bench-relay-")
    bench = Bench(workdir)
    print(f"load average at start: {os.getloadavg()}")
    try:
        bench.up(args.route_bandwidth)
        local = os.path.join(workdir, "payload.bin")
        with open(local, "wb") as handle:
            for _ in range(0, args.size, MiB):
                handle.write(os.urandom(min(MiB, args.size)))
            handle.truncate(args.size)
        rows: dict[str, list[dict]] = {DIRECT: [], ROUTED: []}
        before = bench.router()
        for round_no in range(args.rounds):
            order = (DIRECT, ROUTED) if round_no % 2 == 0 else (ROUTED, DIRECT)
            for name in order:
                row = bench.transfer(name, local, round_no)
                rows[name].append(row)
                print(f"round {round_no + 1} {'direct' if name == DIRECT else 'routed'}: "
                      f"up {row['upload_s']:.2f}s, down {row['download_s']:.2f}s")
        after = bench.router()
        mib = args.size / MiB
        best = {name: {key: min(r[key] for r in rows[name]) for key in ("upload_s", "download_s")} for name in rows}
        result = {
            "size_mib": round(mib, 1),
            "route_bandwidth": after["server"]["limits"]["bandwidth"],
            "direct": {k: round(v, 2) for k, v in best[DIRECT].items()},
            "routed": {k: round(v, 2) for k, v in best[ROUTED].items()},
            "upload_mib_s": {"direct": round(mib / best[DIRECT]["upload_s"], 1),
                             "routed": round(mib / best[ROUTED]["upload_s"], 1)},
            "download_mib_s": {"direct": round(mib / best[DIRECT]["download_s"], 1),
                               "routed": round(mib / best[ROUTED]["download_s"], 1)},
            "router_bytes": {"in": after["bytes_in"] - before["bytes_in"],
                             "out": after["bytes_out"] - before["bytes_out"]},
        }
        print(f"\n{mib:.0f} MiB, best of {args.rounds}: upload direct {result['upload_mib_s']['direct']} MiB/s, "
              f"through the router {result['upload_mib_s']['routed']} MiB/s "
              f"({best[ROUTED]['upload_s'] / best[DIRECT]['upload_s']:.2f}x the time); download direct "
              f"{result['download_mib_s']['direct']} MiB/s, routed {result['download_mib_s']['routed']} MiB/s; "
              f"the router passed on {result['router_bytes']['out'] / MiB:.0f} MiB from and "
              f"{result['router_bytes']['in'] / MiB:.0f} MiB to the routed customer "
              f"(route-bandwidth {result['route_bandwidth'] / MiB:g} MiB/s, 0 = none)")
        if args.json:
            print(json.dumps(result))
        print(f"load average at the end: {os.getloadavg()}")
        return 0
    finally:
        try:
            bench.net.down()
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
