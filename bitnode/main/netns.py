"""Linux network namespaces by name (``ip netns``): which one a process runs in, and entering one.

A node started inside a named namespace (``/run/netns/NAME``, as ``ip netns
add`` makes them) has its API on 127.0.0.1 *of that namespace*. It writes the
name into its endpoints file (:func:`current_name`), and a client on the host
opens its connection from inside that namespace (:func:`entered`): only the
calling thread moves, and a socket keeps the namespace it was created in, so
the rest of the process is never affected. Entering needs root
(CAP_SYS_ADMIN); nothing here creates or changes a namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
from typing import Iterator, Optional

#: Where ``ip netns`` keeps its named namespaces.
NETNS_DIR = "/run/netns"
#: The calling thread's own network namespace.
THREAD_NETNS = "/proc/thread-self/ns/net"
#: setns(2) flag for a network namespace.
CLONE_NEWNET = 0x40000000
#: Names ``ip netns`` accepts (and nothing that could leave NETNS_DIR).
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def path_of(name: str) -> str:
    """The file of namespace ``name``; ValueError for a name that is not one."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"not a network namespace name: {name!r}")
    return os.path.join(NETNS_DIR, name)


def current_name(netns_dir: str = NETNS_DIR, own: str = "/proc/self/ns/net") -> Optional[str]:
    """The name of the named network namespace this process runs in, or None (the host's, or unnamed)."""
    try:
        mine = os.stat(own)
        names = sorted(os.listdir(netns_dir))
    except OSError:
        return None
    for name in names:
        try:
            found = os.stat(os.path.join(netns_dir, name))
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == (mine.st_dev, mine.st_ino):
            return name
    return None


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def entered(name: Optional[str]) -> Iterator[None]:
    """Run the block with the calling thread in network namespace ``name`` (None: stay where it is).

    Other threads stay where they are. Sockets created inside stay in that
    namespace; threads and child processes started inside are born there. OSError when the namespace does not exist or the
    process may not enter it (not root).
    """
    if name is None:
        yield
        return
    target = os.open(path_of(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        home = os.open(THREAD_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(target)
        raise
    try:
        _setns(target)
        try:
            yield
        finally:
            # back home, or this thread would keep talking from inside the namespace
            _setns(home)
    finally:
        os.close(target)
        os.close(home)
