"""bitnode.main.netns: naming the network namespace a process runs in, and entering one for a while."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import uuid

from twisted.trial.unittest import SynchronousTestCase

from bitnode.main import netns


def scratch_netns(case) -> str:
    """A fresh network namespace with its loopback up, deleted at ``case``'s cleanup; skips without root/ip."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise case.skipTest("a real network namespace needs root and `ip netns`")
    name = f"bnunit-{uuid.uuid4().hex[:8]}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        raise case.skipTest("`ip netns add` does not work here")
    case.addCleanup(subprocess.run, ["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
    return name


def thread_netns() -> tuple[int, int]:
    found = os.stat(netns.THREAD_NETNS)
    return found.st_dev, found.st_ino


class NamesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.own = os.path.join(self.dir, "own")
        open(self.own, "w").close()
        self.names = os.path.join(self.dir, "netns")
        os.makedirs(self.names)

    def test_the_name_whose_file_is_my_namespace_is_found(self) -> None:
        open(os.path.join(self.names, "other"), "w").close()
        os.link(self.own, os.path.join(self.names, "mine"))  # the same inode, as a bind mount of the namespace
        self.assertEqual(netns.current_name(self.names, self.own), "mine")

    def test_no_match_or_no_folder_is_none(self) -> None:
        open(os.path.join(self.names, "other"), "w").close()
        self.assertIsNone(netns.current_name(self.names, self.own))
        self.assertIsNone(netns.current_name(os.path.join(self.dir, "missing"), self.own))
        self.assertIsNone(netns.current_name(self.names, os.path.join(self.dir, "no-such-own")))

    def test_names_that_could_leave_the_folder_are_refused(self) -> None:
        for name in ("", ".", "..", "../etc", "a/b", "x" * 65, None, 3):
            self.assertRaises(ValueError, netns.path_of, name)
        self.assertEqual(netns.path_of("bn12ab-pub"), "/run/netns/bn12ab-pub")

    def test_the_host_process_is_in_no_named_namespace_of_an_empty_folder(self) -> None:
        self.assertIsNone(netns.current_name(self.names))


class EnterTests(SynchronousTestCase):
    def test_none_stays_where_it_is(self) -> None:
        before = thread_netns()
        with netns.entered(None):
            self.assertEqual(thread_netns(), before)

    def test_a_namespace_that_does_not_exist_raises_oserror_and_nothing_moves(self) -> None:
        before = thread_netns()
        with self.assertRaises(OSError):
            with netns.entered(f"bitnode-no-such-{uuid.uuid4().hex[:8]}"):
                self.fail("entered a namespace that does not exist")
        self.assertEqual(thread_netns(), before)

    def test_only_the_calling_thread_enters_and_it_comes_back(self) -> None:
        name = scratch_netns(self)
        target = os.stat(netns.path_of(name))
        before = thread_netns()
        seen_by_other_thread = []
        look = threading.Event()

        def other_thread():
            look.wait(10)
            seen_by_other_thread.append(thread_netns())

        other = threading.Thread(target=other_thread)
        other.start()  # before: a thread started inside would be born in the namespace
        with netns.entered(name):
            self.assertEqual(thread_netns(), (target.st_dev, target.st_ino))
            look.set()
            other.join()
        self.assertEqual(thread_netns(), before)
        self.assertEqual(seen_by_other_thread, [before])
        # and the block's exceptions pass through after the thread came back
        with self.assertRaises(KeyError):
            with netns.entered(name):
                raise KeyError("inside")
        self.assertEqual(thread_netns(), before)
