"""`make bench`: the performance figures of DESIGN.md, measured as ratios in one run.

Usage::

    python scripts/bench.py [--size 512MB] [--quick] [--requests N] [--concurrency N] [--rounds N]

What it measures (machines are noisy, so each target is a ratio or a bound
taken within this one run):

a. API overhead: ``process_health`` round trips per second against a real
   node (:func:`bitnode.node.build_node`, its whole REST stack: Host/Origin/
   secret checks, rate limiter, dispatcher, envelope) versus a bare
   ``twisted.web`` resource answering a tiny JSON. Each server is a separate
   process; the client here keeps ``--concurrency`` persistent HTTP/1.1
   connections with one request in flight on each. With two or more CPUs the
   client and the servers are pinned to different CPUs. Rounds alternate the
   two servers and the best round of each counts. The node runs without
   services and with its rate limit off (a policy, not overhead).
b. The in-process pipeline limit: read -> encrypt -> erasure-encode (3-of-5)
   -> pack + hash, no network, over a temporary file of ``--size`` bytes
   written once, with one thread (:func:`bitnode.storage.uploader.pipeline_limit`)
   and with two worker threads (like the uploader's thread pool); the peak
   RSS of this process during it (psutil, sampled).
c. Upload/download over a localnet: not measurable yet (no supplier network);
   said so, never faked.

The last block is a summary with each figure, its target and PASS/FAIL.
Exit status is 0 unless something broke (``--strict`` also fails on FAIL).
"""

from __future__ import annotations

import argparse
import json
import os
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psutil

MiB = 1024 * 1024
HEALTH_PATH = "/process/health/v1"
API_RATIO_TARGET = 0.80
RSS_TARGET_MIB = 150.0
TRANSFER_TARGET_MIB_S = 100.0
TRANSFER_FRACTION_TARGET = 0.50
NOT_YET = "not yet (needs the storage issue)"
SERVER_START_TIMEOUT = 60.0


# --- the two servers (each runs in its own child process) ----------------------------


def serve_node(basedir: str) -> None:
    """Child process: start a real node on free loopback ports and print its port and secret."""
    from twisted.internet import reactor

    from bitnode.node import build_node

    overrides = {"interface/api/http-port": 0, "interface/api/ws-port": 0, "interface/api/rate-limit": 0}
    node = build_node(basedir, reactor, overrides, service_classes=[])
    node.startService()
    reactor.addSystemEventTrigger("before", "shutdown", node.stopService)
    port = int(node.endpoints()["http"].rstrip("/").rsplit(":", 1)[1])
    print(json.dumps({"port": port, "secret": node.api_secret}), flush=True)
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


# --- the HTTP client ----------------------------------------------------------------------


def parse_response(buf: bytes | bytearray) -> tuple[int, bytes, int] | None:
    """One HTTP/1.1 response from the start of ``buf``: (status, body, bytes used), or None if incomplete.

    Handles Content-Length and chunked bodies (twisted.web uses chunked when a
    resource writes without a length, as the node's API does).
    """
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    pos = head_end + 4
    if "content-length" in headers:
        end = pos + int(headers["content-length"])
        return (status, bytes(buf[pos:end]), end) if len(buf) >= end else None
    if headers.get("transfer-encoding", "").lower() != "chunked":
        raise ValueError("response without Content-Length or chunked encoding")
    body = bytearray()
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
        start, end = line_end + 2, line_end + 2 + size
        if len(buf) < end + 2:
            return None
        if size == 0:
            # no trailers are sent by twisted.web: the last chunk is "0\r\n\r\n"
            return status, bytes(body), end + 2
        body += buf[start:end]
        pos = end + 2


@dataclass
class LoadResult:
    """The outcome of one burst of requests against one server."""

    requests: int
    seconds: float
    errors: int
    sample: bytes = b""
    statuses: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Round trips per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def hammer(port: int, secret: str, requests: int, concurrency: int, path: str = HEALTH_PATH,
           timeout: float = 30.0) -> LoadResult:
    """Send ``requests`` GETs over ``concurrency`` persistent connections, one in flight on each.

    A single thread with a selector, so the client spends as little CPU per
    request as Python allows and the server is what is measured.
    """
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\napi_secret: {secret}\r\n"
               "Accept: application/json\r\n\r\n").encode("ascii")
    sel = selectors.DefaultSelector()
    socks = []
    buffers: dict[socket.socket, bytearray] = {}
    sent = done = errors = 0
    sample = b""
    statuses: dict[int, int] = {}
    try:
        for _ in range(max(1, min(concurrency, requests))):
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            socks.append(sock)
            buffers[sock] = bytearray()
            sel.register(sock, selectors.EVENT_READ)
        start = time.perf_counter()
        for sock in socks:
            sock.sendall(request)
            sent += 1
        while done < requests:
            events = sel.select(timeout)
            if not events:
                raise TimeoutError(f"no answer from port {port} within {timeout}s")
            for key, _ in events:
                sock = key.fileobj
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError(f"server on port {port} closed the connection")
                buf = buffers[sock]
                buf += data
                parsed = parse_response(buf)
                if parsed is None:
                    continue
                status, body, used = parsed
                del buf[:used]
                done += 1
                statuses[status] = statuses.get(status, 0) + 1
                if status != 200:
                    errors += 1
                if not sample:
                    sample = body
                if sent < requests:
                    sock.sendall(request)
                    sent += 1
        seconds = time.perf_counter() - start
    finally:
        sel.close()
        for sock in socks:
            sock.close()
    return LoadResult(requests, seconds, errors, sample, statuses)


def _pin(pid: int, cpus: set[int]) -> None:
    try:
        os.sched_setaffinity(pid, cpus)
    except (AttributeError, OSError):
        pass


def measure_api(workdir: str, requests: int, concurrency: int, rounds: int, warmup: int) -> dict:
    """Part a: best-of-``rounds`` process_health rates of the node and of the bare resource."""
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
    }


# --- the in-process pipeline -------------------------------------------------------------


class RssSampler:
    """Samples this process's RSS in a background thread and keeps the peak."""

    def __init__(self, interval: float = 0.005):
        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.baseline = self._proc.memory_info().rss
        self.peak = self.baseline
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def write_test_file(path: str, size: int, chunk: int = MiB) -> None:
    """Write ``size`` random bytes (random so nothing compresses or dedups anywhere)."""
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            step = min(chunk, left)
            handle.write(os.urandom(step))
            left -= step


def threaded_pipeline(path: str, threads: int, k: int, n: int, segment_size: int) -> dict:
    """The same per-segment work as the uploader, with ``threads`` segments in flight at once."""
    from bitnode.storage import segment_crypto
    from bitnode.storage.uploader import prepare_segment, segment_count

    size = os.path.getsize(path)
    key = segment_crypto.new_version_key()
    total = segment_count(size, segment_size)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        window = []
        for index in range(total):
            window.append(pool.submit(prepare_segment, path, index, segment_size, size, "bench", key, k, n))
            if len(window) >= threads:
                window.pop(0).result()
        for future in window:
            future.result()
    seconds = time.perf_counter() - start
    return {"bytes": size, "seconds": seconds, "mib_per_s": (size / MiB) / seconds if seconds > 0 else 0.0}


def measure_pipeline(workdir: str, size: int, k: int = 3, n: int = 5, segment_size: int = 4 * MiB,
                     threads: int = 2) -> dict:
    """Part b: MiB/s of read -> encrypt -> encode -> hash, one thread and ``threads``; peak RSS."""
    from bitnode.storage.uploader import pipeline_limit

    path = os.path.join(workdir, "bench-input.bin")
    write_test_file(path, size)
    try:
        with RssSampler() as rss:
            single = pipeline_limit(path, k=k, n=n, segment_size=segment_size)
            multi = threaded_pipeline(path, threads, k, n, segment_size)
    finally:
        os.unlink(path)
    return {
        "size": size,
        "k": k,
        "n": n,
        "segment_size": segment_size,
        "threads": threads,
        "single_mib_s": single["mib_per_s"],
        "stages": single["stages"],
        "multi_mib_s": multi["mib_per_s"],
        "limit_mib_s": max(single["mib_per_s"], multi["mib_per_s"]),
        "rss_baseline_mib": rss.baseline / MiB,
        "rss_peak_mib": rss.peak / MiB,
    }


# --- report ------------------------------------------------------------------------------


def _row(figure: str, value: str, target: str, verdict: str) -> str:
    return f"{figure:<44} {value:>16}  {target:<40} {verdict}".rstrip()


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def summary_lines(api: dict | None, pipeline: dict | None) -> list[str]:
    """The final block: every figure, its target and PASS/FAIL (or why it is missing)."""
    lines = ["", "== summary " + "=" * 93, _row("figure", "value", "target", "result")]
    if api is not None:
        lines += [
            _row("API process_health, real node", f"{api['node_rate']:.0f} req/s", "", ""),
            _row("API process_health, bare twisted.web", f"{api['bare_rate']:.0f} req/s", "", ""),
            _row("API overhead: node / bare", f"{api['ratio']:.2f}", f">= {API_RATIO_TARGET:.2f}",
                 _verdict(api["ratio"] >= API_RATIO_TARGET)),
            _row("API server CPU per request, node / bare",
                 f"{api['node_cpu_us']:.0f} / {api['bare_cpu_us']:.0f} us",
                 f"(bare/node = {api['bare_cpu_us'] / api['node_cpu_us']:.2f}, less noisy)"
                 if api["node_cpu_us"] else "(information)", ""),
        ]
    else:
        lines.append(_row("API overhead: node / bare", "skipped", f">= {API_RATIO_TARGET:.2f}", "NOT MEASURED"))
    if pipeline is not None:
        size = f"{pipeline['size'] / MiB:.0f} MiB, {pipeline['k']}-of-{pipeline['n']}"
        lines += [
            _row(f"pipeline limit, 1 thread ({size})", f"{pipeline['single_mib_s']:.1f} MiB/s", "(reference)", ""),
            _row(f"pipeline limit, {pipeline['threads']} threads ({size})", f"{pipeline['multi_mib_s']:.1f} MiB/s",
                 "(reference)", ""),
            _row("pipeline process peak RSS", f"{pipeline['rss_peak_mib']:.0f} MiB",
                 f"<= {RSS_TARGET_MIB:.0f} MiB", _verdict(pipeline["rss_peak_mib"] <= RSS_TARGET_MIB)),
        ]
    else:
        lines.append(_row("pipeline limit", "skipped", "(reference)", "NOT MEASURED"))
    limit = pipeline["limit_mib_s"] if pipeline else None
    share = f"{TRANSFER_FRACTION_TARGET:.0%} of limit"
    if limit:
        share += f" = {TRANSFER_FRACTION_TARGET * limit:.0f}"
    for what in ("upload", "download"):
        lines.append(_row(f"{what} on localnet (3-of-5)", "not yet",
                          f">= {TRANSFER_TARGET_MIB_S:.0f} and >= {share} MiB/s", "NOT MEASURED"))
    lines.append(_row("peak RSS of uploading/downloading node", "not yet", f"<= {RSS_TARGET_MIB:.0f} MiB",
                      "NOT MEASURED"))
    return lines


def failed_targets(api: dict | None, pipeline: dict | None) -> list[str]:
    """Names of the measured targets that were missed."""
    failed = []
    if api is not None and api["ratio"] < API_RATIO_TARGET:
        failed.append("api_overhead")
    if pipeline is not None and pipeline["rss_peak_mib"] > RSS_TARGET_MIB:
        failed.append("pipeline_rss")
    return failed


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options; ``--quick`` shrinks every default for a smoke test."""
    parser = argparse.ArgumentParser(description="Measure bitnode's performance targets (DESIGN.md).")
    parser.add_argument("--size", type=parse_size, default=None, help="pipeline test file size (default 512MB)")
    parser.add_argument("--quick", action="store_true", help="small sizes and counts, for a smoke test")
    parser.add_argument("--requests", type=int, default=None, help="requests per round per server")
    parser.add_argument("--concurrency", type=int, default=8, help="persistent connections used at once")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds per server (best counts)")
    parser.add_argument("--skip-api", action="store_true", help="do not run part a")
    parser.add_argument("--skip-pipeline", action="store_true", help="do not run part b")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a measured target is missed")
    parser.add_argument("--serve", choices=("node", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--basedir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size is None:
        args.size = 8 * MiB if args.quick else 512 * MiB
    if args.requests is None:
        args.requests = 300 if args.quick else 10000
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    args.warmup = 50 if args.quick else 1000
    return args


def run(args: argparse.Namespace, out=None) -> dict:
    """Run the parts selected by ``args``, print progress and the summary; return the figures."""
    out = out or sys.stdout

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    workdir = tempfile.mkdtemp(prefix="bitnode-bench-")
    api = pipeline = None
    try:
        if not args.skip_api:
            say(f"a. API overhead: {args.rounds} round(s) x {args.requests} process_health requests, "
                f"{args.concurrency} connections, node and bare twisted.web in separate processes ...")
            api = measure_api(workdir, args.requests, args.concurrency, args.rounds, args.warmup)
            pinned = "client and servers on different CPUs" if api["pinned"] else "not pinned (one CPU)"
            say(f"   node {api['node_rate']:.0f} req/s, bare {api['bare_rate']:.0f} req/s, "
                f"ratio {api['ratio']:.2f} ({pinned})")
        if not args.skip_pipeline:
            say(f"b. pipeline limit: {args.size / MiB:.0f} MiB file, read -> encrypt -> encode 3-of-5 -> hash ...")
            pipeline = measure_pipeline(workdir, args.size)
            stages = ", ".join(f"{name} {secs:.2f}s" for name, secs in sorted(pipeline["stages"].items()))
            say(f"   1 thread {pipeline['single_mib_s']:.1f} MiB/s ({stages}); "
                f"{pipeline['threads']} threads {pipeline['multi_mib_s']:.1f} MiB/s; "
                f"peak RSS {pipeline['rss_peak_mib']:.0f} MiB (baseline {pipeline['rss_baseline_mib']:.0f} MiB)")
        say(f"c. upload/download on localnet: {NOT_YET}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for line in summary_lines(api, pipeline):
        say(line)
    return {"api": api, "pipeline": pipeline, "transfer": None, "failed": failed_targets(api, pipeline)}


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
    return 1 if args.strict and figures["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
