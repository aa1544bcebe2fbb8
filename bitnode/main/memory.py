"""Process-wide tuning of the C allocator for a node that moves multi-MiB blocks.

A transfer allocates and frees buffers of 1-7 MiB all the time (segments,
blocks, packets). With glibc's defaults many of them are fresh ``mmap``
regions, or heap memory trimmed back to the kernel as soon as it is freed, so
every buffer costs a page fault per 4 KiB page (zeroed by the kernel): a third
of the node's CPU time while uploading went to the kernel. And each worker
thread gets its own arena, which multiplies what stays fragmented.

:func:`tune_allocator` (glibc only, once per process, from the twistd entry
point — never from a Node, since many Nodes may share a process) keeps
buffers up to ``mmap_threshold`` in the heap, keeps up to ``trim_threshold``
of freed heap for reuse, and caps the arenas at ``arena_max``. The peak
resident memory of a transfer stays what it was (it is what the buffers in
flight need); the node simply keeps that much for the next transfer instead
of faulting it in again. A ``MALLOC_*`` environment variable set by the user
for one of these knobs wins over it.
"""

from __future__ import annotations

import ctypes
import os

MiB = 1024 * 1024
#: mallopt() parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Each knob and the environment variable that, when set, leaves it to the user.
_KNOBS = (
    (M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),
    (M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"),
    (M_ARENA_MAX, "MALLOC_ARENA_MAX"),
)


def _libc():
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def tune_allocator(mmap_threshold: int = 16 * MiB, trim_threshold: int = 32 * MiB, arena_max: int = 2,
                   libc=None, environ=None) -> dict[str, bool]:
    """Apply the three settings where the C library has ``mallopt``; which ones were applied.

    Returns ``{"mmap_threshold": bool, "trim_threshold": bool, "arena_max": bool}``:
    False for a knob left to the environment, or when there is no ``mallopt``
    (not glibc) or it refused the value.
    """
    libc = _libc() if libc is None else libc
    environ = os.environ if environ is None else environ
    mallopt = getattr(libc, "mallopt", None) if libc is not None else None
    values = {M_MMAP_THRESHOLD: mmap_threshold, M_TRIM_THRESHOLD: trim_threshold, M_ARENA_MAX: arena_max}
    names = {M_MMAP_THRESHOLD: "mmap_threshold", M_TRIM_THRESHOLD: "trim_threshold", M_ARENA_MAX: "arena_max"}
    applied = {}
    for param, variable in _KNOBS:
        ok = False
        if mallopt is not None and variable not in environ:
            # mallopt answers 1 on success, 0 when it refuses the value.
            ok = bool(mallopt(ctypes.c_int(param), ctypes.c_int(int(values[param]))))
        applied[names[param]] = ok
    return applied
