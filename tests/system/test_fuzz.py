"""System test: the bounded part of `make fuzz` — schemathesis against a real node, no 5xx anywhere.

scripts/fuzz.py --quick starts a localnet, fuzzes every operation of the
customer's own OpenAPI document (a few test cases each, about two and a half
minutes in all), then the destructive ones, then process_restart and
process_stop twice each. Any 5xx answer, a node that does not come back or
does not stop, fails it.
"""

from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from bitnode.localnet.network import LocalNet
from tests.system.support import run_script


class FuzzTests(SynchronousTestCase):
    def test_no_operation_answers_a_server_error(self) -> None:
        work = tempfile.mkdtemp(prefix="bitnode-fuzz-test-")
        self.addCleanup(self.stop_leftovers, work)
        out = run_script(self, "fuzz.py", ["--quick", "--dir", work], timeout=600, tail=6000)
        summary = [line for line in out.splitlines() if line.startswith("fuzz: ") and "server errors" in line]
        self.assertTrue(summary, out[-3000:])
        self.assertIn(" 0 server errors, 0 problems", summary[-1])
        operations = int(summary[-1].split()[1])
        self.assertGreater(operations, 140, summary[-1])  # every route and legacy name, each verb

    @staticmethod
    def stop_leftovers(work: str) -> None:
        net = os.path.join(work, "net")
        if os.path.exists(os.path.join(net, "network.json")):
            LocalNet(net).down(kill=True)
