"""`make bench` / `make bench-quick`: the performance targets of issue 18, measured in one run.

Usage::

    python scripts/bench.py [--quick] [--sizes 16,512,2048] [--skip-api] [--skip-transfer] [--skip-small]
                            [--skip-rebuild] [--profile DIR] [--strict] [--requests N] [--rounds N] ...

What it measures (machines are noisy: the load average is printed at the start
and the end, and each figure that can be is shown as a ratio or a CPU cost
taken within this one run):

a. API: ``process_health`` round trips per second against a real node
   (:func:`bitnode.app.build_node`, its whole REST stack: Host/Origin/secret
   checks, rate limiter, dispatcher, envelope) versus a bare ``twisted.web``
   resource answering a tiny JSON, each in its own process; the client keeps
   ``--concurrency`` persistent HTTP/1.1 connections with one request in
   flight on each, pinned to another CPU than the servers. Rounds alternate
   the two servers and the best round of each counts. Then the node's
   WebSocket: ``--ws-connections`` connections with ``--ws-depth`` calls in
   flight on each (:mod:`bench_api`). The node runs without services and with
   its rate limit off (a policy, not overhead).
b. A localnet (``bitnode.localnet``: identity server, 5 suppliers and a
   spare, 1 customer that hires 5, 3-of-5) of real node processes.
c. For each of ``--sizes``: a file of random bytes; the in-process limit of
   the node's own upload and download code on it (no network, see
   ``bench_transfer.pipeline_limits``; up to 512 MiB); then an upload and a
   download through the customer's HTTP API (``file_upload_start`` /
   ``file_download_start``, answered when the transfer is DONE), the restored
   file compared by SHA-256, with every node's peak RSS (psutil, sampled) and
   CPU time (``/proc/<pid>/stat``). Then folders of small files up and down,
   and a rebuild: a supplier replaced by the spare, timed until its blocks are
   all on the spare and the former holder is released.
d. The other engineers' parts, when their modules are there
   (``scripts/bench_catalog.py``: catalog scale, ``scripts/bench_sim.py``: the
   simulation), each judging its own targets.

The last block is the per-size table, CPU ms/MiB per process, the other
figures, and one line per target of the issue: PASS, FAIL or NOT MEASURED.
Exit status is 1 when something broke (a transfer failed, a file came back
different); ``--strict`` also exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the bench_* modules live next to this file
import bench_transfer  # noqa: E402
from bench_api import LoadResult, WsResult, hammer, hammer_ws, parse_response  # noqa: E402,F401 - also for tests
from bench_report import evaluate, failed_targets, fmt_size, report_lines, summarize_stacks  # noqa: E402

MiB = 1024 * 1024

SUPPLIERS = 5
DATA_BLOCKS = 3
SERVER_START_TIMEOUT = 60.0
#: The in-process limit is measured up to this size (beyond, it only adds minutes: the rate is the same).
PIPELINE_MAX_SIZE = 512 * MiB
#: Other engineers' parts: (module in scripts/, owner); each has ``verdicts(quick, workdir, say) -> [check]``.
OTHER_PARTS = (("bench_catalog", "catalog"), ("bench_sim", "sim"))


# --- the two servers (each runs in its own child process) ----------------------------


def serve_node(basedir: str) -> None:
    """Child process: start a real node on free loopback ports and print its port and secret."""
    from twisted.internet import reactor

    from bitnode.app import api_server, build_node

    overrides = {"interface/api/http-port": 0, "interface/api/ws-port": 0, "interface/api/rate-limit": 0}
    node = build_node(basedir, reactor, overrides, service_classes=[])
    node.startService()
    reactor.addSystemEventTrigger("before", "shutdown", node.stopService)
    endpoints = node.endpoints()
    port, ws_port = (int(endpoints[kind].rstrip("/").rsplit(":", 1)[1]) for kind in ("http", "ws"))
    print(json.dumps({"port": port, "ws_port": ws_port, "secret": api_server(node).secret}), flush=True)
    reactor.run()


def serve_bare() -> None:
    """Child process: a bare twisted.web resource answering a tiny JSON, on a free loopback port."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    body = json.dumps({"status": "OK", "result": {"alive": True, "ready": True}}).encode("utf-8")

    class Health(Resource):
        isLeaf = True

        def render_GET(self, request):
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            return body

    class QuietSite(Site):
        noisy = False

        def log(self, request):
            """No access log, like the node's default (logs/api-calls off)."""

    port = reactor.listenTCP(0, QuietSite(Health()), interface="127.0.0.1")
    print(json.dumps({"port": port.getHost().port, "secret": ""}), flush=True)
    reactor.run()


class ServerProcess:
    """One server child process: started with ``--serve KIND``, stopped with SIGTERM."""

    def __init__(self, kind: str, workdir: str):
        self.kind = kind
        args = [sys.executable, os.path.abspath(__file__), "--serve", kind]
        if kind == "node":
            args += ["--basedir", os.path.join(workdir, "node")]
        self._stderr = tempfile.TemporaryFile(dir=workdir)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL)
        try:
            info = self._read_announcement()
        except Exception:
            self.stop()
            raise
        self.port: int = info["port"]
        self.ws_port: int = info.get("ws_port", 0)
        self.secret: str = info["secret"]
        self.ps = psutil.Process(self.proc.pid)

    def _read_announcement(self) -> dict:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], SERVER_START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self._stderr.seek(0)
            details = self._stderr.read().decode("utf-8", "replace")[-2000:]
            raise RuntimeError(f"{self.kind} server did not start: {details or 'no output'}")
        return json.loads(line)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        times = self.ps.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        """SIGTERM (the node stops its services cleanly), SIGKILL if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def _pin(pid: int, cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(pid, cpus)
    except (AttributeError, OSError):
        pass


def measure_api(workdir: str, requests: int, concurrency: int, rounds: int, warmup: int,
                ws_connections: int = 4, ws_depth: int = 8) -> dict:
    """Part a: best-of-``rounds`` process_health rates of the node and of the bare resource over REST,
    then of the node over its WebSocket (``ws_connections`` connections, ``ws_depth`` calls in flight on each)."""
    try:
        mine = os.sched_getaffinity(0)
    except AttributeError:
        mine = set()
    cpus = sorted(mine)
    servers = {}
    try:
        for kind in ("bare", "node"):
            servers[kind] = ServerProcess(kind, workdir)
        pinned = len(cpus) >= 2
        if pinned:
            _pin(0, {cpus[0]})
            for server in servers.values():
                _pin(server.proc.pid, {cpus[1]})
        for kind, server in servers.items():
            check = hammer(server.port, server.secret, max(1, warmup), 1)
            if check.errors:
                raise RuntimeError(f"{kind} server answered {check.statuses}: {check.sample[:200]!r}")
            if kind == "node" and json.loads(check.sample).get("status") != "OK":
                raise RuntimeError(f"node did not answer the OK envelope: {check.sample[:200]!r}")
        best: dict[str, LoadResult] = {}
        cpu_per_request: dict[str, float] = {}
        ws_best: WsResult | None = None
        ws_cpu: float | None = None
        for index in range(rounds):
            order = ("bare", "node") if index % 2 == 0 else ("node", "bare")
            for kind in order:
                server = servers[kind]
                cpu_before = server.cpu_seconds()
                result = hammer(server.port, server.secret, requests, concurrency)
                cpu = (server.cpu_seconds() - cpu_before) / requests
                if result.errors:
                    raise RuntimeError(f"{kind} server answered {result.statuses}")
                if kind not in best or result.rate > best[kind].rate:
                    best[kind] = result
                cpu_per_request[kind] = min(cpu, cpu_per_request.get(kind, cpu))
        node = servers["node"]
        hammer_ws(node.ws_port, node.secret, max(1, warmup), ws_connections, ws_depth)
        for _ in range(rounds):
            cpu_before = node.cpu_seconds()
            result = hammer_ws(node.ws_port, node.secret, requests, ws_connections, ws_depth)
            cpu = (node.cpu_seconds() - cpu_before) / requests
            if result.errors:
                raise RuntimeError(f"node answered {result.errors} WebSocket calls with an error: {result.sample[:200]!r}")
            if ws_best is None or result.rate > ws_best.rate:
                ws_best = result
            ws_cpu = min(cpu, ws_cpu if ws_cpu is not None else cpu)
    finally:
        for server in servers.values():
            server.stop()
        if mine:
            _pin(0, mine)
    node_rate, bare_rate = best["node"].rate, best["bare"].rate
    return {
        "requests": requests,
        "concurrency": concurrency,
        "rounds": rounds,
        "pinned": pinned,
        "node_rate": node_rate,
        "bare_rate": bare_rate,
        "ratio": node_rate / bare_rate if bare_rate else 0.0,
        "node_cpu_us": cpu_per_request["node"] * 1e6,
        "bare_cpu_us": cpu_per_request["bare"] * 1e6,
        "ws_rate": ws_best.rate,
        "ws_cpu_us": (ws_cpu or 0.0) * 1e6,
        "ws_connections": ws_connections,
        "ws_depth": ws_depth,
    }


# --- options and the run -------------------------------------------------------------------


def parse_size(text: str) -> int:
    """A size like "512MB", "1 GiB", "4096" (bytes)."""
    from bitnode.errors import BadRequest
    from bitnode.main.options import parse_disk_space

    text = text.strip()
    try:
        size = int(text) if text.isdigit() else parse_disk_space(text)
    except BadRequest as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    if size <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return size


def parse_sizes(text: str) -> list[int]:
    """``16,128,512`` (MiB) or sizes with units (``512KB,4MB``): the file sizes to move, in bytes."""
    sizes = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        sizes.append(int(item) * MiB if item.isdigit() else parse_size(item))
        if sizes[-1] <= 0:
            raise argparse.ArgumentTypeError("sizes must be positive")
    if not sizes:
        raise argparse.ArgumentTypeError("no size given")
    return sizes


def parse_rebuild_size(text: str) -> int:
    """``--rebuild-size``: MiB like ``--sizes`` (``256``), or a size with units (``32MB``)."""
    sizes = parse_sizes(text)
    if len(sizes) != 1:
        raise argparse.ArgumentTypeError("one rebuild size")
    return sizes[0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options; ``--quick`` shrinks every default for a smoke test."""
    parser = argparse.ArgumentParser(description="Measure bitnode's performance targets (DESIGN.md).")
    parser.add_argument("--sizes", type=parse_sizes, default=None,
                        help="file sizes to upload and download, in MiB or with units (default 16,128,512)")
    parser.add_argument("--quick", action="store_true", help="small sizes and counts, for a smoke test")
    parser.add_argument("--requests", type=int, default=None, help="API requests per round per server")
    parser.add_argument("--concurrency", type=int, default=8, help="persistent API connections used at once")
    parser.add_argument("--rounds", type=int, default=None, help="alternating API rounds per server (best counts)")
    parser.add_argument("--threads", type=int, default=2, help="segments at once in the in-process limit")
    parser.add_argument("--skip-api", action="store_true", help="do not measure the API overhead")
    parser.add_argument("--skip-pipeline", action="store_true", help="do not measure the in-process limit")
    parser.add_argument("--skip-transfer", action="store_true", help="do not start a localnet")
    parser.add_argument("--skip-small", action="store_true", help="do not move folders of small files")
    parser.add_argument("--skip-rebuild", action="store_true", help="do not measure a rebuild (no spare supplier)")
    parser.add_argument("--skip-parts", default="", help="comma-separated: bench_catalog,bench_sim not to run")
    parser.add_argument("--small-16k", type=int, default=None, help="files in the 16 KiB folder (default 1000)")
    parser.add_argument("--small-1k", type=int, default=None, help="files in the 1 KiB folder (default 10000)")
    parser.add_argument("--rebuild-size", type=parse_rebuild_size, default=None,
                        help="file size of the rebuild, in MiB or with units (default 256)")
    parser.add_argument("--ws-connections", type=int, default=4, help="WebSocket connections at once")
    parser.add_argument("--ws-depth", type=int, default=8, help="WebSocket calls in flight per connection")
    parser.add_argument("--profile", metavar="DIR", help="record each transfer with py-spy into DIR")
    parser.add_argument("--profile-idle", action="store_true", help="with --profile: record waiting threads too")
    parser.add_argument("--py-spy", metavar="PATH", help="the py-spy executable (default: the one on PATH)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a measured target is missed")
    parser.add_argument("--serve", choices=("node", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--basedir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sizes is None:
        args.sizes = [32 * MiB] if args.quick else [16 * MiB, 512 * MiB, 2048 * MiB]
    if args.small_16k is None:
        args.small_16k = 100 if args.quick else 1000
    if args.small_1k is None:
        args.small_1k = 300 if args.quick else 10000
    if args.rebuild_size is None:
        args.rebuild_size = 32 * MiB if args.quick else 256 * MiB
    args.skip_parts = {name.strip() for name in args.skip_parts.split(",") if name.strip()}
    if args.requests is None:
        args.requests = 300 if args.quick else 10000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    args.warmup = 50 if args.quick else 1000
    return args


def _machine() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs, load average {load}"


def measure_storage(args: argparse.Namespace, workdir: str, say) -> tuple[list[dict], dict, dict | None]:
    """Per size: write a random file, measure the in-process limits, round-trip it through the localnet;
    then the small files and the rebuild. Returns (per-size results, small-file figures, rebuild figures)."""
    from bitnode.main.memory import tune_allocator

    tune_allocator()  # as in a node process, so the in-process limit runs the same way
    net = None
    net_error = ""
    results = []
    small: dict = {}
    rebuild = None
    try:
        if not args.skip_transfer:
            say(f"b. localnet: 1 customer hiring {SUPPLIERS} suppliers, {DATA_BLOCKS}-of-{SUPPLIERS} ...")
            py_spy = None
            if args.profile:
                py_spy = bench_transfer.find_py_spy(args.py_spy)
                os.makedirs(args.profile, exist_ok=True)
                say(f"   profiling with {py_spy} into {args.profile}" if py_spy else
                    "   --profile: py-spy not found (pip install py-spy, or --py-spy PATH): not profiling")
            net = bench_transfer.BenchNet(workdir, say, SUPPLIERS, DATA_BLOCKS, py_spy=py_spy,
                                          profile_dir=args.profile, profile_idle=args.profile_idle,
                                          spares=0 if args.skip_rebuild else 1)
            try:
                net.up(needed_bytes=max([*args.sizes, args.rebuild_size]) if not args.skip_rebuild else max(args.sizes))
            except Exception as err:  # noqa: BLE001 - reported in the table, the rest still runs
                net_error = f"localnet did not come up: {err}"
                say(f"   {net_error}")
        for size in args.sizes:
            label = fmt_size(size).replace(" ", "")
            result: dict = {"size": size, "limit": None, "upload": None, "download": None, "sha256_ok": False}
            results.append(result)
            path = os.path.join(workdir, f"{label}.bin")
            sha = bench_transfer.write_test_file(path, size)
            try:
                if not args.skip_pipeline and size <= PIPELINE_MAX_SIZE:
                    limit = bench_transfer.pipeline_limits(path, workdir, DATA_BLOCKS, SUPPLIERS,
                                                           threads=args.threads)
                    result["limit"] = limit
                    say(f"c. {fmt_size(size)}: in-process limit up {limit['up']:.1f} MiB/s, "
                        f"down {limit['down']:.1f} MiB/s")
                if net_error:
                    result["error"] = net_error
                elif net is not None:
                    result.update(net.round_trip(path, size, sha, label, workdir))
                    say(f"   {fmt_size(size)}: upload {result['upload']['mib_s']:.1f} MiB/s, "
                        f"download {result['download']['mib_s']:.1f} MiB/s, "
                        f"sha256 {'OK' if result['sha256_ok'] else 'MISMATCH'}")
            except Exception as err:  # noqa: BLE001 - one size failing still reports the others
                result["error"] = f"{type(err).__name__}: {err}"
                say(f"   {fmt_size(size)}: {result['error']}")
            finally:
                os.unlink(path)
        if net is not None and not net_error:
            small = measure_small(args, net, workdir, say)
            rebuild = measure_rebuild(args, net, workdir, say)
    finally:
        if net is not None:
            net.down()
    return results, small, rebuild


def measure_small(args: argparse.Namespace, net, workdir: str, say) -> dict:
    """The small-file figures: folders of many small files up and down through the customer's API."""
    small: dict = {}
    if args.skip_small:
        return small
    for count, size, key in ((args.small_16k, 16 * 1024, f"1000x{16 * 1024}"), (args.small_1k, 1024, "10000x1024")):
        try:
            figures = net.small_files(count, size, f"{count}x{size}", workdir)
            say(f"   small files {count} x {fmt_size(size)}: upload {figures['upload_files_s']:.0f} files/s, "
                f"download {figures['download_files_s']:.0f} files/s")
        except Exception as err:  # noqa: BLE001 - reported as the target's figure
            figures = {"count": count, "size": size, "error": f"{type(err).__name__}: {err}"}
            say(f"   small files {count} x {fmt_size(size)}: {figures['error']}")
        small[key] = figures
    return small


def measure_rebuild(args: argparse.Namespace, net, workdir: str, say) -> dict | None:
    """The rebuild figure: a file's blocks of one position rebuilt on a spare supplier."""
    if args.skip_rebuild:
        return None
    path = os.path.join(workdir, "rebuild.bin")
    bench_transfer.write_test_file(path, args.rebuild_size)
    try:
        figures = net.rebuild(path, args.rebuild_size, fmt_size(args.rebuild_size).replace(" ", ""))
        say(f"   rebuild: {figures['rebuilt_mib']:.0f} MiB of blocks on {figures['new']} in {figures['seconds']:.1f} s "
            f"(hiring {figures['hire_seconds']:.2f} s, moving the data {figures['data_seconds']:.2f} s; "
            f"monitor: {figures['monitor']})")
    except Exception as err:  # noqa: BLE001 - reported as the target's figure
        figures = {"size": args.rebuild_size, "error": f"{type(err).__name__}: {err}"}
        say(f"   rebuild: {figures['error']}")
    finally:
        os.unlink(path)
    return figures


def measure_parts(args: argparse.Namespace, workdir: str, say) -> list[dict]:
    """The verdicts of the other engineers' parts: ``verdicts(quick, workdir, say)`` of each module present."""
    checks: list[dict] = []
    for module_name, owner in OTHER_PARTS:
        if module_name in args.skip_parts:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # not landed: its targets are reported NOT MEASURED with the owner
        say(f"d. {module_name} ({owner}) ...")
        try:
            checks += list(module.verdicts(args.quick, workdir, say))
        except Exception as err:  # noqa: BLE001 - one part failing still reports the others
            say(f"   {module_name} failed: {type(err).__name__}: {err}")
    return checks


def profile_lines(directory: str, top: int = 12) -> list[str]:
    """Where the time went: the top functions (self samples) of every py-spy recording in ``directory``."""
    lines = []
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if not name.endswith(".txt"):
            continue
        with open(os.path.join(directory, name), encoding="utf-8", errors="replace") as handle:
            total, ranked = summarize_stacks(handle, top)
        lines += ["", f"profile {name}: {total} samples (self time, top {top})"]
        lines += [f"  {100.0 * n / total:5.1f}%  {frame}" for n, frame in ranked if total]
    return lines


def run(args: argparse.Namespace, out=None) -> dict:
    """Run the parts selected by ``args``, print progress and the report; return the figures."""
    out = out or sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    workdir = tempfile.mkdtemp(prefix="bitnode-bench-")
    api = None
    transfers = None
    small: dict = {}
    rebuild = None
    parts: list[dict] = []
    before = _machine()
    try:
        if not args.skip_api:
            say(f"a. API overhead: {args.rounds} round(s) x {args.requests} process_health requests, "
                f"{args.concurrency} connections, node and bare twisted.web in separate processes ...")
            api = measure_api(workdir, args.requests, args.concurrency, args.rounds, args.warmup,
                              args.ws_connections, args.ws_depth)
            pinned = "client and servers on different CPUs" if api["pinned"] else "not pinned (one CPU)"
            say(f"   node {api['node_rate']:.0f} req/s, bare {api['bare_rate']:.0f} req/s, "
                f"ratio {api['ratio']:.2f} ({pinned})")
        if not (args.skip_transfer and args.skip_pipeline):
            transfers, small, rebuild = measure_storage(args, workdir, say)
        parts = measure_parts(args, workdir, say)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    checks = evaluate(api, transfers, small, rebuild, parts)
    context = (f"machine: {before} at the start, {_machine()} at the end. Other work on this machine moves "
               "MiB/s; the ratios and CPU ms/MiB move less.")
    for line in report_lines(api, transfers, checks, context, small, rebuild):
        say(line)
    if args.profile:
        for line in profile_lines(args.profile):
            say(line)
    broken = [t for t in transfers or [] if t.get("error") or (t.get("download") and not t["sha256_ok"])]
    broken = broken or [f for f in small.values() if f.get("sha256_ok") is False]
    return {"api": api, "transfers": transfers, "small": small, "rebuild": rebuild, "checks": checks,
            "failed": failed_targets(checks), "broken": bool(broken)}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``make bench`` (and of the server child processes)."""
    args = parse_args(argv)
    if args.serve == "node":
        serve_node(args.basedir)
        return 0
    if args.serve == "bare":
        serve_bare()
        return 0
    figures = run(args)
    if figures["broken"]:
        return 1
    return 1 if args.strict and figures["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
