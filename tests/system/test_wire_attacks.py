"""System test: strangers attacking the packet transport of real node processes (issue 14 items 1, 2, 3, 7).

One network (identity server, two suppliers, one customer, 2048-bit keys). The
customer stores a file. A stranger — this test, speaking raw TCP, with no
registered identity — then hits supplier-1 with: introductions dated 15
minutes ahead (refused, no cache touched), a hundred made-up introductions
from one address (cut to the per-IP rate; the identity fetches they cause are
bounded), a 4 MiB payload from an unknown sender (read past, never buffered)
and a hundred connections from one address (cut to the per-IP limit). The
counters say so in ``packets_stats``, ``network_status`` and ``service_info``.

Then supplier-1 restarts and the customer deletes its file: the delete needs
a fresh challenge from the restarted supplier, gets it, and the blocks go.
Through all of it the customer's uploads and downloads keep working.
"""

from __future__ import annotations

import base64
import socket
import time

from twisted.internet.task import Clock

from bitnode.crypt import fastsign, keys
from bitnode.transport.commands import Command
from bitnode.transport.framing import PREFIX
from bitnode.transport.packet import Packet
from bitnode.userid.identity import Identity, format_date
from bitnode.userid.packet_keys import Ed25519Signer
from tests.system.support import LocalnetTestCase, wait_for

CUSTOMER, TARGET = "customer-1", "supplier-1"
MiB = 1024 * 1024


class Stranger:
    """A made-up user (its identity document is published nowhere) who signs its own packets."""

    def __init__(self, name: str, id_server: str, rsa: keys.RsaPrivateKey) -> None:
        packet_key = fastsign.generate_ed25519()
        self.signer = Ed25519Signer(packet_key)
        self.identity = Identity(
            name=name, sources=(f"http://{id_server}/{name}.xml",), contacts=(), revision=1,
            date=format_date(time.time()), public_key=rsa.public_key().to_pem().decode("ascii"),
            signing_key=base64.b64encode(fastsign.public_to_raw(packet_key)).decode("ascii"),
        ).sign(rsa)

    def frame(self, to: str, date: float, command: Command = Command.IDENTITY, payload: bytes | None = None) -> bytes:
        clock = Clock()
        clock.advance(date)
        packet = Packet.create(clock, command, self.identity.global_id, self.identity.global_id, to,
                               self.identity.to_xml() if payload is None else payload, self.signer)
        head = packet.encode_header()
        return PREFIX.pack(2 + len(head) + len(packet.payload), len(head)) + head + packet.payload


class WireAttackTests(LocalnetTestCase):
    def test_a_stranger_on_raw_tcp_costs_little_and_the_customer_keeps_working(self) -> None:
        self.start_network(suppliers=2, customers=1, prefix="bitnode-wire-attacks-")
        first = self.upload_random(CUSTOMER, "before.bin", 300 * 1024)
        target = self.nodes[TARGET]
        address = ("127.0.0.1", target["ports"]["tcp"])
        id_server = f"127.0.0.1:{self.nodes['idserver']['ports']['idserver']}"
        rsa = keys.generate_rsa(2048)
        strangers = [Stranger(f"mallory{n}", id_server, rsa) for n in range(150)]
        now = time.time()
        sockets = []
        try:
            # 1. introductions dated 15 minutes ahead; 2. a hundred introductions from one address
            sockets.append(self.send(address, "127.0.0.6", b"".join(s.frame(target["global_id"], now + 899)
                                                                    for s in strangers[:50])))
            sockets.append(self.send(address, "127.0.0.7", b"".join(s.frame(target["global_id"], now)
                                                                    for s in strangers[50:])))
            # 3. a 4 MiB payload from an unknown sender
            sockets.append(self.send(address, "127.0.0.8", strangers[0].frame(
                target["global_id"], now, Command.DATA, b"x" * (4 * MiB))))
            # 4. a hundred connections from one address
            for _ in range(100):
                sockets.append(socket.create_connection(address, timeout=10, source_address=("127.0.0.9", 0)))

            stats = wait_for(lambda: (s := self.api(TARGET, "packets_stats"))["dropped"]["unknown_sender"] >= 1
                             and s["dropped"]["too_new"] >= 50 and s["limits"]["connections"]["refused_per_ip"] >= 36
                             and s["limits"]["introductions"]["rate_limited"] >= 40 and s,
                             "the attack to be counted", timeout=90)
            limits = stats["limits"]
            self.assertEqual(stats["dropped"]["too_new"], 50)
            self.assertLessEqual(limits["replay"]["senders"], 2, limits["replay"])  # peers only, no stranger
            self.assertGreaterEqual(limits["introductions"]["rate_limited"], 35)  # 100 from one IP, 60 a minute
            self.assertLess(limits["buffer"]["peak_bytes_buffered"], 4 * MiB)
            self.assertEqual(limits["connections"]["refused_per_ip"], 36)
            fetches = self.api(TARGET, "service_info", service_name="service_identity")["status"]["fetches"]
            self.assertLessEqual(fetches["fetched"] + fetches["failed"], 60)
            network = self.api(TARGET, "network_status", tcp=True, cache=True)
            self.assertEqual(network["tcp"]["limits"]["connections"]["refused_per_ip"], 36)
            self.assertIn("negative_cached", network["cache"]["fetches"])

            # the customer's own work goes on during the attack
            second = self.upload_random(CUSTOMER, "during.bin", 300 * 1024)
        finally:
            for sock in sockets:
                sock.close()

        # 7. after a restart the customer's delete needs (and gets) a fresh challenge from the supplier
        self.net.stop_node(TARGET)
        self.net.start_node(TARGET)
        wait_for(lambda: self.api(CUSTOMER, "file_delete", remote_path=second[0])["failed"] == [],
                 "the delete to reach both suppliers", timeout=60)
        challenges = self.api(TARGET, "packets_stats")["limits"]["challenges"]
        self.assertGreaterEqual(challenges["accepted"], 1, challenges)
        self.assertGreaterEqual(challenges["refused"], 1, challenges)
        self.assertEqual(self.download_digest(CUSTOMER, first[0]), first[1])
        print(f"\nwire attacks: {limits['introductions']['rate_limited']} introductions rate-limited, "
              f"{limits['connections']['refused_per_ip']} connections refused, identity requests "
              f"{fetches['fetched'] + fetches['failed']} (busy {fetches['busy']}), "
              f"peak buffered {limits['buffer']['peak_bytes_buffered']} bytes")

    # --- helpers -----------------------------------------------------------------------------

    def send(self, address: tuple[str, int], source: str, data: bytes) -> socket.socket:
        sock = socket.create_connection(address, timeout=10, source_address=(source, 0))
        sock.sendall(data)
        return sock


