"""System test: `make bench` in its smoke-test size, on a real localnet (5 suppliers and a spare, 3-of-5).

Only what the bench reports is checked (a file went up and came back byte for
byte, every target has a verdict), never a speed: the machine is shared.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from bitnode.localnet.network import LocalNet
from tests.system.support import run_script


class BenchTests(SynchronousTestCase):
    """scripts/bench.py --quick through a localnet."""

    def test_a_file_goes_up_and_comes_back_and_every_target_is_judged(self) -> None:
        tmp = tempfile.mkdtemp(prefix="bitnode-bench-test-")
        self.addCleanup(self.stop_leftovers, tmp)
        env = dict(os.environ, TMPDIR=tmp)  # the bench's work folder (and its localnet) goes in there
        out = run_script(self, "bench.py", ["--quick", "--skip-api", "--sizes", "2", "--small-16k", "5",
                                            "--small-1k", "5", "--rebuild-size", "2MB"], timeout=300, env=env)
        lines = out.splitlines()
        row = next((line for line in lines if line.startswith("2 MiB ")), "")
        self.assertTrue(row.endswith("OK"), out[-3000:])
        verdict = next(line for line in lines if line.startswith("every file comes back byte for byte"))
        self.assertTrue(verdict.endswith("PASS"), verdict)
        for start in ("upload at 2 MiB", "download at 2 MiB", "folder of 1,000 x 16 KiB uploads",
                      "folder of 1,000 x 16 KiB downloads", "folder of 10,000 x 1 KiB uploads",
                      "rebuild onto a new supplier"):
            line = next(line for line in lines if line.startswith(start))
            self.assertTrue(line.rstrip().endswith(("PASS", "FAIL")), line)
        cpu = next(line for line in lines if line.startswith("upload at 2 MiB") and "CPU" in line)
        self.assertIn("customer", cpu)
        self.assertIn("small files 5 x 16 KiB: upload", out)
        self.assertIn("rebuild of 2 MiB (k=3)", out)
        self.assertEqual(glob.glob(os.path.join(tmp, "bitnode-bench-*")), [])  # the bench cleaned up

    def stop_leftovers(self, tmp: str) -> None:
        """A bench killed half-way leaves nodes running: stop them."""
        for network in glob.glob(os.path.join(tmp, "bitnode-bench-*", "localnet-*", "network.json")):
            LocalNet(os.path.dirname(network), log=lambda _line: None, documented_ports=False).down(kill=True)
        shutil.rmtree(tmp, ignore_errors=True)
