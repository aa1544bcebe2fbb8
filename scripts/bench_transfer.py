"""The storage half of ``make bench``: pipeline limits in this process, then transfers over a localnet.

Imported by ``scripts/bench.py`` (not run on its own).

- :func:`write_test_file` writes random bytes (nothing compresses or dedups)
  and returns their SHA-256.
- :func:`pipeline_limits` runs the node's own per-segment code on that file
  with no network: ``prepare_segment`` (read -> encrypt -> encode -> pack +
  hash, as the uploader) and ``verify_block`` + ``decode_segment`` + write (as
  the downloader, from k data blocks kept in files like a supplier's), with
  one thread and with ``threads`` segments at once; the better figure of each
  is the limit a transfer is compared with.
- :class:`BenchNet` starts a localnet (identity server, ``suppliers``
  suppliers, one customer) as real processes, makes the customer hire all of
  them with k = ``data_blocks``, and moves files through the customer's HTTP
  API (``file_upload_start`` / ``file_download_start`` with ``wait_result``,
  so the call answers when the transfer is DONE) while a :class:`RssSampler`
  watches every node's resident memory.
- ``profile_dir``: each transfer is also recorded by ``py-spy`` (if it is on
  PATH or given) on the customer and the first supplier, as collapsed stacks
  (``<size>-<upload|download>-<node>.txt``) for ``py-spy``-style analysis.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import psutil

MiB = 1024 * 1024
SEGMENT_SIZE = 4 * MiB
Log = Callable[[str], None]


# --- test data ---------------------------------------------------------------------------


def write_test_file(path: str, size: int, chunk: int = MiB) -> str:
    """Write ``size`` random bytes to ``path``; return their SHA-256 (hex)."""
    digest = hashlib.sha256()
    with open(path, "wb") as handle:
        left = size
        while left > 0:
            data = os.urandom(min(chunk, left))
            digest.update(data)
            handle.write(data)
            left -= len(data)
    return digest.hexdigest()


def file_sha256(path: str, chunk: int = MiB) -> str:
    """SHA-256 (hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# --- CPU and memory ----------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, from ``/proc/<pid>/stat`` (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: the fields after it follow the last ")"
    fields = text[text.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")




class RssSampler:
    """Samples the resident memory of some processes in a background thread; keeps each one's peak.

    ``pids`` maps a name to a pid (``0`` is this process). A process that is
    gone is simply no longer sampled.
    """

    def __init__(self, pids: dict[str, int], interval: float = 0.02):
        self._procs = {name: psutil.Process(pid or os.getpid()) for name, pid in pids.items()}
        self._interval = interval
        self._stop = threading.Event()
        self.peak: dict[str, int] = {}
        self._sample()
        self.baseline = dict(self.peak)
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        for name, proc in self._procs.items():
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            if rss > self.peak.get(name, 0):
                self.peak[name] = rss

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def peak_mib(self, names=None) -> float:
        """The highest peak among ``names`` (all when None), in MiB."""
        values = [v for k, v in self.peak.items() if names is None or k in names]
        return max(values, default=0) / MiB


# --- the in-process pipeline ------------------------------------------------------------


def _rate(size: int, seconds: float) -> float:
    return (size / MiB) / seconds if seconds > 0 else 0.0


def _windowed(fn, count: int, threads: int) -> float:
    """Run ``fn(i)`` for i in 0..count-1 with ``threads`` in flight; seconds taken."""
    start = time.perf_counter()
    if threads <= 1:
        for index in range(count):
            fn(index)
        return time.perf_counter() - start
    with ThreadPoolExecutor(max_workers=threads) as pool:
        window = []
        for index in range(count):
            window.append(pool.submit(fn, index))
            if len(window) >= threads:
                window.pop(0).result()
        for future in window:
            future.result()
    return time.perf_counter() - start


def pipeline_limits(path: str, workdir: str, k: int = 3, n: int = 5, segment_size: int = SEGMENT_SIZE,
                    threads: int = 2) -> dict:
    """MiB/s of the node's upload and download code on ``path`` with no network.

    Upload: ``prepare_segment`` per segment. Download: the k data blocks of
    every segment are first written to files (untimed, like a supplier's
    disk), then each segment is read back, verified (``verify_block``),
    decoded and decrypted (``decode_segment``) and appended to an output file
    in order. Each with one thread and with ``threads``; ``up``/``down`` are
    the better of the two.
    """
    from bitnode.storage import segment_crypto
    from bitnode.storage.downloader import decode_segment, verify_block
    from bitnode.storage.uploader import prepare_segment, segment_count

    size = os.path.getsize(path)
    key = segment_crypto.new_version_key()
    version_id = "bench"
    total = segment_count(size, segment_size)
    blocks_dir = os.path.join(workdir, "pipeline-blocks")
    os.makedirs(blocks_dir, exist_ok=True)
    hashes: dict[int, tuple[str, ...]] = {}
    lengths: dict[int, int] = {}

    def prepare(index: int) -> None:
        prepare_segment(path, index, segment_size, size, version_id, key, k, n)

    def prepare_and_keep(index: int) -> None:
        seg = prepare_segment(path, index, segment_size, size, version_id, key, k, n)
        hashes[index], lengths[index] = seg.block_sha256, seg.plaintext_length
        for pos in range(k):
            with open(os.path.join(blocks_dir, f"{index}.{pos}"), "wb") as handle:
                handle.write(seg.blocks[pos])

    out_path = os.path.join(workdir, "pipeline-out.bin")
    lock = threading.Lock()
    turn = threading.Condition(lock)
    state = {"next": 0}

    def restore(out, index: int) -> None:
        payloads = {}
        for pos in range(k):
            with open(os.path.join(blocks_dir, f"{index}.{pos}"), "rb") as handle:
                data = handle.read()
            payloads[pos], nonce = verify_block(data, hashes[index][pos], version_id, index, pos, k, n,
                                                lengths[index])
        plain = decode_segment(payloads, k, n, key, version_id, index, lengths[index], nonce)
        with turn:  # written strictly in order, like the downloader
            turn.wait_for(lambda: state["next"] == index)
            out.write(plain)
            state["next"] += 1
            turn.notify_all()

    try:
        up = {1: _rate(size, _windowed(prepare, total, 1))}
        if threads > 1:
            up[threads] = _rate(size, _windowed(prepare, total, threads))
        _windowed(prepare_and_keep, total, threads)
        down = {}
        for count in sorted({1, threads}):
            state["next"] = 0
            with open(out_path, "wb") as out:
                down[count] = _rate(size, _windowed(lambda i, o=out: restore(o, i), total, count))
    finally:
        shutil.rmtree(blocks_dir, ignore_errors=True)
        if os.path.exists(out_path):
            os.unlink(out_path)
    return {"size": size, "k": k, "n": n, "segment_size": segment_size, "threads": threads,
            "up_by_threads": up, "down_by_threads": down, "up": max(up.values()), "down": max(down.values())}


# --- the localnet ---------------------------------------------------------------------------


def find_py_spy(given: str | None = None) -> str | None:
    """The py-spy executable to profile with: ``given``, else one on PATH, else None."""
    if given:
        return given if os.access(given, os.X_OK) else None
    return shutil.which("py-spy")


class _Recorder:
    """py-spy recording some pids into collapsed-stack files until stopped (SIGINT makes it write)."""

    def __init__(self, py_spy: str | None, targets: dict[str, int], prefix: str, idle: bool = False):
        self._procs = []
        if not py_spy:
            return
        for name, pid in targets.items():
            command = [py_spy, "record", "--format", "raw", "--rate", "250", "--nonblocking", "--threads",
                       "-o", f"{prefix}-{name}.txt", "-p", str(pid)]
            if idle:
                command.append("--idle")  # waiting threads too: shows how busy each thread is
            self._procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def __enter__(self) -> _Recorder:
        if self._procs:
            time.sleep(0.5)  # py-spy attaches before the transfer begins
        return self

    def __exit__(self, *exc) -> None:
        for proc in self._procs:
            proc.send_signal(signal.SIGINT)
        for proc in self._procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class BenchNet:
    """A localnet of ``suppliers`` suppliers and one customer that hires them all, k = ``data_blocks``."""

    def __init__(self, workdir: str, log: Log, suppliers: int = 5, data_blocks: int = 3,
                 timeout: float = 240.0, py_spy: str | None = None, profile_dir: str | None = None,
                 profile_idle: bool = False, spares: int = 0):
        self.workdir = workdir
        self.spares = spares
        self.net = None
        self.log = log
        self.suppliers = suppliers
        self.data_blocks = data_blocks
        self.timeout = timeout
        self.py_spy = py_spy
        self.profile_dir = profile_dir
        self.profile_idle = profile_idle
        self.customer = None
        self.key_id = ""
        self.pids: dict[str, int] = {}

    # --- setup ---------------------------------------------------------------------------

    def up(self, attempts: int = 3, needed_bytes: int = 0) -> None:
        """Start every node, then make the customer hire all suppliers with k = data_blocks.

        ``needed_bytes``: the customer asks for space for that much (the
        largest file moved), and this waits until every supplier granted its
        share (a supplier grants a new customer at most its new-customer-quota).

        Other programs on this machine may take a port between the moment it
        is planned and the moment a node binds it: then the network is
        stopped and planned again on fresh ports (``attempts`` times at most).
        """
        from bitnode.interface.control import node_pid
        from bitnode.localnet.network import LocalNet, LocalnetError, wait_for
        from bitnode.main.basedir import Basedir

        for attempt in range(1, attempts + 1):
            directory = os.path.join(self.workdir, f"localnet-{attempt}")
            self.net = LocalNet(directory, log=lambda text: self.log("   " + text.strip()), documented_ports=False)
            try:
                self.net.up(suppliers=self.suppliers + self.spares, customers=1, key_size=2048,
                            timeout=self.timeout)
                break
            except LocalnetError as err:
                self.down()
                if attempt == attempts or "listen" not in str(err).lower():
                    raise
                self.log(f"   a port was taken meanwhile ({err}); trying again on other ports")
        plans = self.net.load()
        self.customer = Basedir.at(next(p for p in plans if "customer" in p.roles).basedir)
        settings = [("services/backups/data-blocks", self.data_blocks),
                    ("services/customer/suppliers-number", self.suppliers)]
        share = 0
        if needed_bytes:
            needed = 2 * needed_bytes  # the file, and room for what the other parts of the bench store meanwhile
            settings.append(("services/customer/needed-space", needed))
            share = needed_bytes // self.data_blocks
        for key, value in settings:
            self.call("config_set", key=key, value=value)
        asked = [0.0]

        def hired():
            rows = [r for r in self.call("suppliers_list") if r.get("state") == "CONNECTED" and not r.get("retiring")]
            if len(rows) < self.suppliers:
                return False
            if all((r.get("quota_bytes") or 0) >= share for r in rows):
                return True
            if time.monotonic() - asked[0] > 5.0:
                # A supplier hired before needed-space changed may still hold the default grant (the change
                # does not always reach every connector): ask every supplier again.
                asked[0] = time.monotonic()
                self.call("suppliers_ping", timeout=self.timeout)
            return False

        wait_for(hired, self.timeout, f"the customer to hire {self.suppliers} suppliers with room for "
                 f"{needed_bytes // MiB} MiB", interval=0.5)
        global_id = self.call("identity_get")["global_id"]
        self.key_id = f"master${global_id}"
        self.pids = {p.name: node_pid(Basedir.at(p.basedir)) for p in plans if "identity-server" not in p.roles}
        self.log(f"   customer hired {self.suppliers} suppliers, k={self.data_blocks}; "
                 f"pids {', '.join(f'{n}={p}' for n, p in self.pids.items())}")

    def down(self) -> None:
        """Stop every node (killing what does not stop)."""
        if self.net is None:
            return
        try:
            self.net.down(kill=False, timeout=30)
        except Exception:  # noqa: BLE001 - a bench that is ending must not hang on a stuck node
            try:
                self.net.down(kill=True, timeout=30)
            except Exception as err:  # noqa: BLE001 - said, and the bench goes on to its report
                self.log(f"   could not stop the localnet in {self.net.directory}: {err}")

    # --- calls -----------------------------------------------------------------------------

    def call(self, method: str, timeout: float = 60.0, **kwargs):
        """One API call on the customer; its result, or RuntimeError with the node's errors."""
        from bitnode.interface.client import call_api

        code, envelope = call_api(self.customer, method, kwargs, timeout=timeout)
        if code != 200 or envelope.get("status") != "OK":
            raise RuntimeError(f"{method} answered {code}: {'; '.join(map(str, envelope.get('errors', [])))}")
        return envelope["result"]

    def customer_name(self) -> str:
        """The customer node's name in the plan."""
        return next(name for name in self.pids if name.startswith("customer"))

    def _transfer(self, kind: str, label: str, method: str, size: int, **kwargs) -> dict:
        customer = self.customer_name()
        suppliers = [name for name in self.pids if name.startswith("supplier")]
        targets = {customer: self.pids[customer]}
        if suppliers:
            targets[suppliers[0]] = self.pids[suppliers[0]]
        prefix = os.path.join(self.profile_dir, f"{label}-{kind}") if self.profile_dir else ""
        recorder = _Recorder(self.py_spy if prefix else None, targets, prefix, self.profile_idle)
        with recorder, RssSampler(self.pids) as rss:
            cpu_before = self._cpu()
            start = time.perf_counter()
            info = self.call(method, timeout=3600.0, wait_result=True, **kwargs)
            seconds = time.perf_counter() - start
            cpu_after = self._cpu()
        if info.get("state") != "DONE":
            raise RuntimeError(f"{kind} ended {info.get('state')}: {info.get('error')}")
        cpu = {name: cpu_after.get(name, 0.0) - cpu_before.get(name, 0.0) for name in cpu_before}
        return {"seconds": seconds, "mib_s": _rate(size, seconds), "info": info,
                "customer_rss_mib": rss.peak_mib([customer]), "suppliers_rss_mib": rss.peak_mib(suppliers),
                "customer_rss_before_mib": rss.baseline.get(customer, 0) / MiB,
                "cpu_by_process": cpu, "customer_cpu_s": cpu.get(customer, 0.0),
                "suppliers_cpu_s": sum(v for k, v in cpu.items() if k in suppliers)}

    def _cpu(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            seconds = proc_cpu_seconds(pid)
            if seconds is not None:
                out[name] = seconds
        return out

    def round_trip(self, local_path: str, size: int, sha256: str, label: str, out_dir: str) -> dict:
        """Upload ``local_path``, download it again, compare SHA-256; figures of both directions."""
        remote = f"{self.key_id}:bench/{label}.bin"
        up = self._transfer("upload", label, "file_upload_start", size, local_path=local_path, remote_path=remote)
        target = os.path.join(out_dir, f"{label}.restored")
        down = self._transfer("download", label, "file_download_start", size, remote_path=remote,
                              destination_path=target)
        got = file_sha256(target)
        os.unlink(target)
        # The suppliers' space is freed for the next size (not timed).
        self.call("file_delete", timeout=3600.0, remote_path=remote)
        return {"size": size, "upload": up, "download": down, "sha256_ok": got == sha256}

    # --- small files and rebuild ----------------------------------------------------------

    def small_files(self, count: int, size: int, label: str, out_dir: str) -> dict:
        """Upload a folder of ``count`` random files of ``size`` bytes, download it, compare; files/s each way."""
        folder = os.path.join(out_dir, f"small-{label}")
        os.makedirs(folder)
        digests = {}
        for index in range(count):
            name = f"f{index:05d}.bin"
            digests[name] = write_test_file(os.path.join(folder, name), size)
        remote = f"{self.key_id}:bench/small-{label}"
        figures: dict = {"count": count, "size": size}
        customer = self.customer_name()
        suppliers = [name for name in self.pids if name.startswith("supplier")]

        def timed(kind: str, method: str, **kwargs) -> dict:
            """One folder transfer, with its seconds, files/s and CPU ms per file (customer, suppliers)."""
            targets = {customer: self.pids[customer]}
            prefix = os.path.join(self.profile_dir, f"small-{label}-{kind}") if self.profile_dir else ""
            with _Recorder(self.py_spy if prefix else None, targets, prefix, self.profile_idle):
                cpu_before = self._cpu()
                start = time.perf_counter()
                answer = self.call(method, timeout=3600.0, wait_result=True, **kwargs)
                figures[f"{kind}_seconds"] = time.perf_counter() - start
                cpu_after = self._cpu()
            figures[f"{kind}_files_s"] = count / figures[f"{kind}_seconds"]
            spent = {name: cpu_after.get(name, 0.0) - cpu_before.get(name, 0.0) for name in cpu_before}
            figures[f"{kind}_customer_cpu_ms_per_file"] = 1000 * spent.get(customer, 0.0) / count
            figures[f"{kind}_suppliers_cpu_ms_per_file"] = 1000 * sum(spent.get(n, 0.0) for n in suppliers) / count
            return answer

        try:
            info = timed("upload", "file_upload_start", local_path=folder, remote_path=remote)
            failed = [t for t in info.get("transfers", []) if t.get("state") != "DONE"]
            if failed or info.get("skipped"):
                skipped = info.get("skipped") or []
                first = (skipped[0].get("error") if skipped else failed[0].get("error")) or "?"
                raise RuntimeError(f"folder upload: {len(failed)} transfers not DONE, {len(skipped)} skipped; "
                                   f"first: {str(first)[:200]}")
            target = os.path.join(out_dir, f"small-{label}-restored")
            os.makedirs(target)
            timed("download", "file_download_start", remote_path=remote, destination_path=target)
            restored = os.path.join(target, os.path.basename(folder))
            bad = [name for name, digest in digests.items()
                   if not os.path.exists(os.path.join(restored, name)) or
                   file_sha256(os.path.join(restored, name)) != digest]
            figures["sha256_ok"] = not bad
            if bad:
                raise RuntimeError(f"{len(bad)} of {count} small files came back different or missing")
            try:  # the suppliers' space is freed for what follows (not timed; its failure keeps the figures)
                self.call("file_delete", timeout=3600.0, remote_path=remote)
            except Exception as err:  # noqa: BLE001 - said in the figures
                figures["cleanup_error"] = f"{type(err).__name__}: {err}"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            shutil.rmtree(os.path.join(out_dir, f"small-{label}-restored"), ignore_errors=True)
        return figures

    def rebuild(self, local_path: str, size: int, label: str, position: int = 0) -> dict:
        """Upload a file, replace the supplier at ``position`` with the spare, time until its blocks are rebuilt.

        Done when the new supplier holds the position with nothing left to
        rebuild and the former holder is no longer ``RETIRING`` (it is
        released only once its successor acknowledged every rebuilt block).
        Two spans are timed: *hiring* (``supplier_change`` until the spare is
        CONNECTED at the position) and *moving the data* (from then until
        done); the customer's backup_monitor also reports the seconds of its
        rebuild pass (fetch, decode/copy, store, acks) and the bytes it stored.
        """
        from bitnode.localnet.network import wait_for

        if not self.spares:
            raise RuntimeError("no spare supplier in this network")
        remote = f"{self.key_id}:bench/rebuild-{label}.bin"
        up = self.call("file_upload_start", timeout=3600.0, local_path=local_path, remote_path=remote,
                       wait_result=True)
        if up.get("state") != "DONE":
            raise RuntimeError(f"upload before the rebuild ended {up.get('state')}: {up.get('error')}")
        rows = self.call("suppliers_list")
        hired = {r["supplier_id"] for r in rows if not r.get("retiring")}
        old = next(r["supplier_id"] for r in rows if r["position"] == position and not r.get("retiring"))
        spare = self._spare_id(hired)
        customer = self.customer_name()
        targets = {customer: self.pids[customer]}
        for role, supplier_id in (("old", old), ("new", spare)):
            name = supplier_id.split("@")[0]
            if name in self.pids:
                targets[f"{name}-{role}"] = self.pids[name]
        prefix = os.path.join(self.profile_dir, f"{label}-rebuild") if self.profile_dir else ""
        marks: dict[str, float] = {}

        def rebuilt():
            rows = self.call("suppliers_list")
            holder = next((r for r in rows if r["position"] == position and not r.get("retiring")), None)
            retiring = [r for r in rows if r.get("retiring") and r["supplier_id"] == old and r["state"] == "RETIRING"]
            connected = holder is not None and holder["supplier_id"] == spare and holder.get("state") == "CONNECTED"
            if connected and "hired" not in marks:
                marks["hired"] = time.perf_counter()
            return connected and not holder.get("rebuild") and not retiring

        with _Recorder(self.py_spy if prefix else None, targets, prefix, self.profile_idle):
            cpu_before = self._cpu()
            start = time.perf_counter()
            self.call("supplier_change", position=position, new_supplier_id=spare)
            wait_for(rebuilt, self.timeout, f"the blocks of position {position} to be rebuilt on {spare}",
                     interval=0.02)
            seconds = time.perf_counter() - start
            cpu_after = self._cpu()
        monitor = (self.call("service_info", service_name="service_backups").get("status") or {}).get(
            "backup_monitor") or {}
        self.call("file_delete", timeout=3600.0, remote_path=remote)
        rebuilt_mib = size / self.data_blocks / MiB
        hire_seconds = marks.get("hired", start) - start
        data_seconds = max(seconds - hire_seconds, 1e-9)
        return {"size": size, "k": self.data_blocks, "seconds": seconds, "rebuilt_mib": rebuilt_mib,
                "mib_s": rebuilt_mib / seconds, "file_mib_s": _rate(size, seconds), "old": old, "new": spare,
                "hire_seconds": hire_seconds, "data_seconds": data_seconds, "data_mib_s": rebuilt_mib / data_seconds,
                "monitor": {key: monitor.get(key) for key in ("rebuild_seconds", "bytes_rebuilt", "blocks_copied",
                                                              "blocks_rebuilt", "rebuild_failures", "runs")},
                "cpu_by_process": {n: cpu_after.get(n, 0.0) - cpu_before.get(n, 0.0) for n in cpu_before}}

    def _spare_id(self, hired: set[str]) -> str:
        """The global id of a supplier of this network the customer has not hired."""
        from bitnode.interface.client import call_api
        from bitnode.main.basedir import Basedir

        for plan in self.net.load():
            if "supplier" not in plan.roles:
                continue
            code, envelope = call_api(Basedir.at(plan.basedir), "identity_get", {}, timeout=60.0)
            if code == 200 and envelope["result"]["global_id"] not in hired:
                return envelope["result"]["global_id"]
        raise RuntimeError("every supplier of the network is hired: no spare")
