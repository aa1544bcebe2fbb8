"""Facts about the running process and the machine, for process_info and process_debug."""

from __future__ import annotations

import gc
import os
import platform
import sys
import threading
import traceback

import psutil


def system_stats(path: str) -> dict:
    """CPU, memory and disk figures of this process and machine (psutil)."""
    proc = psutil.Process(os.getpid())
    with proc.oneshot():
        mem = proc.memory_info()
        cpu_times = proc.cpu_times()
        threads = proc.num_threads()
        try:
            fds = proc.num_fds()
        except AttributeError:  # pragma: no cover - not on Windows
            fds = None
    vm = psutil.virtual_memory()
    disk = psutil.disk_usage(path)
    return {
        "process": {
            "rss_bytes": mem.rss,
            "vms_bytes": mem.vms,
            "cpu_user_seconds": cpu_times.user,
            "cpu_system_seconds": cpu_times.system,
            "cpu_percent": proc.cpu_percent(interval=None),
            "threads": threads,
            "open_files": fds,
        },
        "machine": {
            "cpu_count": psutil.cpu_count(),
            "cpu_percent": psutil.cpu_percent(interval=None),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "memory_total_bytes": vm.total,
            "memory_available_bytes": vm.available,
            "memory_percent": vm.percent,
            "boot_time": psutil.boot_time(),
        },
        "disk": {
            "path": path,
            "total_bytes": disk.total,
            "used_bytes": disk.used,
            "free_bytes": disk.free,
            "percent": disk.percent,
        },
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def debug_snapshot(reactor) -> dict:
    """What a developer wants to see when a node misbehaves: threads, timers, GC."""
    frames = sys._current_frames()
    threads = []
    for thread in threading.enumerate():
        frame = frames.get(thread.ident)
        stack = traceback.format_stack(frame, limit=4) if frame is not None else []
        threads.append({"name": thread.name, "daemon": thread.daemon, "stack": [line.strip() for line in stack]})
    delayed = reactor.getDelayedCalls() if hasattr(reactor, "getDelayedCalls") else []
    return {
        "pid": os.getpid(),
        "threads": threads,
        "delayed_calls": len(delayed),
        "gc_counts": list(gc.get_count()),
        "gc_objects": len(gc.get_objects()),
    }
