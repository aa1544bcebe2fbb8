"""Catalog scale (issue 18, owner "catalog"): a real node whose catalog holds 100,000 files, through its API.

Usage::

    python scripts/bench_catalog.py [--files 100000] [--per-folder 1000] [--calls 200] [--keep DIR]

``scripts/bench.py`` calls :func:`verdicts` (``make bench``: 100,000 files;
``make bench-quick``: 10,000). What it does:

1. A basedir with an identity made offline (RSA master key, packet key,
   identity.xml: what ``identity_create`` writes, without an identity server)
   and a catalog filled through the catalog's own bulk call
   (:meth:`Catalog.add_rows`, one transaction per folder, rows checked by
   ``parse_export`` as a restored backup's are): ``files / per_folder``
   folders of ``per_folder`` files, each file with one complete version of
   one segment and its n=5 blocks (sha256 and supplier, as an upload records
   them), every tenth file with an older second version.
2. The real node process on it (``twistd -n bitnode``, every port 0, no
   network file: it talks to nobody), timed from the process start until
   ``files_list`` answers 200 (the catalog is open and usable; the API's
   first answer comes earlier and is shown too). Then the calls wait until
   the node is idle: its start-up check of the catalog backup (a streamed
   pass over the whole catalog, run at once here instead of 10 s after the
   start) is over.
3. ``files_list`` of a ``per_folder``-entry folder and ``file_info`` of a
   file, ``--calls`` each over one persistent HTTP/1.1 connection (random
   folders and files), p50 / p95 / max; every answer is checked (200, the
   folder's entry count, the file's versions).
4. The node's peak RSS (``VmHWM`` of /proc: the most it held at any time,
   start-up and the calls included).

Timings go to the report, never into a unit test (tests/scripts/test_bench_catalog.py
checks the building and judging with tiny catalogs).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)  # bench_report, next to this file

from bench_report import OTHER_TARGETS  # noqa: E402

from bitnode.interface.client import build_request, read_endpoints, read_secret  # noqa: E402
from bitnode.main.basedir import Basedir  # noqa: E402
from bitnode.storage.catalog import COMPLETE, Catalog  # noqa: E402
from bitnode.storage.catalog_format import EXPORT_FORMAT, parse_export  # noqa: E402

FILES = 100_000
QUICK_FILES = 10_000
PER_FOLDER = 1_000
CALLS = 200
START_TIMEOUT = 120.0
#: The targets of issue 18 for the catalog.
LIST_P95_MS = 50.0
INFO_P95_MS = 10.0
START_S = 5.0
RSS_MIB = 200.0
SUPPLIERS = [f"supplier-{i}@127.0.0.1_{7000 + i}" for i in range(1, 6)]
K, N = 3, 5
SEGMENT_SIZE = 4 * 1024 * 1024
#: Every this many files has a second (older) version.
TWO_VERSIONS_EVERY = 10
NAME = "catalogbench"
#: Seconds since the epoch of the first version (a fixed date: the catalog is the same in every run).
BASE_TIME = 1_790_000_000.0


# --- the basedir ------------------------------------------------------------------------------------


def make_identity(basedir: Basedir, key_size: int = 2048) -> str:
    """Write a new identity into ``basedir`` (keys, packet key, identity.xml) as identity_create would.

    The identity names an identity server on a loopback port nobody listens
    on: the node never reaches anyone. Returns the node's global id.
    """
    from twisted.internet.defer import maybeDeferred
    from twisted.internet.task import Clock

    from bitnode import globalid
    from bitnode.userid import id_files
    from bitnode.userid.packet_keys import generate_identity

    basedir.create()
    source = str(globalid.IdUrl(NAME, "127.0.0.1", 9))
    master, packet_key, identity = generate_identity(NAME, [source], [], key_size, time.time())
    id_files.write_new(id_files.IdentityFiles.of(basedir), identity, master, packet_key, maybeDeferred, Clock())
    return identity.global_id


def folder_document(key_id: str, folder: str, files: int, first: int) -> dict:
    """An export document (catalog_format) of one folder of ``files`` files, as uploads would have left it.

    Deterministic in ``first`` (the number of the folder's first file), so
    every run builds the same catalog.
    """
    doc: dict = {"format": EXPORT_FORMAT, "items": [], "versions": [], "segments": [], "blocks": []}
    suppliers = json.dumps(SUPPLIERS)
    for number in range(first, first + files):
        path = f"{folder}/file-{number:06d}.dat"
        created = BASE_TIME + number
        doc["items"].append([key_id, path, 0, created, 0o644, int(created * 1e9), None])
        for older in (1, 0) if number % TWO_VERSIONS_EVERY == 0 else (0,):
            version_id = f"F{number:08d}-{older}"
            size = 1024 + (number * 7919 + older) % (1024 * 1024)
            wrapped = base64.b64encode(hashlib.sha512(version_id.encode()).digest() * 4).decode("ascii")
            stamp = created - older * 86400
            doc["versions"].append([version_id, key_id, path, COMPLETE, size, SEGMENT_SIZE, 1, K, N, wrapped,
                                    suppliers, stamp, stamp + 1, 0o644, int(stamp * 1e9)])
            doc["segments"].append([version_id, 0, size])
            for position in range(N):
                sha = hashlib.sha256(f"{version_id}/{position}".encode()).hexdigest()
                doc["blocks"].append([version_id, 0, position, sha, SUPPLIERS[position]])
    return doc


def fill_catalog(path: str, key_id: str, files: int, per_folder: int, say=None) -> dict:
    """A catalog at ``path`` holding ``files`` files in folders of ``per_folder``; returns what it holds."""
    catalog = Catalog(path)
    folders: list[str] = []
    started = time.perf_counter()
    try:
        for first in range(0, files, per_folder):
            folder = f"folder-{first // per_folder:03d}"
            count = min(per_folder, files - first)
            catalog.add_rows(parse_export(folder_document(key_id, folder, count, first)))
            folders.append(folder)
    finally:
        catalog.close()
    seconds = time.perf_counter() - started
    if say is not None:
        say(f"   catalog of {files:,} files in {len(folders)} folders written in {seconds:.1f} s "
            f"({os.path.getsize(path) / 2**20:.0f} MiB)")
    return {"files": files, "folders": folders, "per_folder": per_folder, "fill_seconds": seconds}


# --- the node process ---------------------------------------------------------------------------------


def port_settings() -> list[str]:
    """``KEY=0`` for every port option of the node (free ports, no collision with anything)."""
    from bitnode.app import SERVICES
    from bitnode.main.schema import SCHEMA

    options = list(SCHEMA) + [option for service in SERVICES for option in getattr(service, "options", ())]
    return [f"{option.key}=0" for option in options if option.key.endswith("port")]


class NodeRun:
    """The node of ``basedir`` as a foreground twistd child process; :meth:`stop` ends it."""

    def __init__(self, basedir: Basedir, log_path: str):
        from bitnode.interface.control import twistd_command

        self.basedir = basedir
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        # The start-up check of the catalog backup (a streamed pass over the whole catalog) runs at once, not
        # 10 s after the start in the middle of the timed calls: measure() waits for it to end (wait_idle).
        settings = [*port_settings(), "services/backups/catalog-backup-delay=0"]
        command = twistd_command(basedir, foreground=True, settings=settings)
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        self.conn: http.client.HTTPConnection | None = None
        self.secret = ""
        self.base = ""

    def wait_ready(self, probe: tuple[str, dict], timeout: float = START_TIMEOUT) -> dict:
        """Seconds from the process start until the API answers at all, and until ``probe`` answers 200."""
        deadline = self.started + timeout
        first_answer = None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the node exited during start-up (code {self.proc.returncode})")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the node did not answer {probe[0]} within {timeout:.0f} s")
            if self.conn is None:
                endpoints = read_endpoints(self.basedir) or {}
                if endpoints.get("pid") == self.proc.pid and endpoints.get("http"):
                    self.base = endpoints["http"]
                    self.secret = read_secret(self.basedir)
                    host, port = urllib.parse.urlsplit(self.base).netloc.rsplit(":", 1)
                    self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
            if self.conn is not None:
                try:
                    status, _ = self.call(*probe)
                except OSError:
                    status = 0
                if status and first_answer is None:
                    first_answer = time.perf_counter() - self.started
                if status == 200:
                    return {"api_s": first_answer, "ready_s": time.perf_counter() - self.started}
            time.sleep(0.01)

    def wait_idle(self, timeout: float = 60.0, window: float = 1.0, busy: float = 0.1) -> float:
        """Wait until the node used less than ``busy`` of a CPU over ``window`` seconds; seconds waited."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            before = self.cpu_seconds()
            time.sleep(window)
            if self.cpu_seconds() - before < busy * window:
                break
        return time.perf_counter() - started

    def call(self, method: str, kwargs: dict) -> tuple[int, bytes]:
        """One API call over the persistent connection: (HTTP status, body)."""
        request = build_request(self.base, self.secret, method, kwargs)
        target = request.full_url[len(self.base.rstrip("/")):]
        assert self.conn is not None
        try:
            self.conn.request(request.get_method(), target, body=request.data, headers=dict(request.header_items()))
            response = self.conn.getresponse()
            return response.status, response.read()
        except (http.client.HTTPException, OSError):
            self.conn.close()  # reconnects on the next request
            raise

    def cpu_seconds(self) -> float:
        """User + system CPU time the node process has used so far (from /proc)."""
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        """The most memory the node held at any time (VmHWM), in MiB."""
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        raise RuntimeError("no VmHWM in /proc")

    def stop(self) -> None:
        """SIGTERM (the node closes its catalog), SIGKILL if it hangs."""
        if self.conn is not None:
            self.conn.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def timed_calls(node: NodeRun, calls: list[tuple[str, dict]], check) -> dict:
    """Call times (:func:`percentiles`) and the node's CPU per call; ``check(kwargs, status, body)`` raises
    when an answer is wrong (checked outside the timing)."""
    seconds = []
    cpu_before = node.cpu_seconds()
    answers = []
    for method, kwargs in calls:
        started = time.perf_counter()
        answers.append((kwargs, *node.call(method, kwargs)))
        seconds.append(time.perf_counter() - started)
    cpu = node.cpu_seconds() - cpu_before
    for answer in answers:
        check(*answer)
    return dict(percentiles(seconds), cpu_ms=1000 * cpu / max(1, len(calls)))


def percentiles(seconds: list[float]) -> dict:
    """p50 / p95 / max of call times, in milliseconds (p95: the value 95 % of the calls do not exceed)."""
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, max(0, math.ceil(0.95 * len(ordered)) - 1))]
    return {"p50_ms": 1000 * statistics.median(ordered), "p95_ms": 1000 * p95, "max_ms": 1000 * ordered[-1],
            "calls": len(ordered)}


def measure(workdir: str, files: int, per_folder: int = PER_FOLDER, calls: int = CALLS, say=print,
            seed: int = 18) -> dict:
    """Build the catalog, start the node on it, time the calls; the figures (see the module docstring)."""
    basedir = Basedir.at(os.path.join(workdir, "catalog-node"))
    global_id = make_identity(basedir)
    key_id = f"master${global_id}"
    shape = fill_catalog(os.path.join(basedir.metadata, "catalog.sqlite"), key_id, files, per_folder, say)
    rng = random.Random(seed)
    node = NodeRun(basedir, os.path.join(workdir, "catalog-node.log"))
    try:
        folder_of = {f"{key_id}:{folder}": (index + 1) * per_folder <= files
                     for index, folder in enumerate(shape["folders"])}
        probe_folder = f"{key_id}:{shape['folders'][0]}"
        start = node.wait_ready(("files_list", {"remote_path": probe_folder}))
        say(f"   node answers its API after {start['api_s']:.2f} s, files_list after {start['ready_s']:.2f} s")
        start["settle_s"] = node.wait_idle()
        say(f"   node idle (its start-up catalog backup check done) {start['settle_s']:.1f} s later")

        def listed(kwargs: dict, status: int, body: bytes) -> None:
            result = json.loads(body)
            want = per_folder if folder_of[kwargs["remote_path"]] else files % per_folder
            if status != 200 or len(result.get("result", ())) != want:
                raise RuntimeError(f"files_list {kwargs['remote_path']}: {status} {body[:200]!r}")

        def informed(kwargs: dict, status: int, body: bytes) -> None:
            number = int(kwargs["remote_path"].rsplit("-", 1)[1].split(".")[0])
            want = 2 if number % TWO_VERSIONS_EVERY == 0 else 1
            if status != 200 or len(json.loads(body)["result"].get("versions", ())) != want:
                raise RuntimeError(f"file_info {kwargs['remote_path']}: {status} {body[:200]!r}")

        folders = list(folder_of)
        list_calls = [("files_list", {"remote_path": rng.choice(folders)}) for _ in range(calls)]
        numbers = [rng.randrange(files) for _ in range(calls)]
        info_calls = [("file_info", {"remote_path": f"{key_id}:folder-{n // per_folder:03d}/file-{n:06d}.dat"})
                      for n in numbers]
        timed_calls(node, list_calls[:5] + info_calls[:5], lambda *a: None)  # warm the connection and caches
        listing = timed_calls(node, list_calls, listed)
        info = timed_calls(node, info_calls, informed)
        rss = node.peak_rss_mib()
    finally:
        node.stop()
    say(f"   files_list of {per_folder} entries: p50 {listing['p50_ms']:.1f} ms, p95 {listing['p95_ms']:.1f} ms, "
        f"node CPU {listing['cpu_ms']:.1f} ms/call; file_info: p50 {info['p50_ms']:.1f} ms, p95 "
        f"{info['p95_ms']:.1f} ms, node CPU {info['cpu_ms']:.1f} ms/call; peak RSS {rss:.0f} MiB")
    return {"files": files, "per_folder": per_folder, "start": start, "files_list": listing, "file_info": info,
            "rss_mib": rss, "fill_seconds": shape["fill_seconds"], "load": os.getloadavg()}


# --- verdicts ---------------------------------------------------------------------------------------------


def judge(figures: dict | None, quick: bool, error: str = "") -> list[dict]:
    """One check per catalog target of the issue ({name, target, measured, verdict}), from :func:`measure`."""
    targets = [(name, target) for name, target, _owner in OTHER_TARGETS if name.startswith("catalog_")]
    if figures is None:
        return [{"name": name, "target": target, "measured": error[:60] or "-", "verdict": "NOT MEASURED"}
                for name, target in targets]
    scale = f" ({figures['files']:,} files{', quick' if quick else ''})" if figures["files"] != FILES else ""
    listing, info = figures["files_list"], figures["file_info"]
    values = {
        "catalog_files_list": (listing["p95_ms"] <= LIST_P95_MS,
                               f"p95 {listing['p95_ms']:.1f} ms, p50 {listing['p50_ms']:.1f} ms, "
                               f"CPU {listing['cpu_ms']:.1f} ms/call"),
        "catalog_file_info": (info["p95_ms"] <= INFO_P95_MS,
                              f"p95 {info['p95_ms']:.1f} ms, p50 {info['p50_ms']:.1f} ms, "
                              f"CPU {info['cpu_ms']:.1f} ms/call"),
        "catalog_start": (figures["start"]["ready_s"] <= START_S,
                          f"{figures['start']['ready_s']:.2f} s to files_list (API {figures['start']['api_s']:.2f} s)"),
        "catalog_rss": (figures["rss_mib"] <= RSS_MIB, f"peak {figures['rss_mib']:.0f} MiB"),
    }
    return [{"name": name, "target": target, "measured": values[name][1] + scale,
             "verdict": "PASS" if values[name][0] else "FAIL"} for name, target in targets]


def verdicts(quick: bool, workdir: str, say) -> list[dict]:
    """``make bench``'s hook: the checks of the catalog targets (10,000 files with ``quick``)."""
    files = QUICK_FILES if quick else FILES
    say(f"   catalog scale: {files:,} files, {PER_FOLDER} per folder, {CALLS} calls of each kind")
    folder = tempfile.mkdtemp(prefix="catalog-", dir=workdir)
    try:
        figures = measure(folder, files, PER_FOLDER, CALLS, say)
    except Exception as err:  # noqa: BLE001 - reported as the targets' figure
        say(f"   catalog scale failed: {type(err).__name__}: {err}")
        return judge(None, quick, f"{type(err).__name__}: {err}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return judge(figures, quick)


def main(argv: list[str] | None = None) -> int:
    """Run the catalog part alone and print its figures and verdicts."""
    parser = argparse.ArgumentParser(description="Catalog scale: files_list, file_info, start-up and RSS.")
    parser.add_argument("--files", type=int, default=FILES, help="files in the catalog (default 100000)")
    parser.add_argument("--per-folder", type=int, default=PER_FOLDER, help="files per folder (default 1000)")
    parser.add_argument("--calls", type=int, default=CALLS, help="calls of each kind (default 200)")
    parser.add_argument("--keep", metavar="DIR", help="build in DIR and leave it there (the node's log too)")
    args = parser.parse_args(argv)
    folder = args.keep or tempfile.mkdtemp(prefix="bitnode-catalog-")
    os.makedirs(folder, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    try:
        figures = measure(folder, args.files, args.per_folder, args.calls)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(figures, indent=1))
    for check in judge(figures, args.files != FILES):
        print(f"{check['verdict']:5}  {check['target']}: {check['measured']}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
