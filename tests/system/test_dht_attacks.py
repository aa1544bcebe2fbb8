"""System test: strangers attacking the DHT of real node processes on a localnet (issue 14 items 5 and 6).

One network (identity server, two suppliers, one customer, 2048-bit keys). The
customer holds the nickname ``alice``; a stranger with no identity — this test,
speaking raw UDP — then (1) claims ``alice`` at every node with a record
backdated by twenty days, (2) sends a forged-looking STORE without a token, and
(3) floods one node with PINGs from a hundred ports of one address. Every node
refuses the claims, the flood is cut to the per-IP budget, the counters say so
in ``network_status``, and afterwards the nickname still resolves to the
customer from every node.
"""

from __future__ import annotations

import json
import socket
import time

from bitnode.crypt.fastsign import generate_ed25519
from bitnode.dht import messages, records
from tests.system.support import LocalnetTestCase, wait_for

CUSTOMER = "customer-1"
DAY = 24 * 3600
STRANGER = messages.Sender(node_id=12345, user="")


class DHTAttackTests(LocalnetTestCase):
    """A stranger's backdated claims, token-less STOREs and floods against real DHT nodes."""

    def test_strangers_cannot_take_a_nickname_nor_flood_the_dht(self) -> None:
        self.start_network(suppliers=2, customers=1, prefix="bitnode-dht-attacks-")
        self.api(CUSTOMER, "set_my_nickname", nickname="alice")
        owner = wait_for(lambda: self.resolved("supplier-2"), "alice's nickname to be held")
        dht_ports = {name: self.dht_address(name) for name in self.nodes}

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10.0)
            forged = self.backdated_claim()
            for name, address in dht_ports.items():
                refused = self.ask(sock, address, messages.STORE, {"record": forged})  # no token: not executed
                self.assertEqual((refused.body["code"], refused.truncated), ("unverified", True), name)
                answer = self.ask(sock, address, messages.STORE, {"record": forged}, token=refused.token)
                self.assertEqual(answer.body["code"], "stale", name)

        flooded = "supplier-1"
        before = self.dht_status(flooded)["rate_limited"]
        ping = messages.encode(messages.Message(messages.PING, "00000000000000aa", STRANGER))
        sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(100)]
        try:
            for i in range(3000):
                sockets[i % 100].sendto(ping, dht_ports[flooded])
                if i % 100 == 99:
                    time.sleep(0.02)  # ~1.5 s: paced, so the kernel's socket buffer is not what drops them
        finally:
            for s in sockets:
                s.close()
        status = wait_for(lambda: (s := self.dht_status(flooded))["rate_limited"] > before and s, "the flood cut")
        self.assertGreater(status["rate_limited"] - before, 1000)
        for name in self.nodes:
            self.assertGreaterEqual(self.dht_status(name)["store_refused_stale"], 1, name)
            self.assertGreaterEqual(self.dht_status(name)["stores_refused_unverified"], 1, name)
        for name in ("supplier-1", "supplier-2"):
            self.assertEqual(wait_for(lambda n=name: self.resolved(n), f"{name} to resolve alice"), owner)

    # --- helpers -----------------------------------------------------------------------------

    def resolved(self, name: str) -> str | None:
        """Whose IDURL the DHT gives for the nickname ``alice``, asked at node ``name``."""
        code, envelope = self.call(name, "dht_value_get", key="nickname:alice", record_type="nickname")
        return envelope["result"]["value"]["idurl"] if code == 200 else None

    def dht_status(self, name: str) -> dict:
        return self.api(name, "network_status", dht=True)["dht"]

    def dht_address(self, name: str) -> tuple[str, int]:
        host, port = self.dht_status(name)["udp"].rsplit(":", 1)
        return host, int(port)

    def backdated_claim(self) -> dict:
        now = int(time.time())
        value = {"idurl": "http://evil.example/mallory.xml", "nickname": "alice"}
        return records.sign_record(generate_ed25519(), "nickname:alice", value, records.NICKNAME,
                                   now - 20 * DAY, now + DAY, 0).to_dict()

    def ask(self, sock: socket.socket, address: tuple[str, int], kind: str, body: dict,
            token: str = "") -> messages.Message:
        """One request over raw UDP and its answer (retried a few times: UDP may drop)."""
        rid = format(int(time.time() * 1e6) & (2**64 - 1), "016x")
        data = messages.encode(messages.Message(kind, rid, STRANGER, body=body, token=token))
        for _ in range(5):
            sock.sendto(data, address)
            try:
                while True:
                    reply = messages.decode(sock.recvfrom(65536)[0])
                    if reply.request_id == rid:
                        return reply
            except socket.timeout:
                continue
        raise AssertionError(f"no answer from {address} to {kind}: {json.dumps(body)[:80]}")
