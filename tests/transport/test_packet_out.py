"""Tests for bitnode.transport.packet_out: one machine per path, driven with a Clock and a fake wire."""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.trial import unittest

from automats import Registry
from bitnode.errors import NotFound, Timeout, Unavailable
from bitnode.transport.commands import Command
from bitnode.transport.packet import Packet
from bitnode.transport.packet_out import FINAL_STATES, PacketOut, PeerRefused
from tests.support import clock_at
from tests.transport.test_support import Ed25519Signer, seed

ALICE = "alice@127.0.0.1_8001"
BOB = "bob@127.0.0.1_8002"
START = 1700000000.0


class Wire:
    """The ``write`` neighbour: records packets and lets the test decide when they are sent."""

    def __init__(self) -> None:
        self.written: list[Packet] = []
        self.pending: list[Deferred] = []

    def __call__(self, machine: PacketOut) -> Deferred:
        self.written.append(machine.packet)
        d: Deferred = Deferred()
        self.pending.append(d)
        return d

    def send_all(self) -> None:
        pending, self.pending = self.pending, []
        for d in pending:
            d.callback(None)


class PacketOutTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = clock_at(START)
        self.registry = Registry()
        self.alice = Ed25519Signer(seed(1))
        self.bob = Ed25519Signer(seed(2))
        self.wire = Wire()
        self.finished: list[PacketOut] = []

    def packet(self, command=Command.RETRIEVE, payload=b"block-7") -> Packet:
        return Packet.create(self.clock, command, ALICE, ALICE, BOB, payload, self.alice, packet_id="p-1")

    def answer(self, command, payload=b"", packet_id="p-1") -> Packet:
        return Packet.create(self.clock, command, BOB, BOB, ALICE, payload, self.bob, packet_id=packet_id)

    def machine(self, wait_response=True, timeout=10.0, write=None) -> PacketOut:
        return PacketOut(self.clock, self.packet(), write or self.wire, wait_response, timeout,
                         on_finished=self.finished.append, registry=self.registry)

    def path(self, machine: PacketOut) -> list[tuple[str, str, str]]:
        return [(r.from_state, r.event, r.to_state) for r in machine.history]

    def assert_gone(self, machine: PacketOut) -> None:
        self.assertTrue(machine.destroyed)
        self.assertNotIn(machine, self.registry)
        self.assertEqual(self.finished, [machine])
        self.assertIn(machine.state, FINAL_STATES)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ack_fires_the_result_with_the_ack(self) -> None:
        machine = self.machine()
        d = machine.run()
        self.assertEqual(machine.state, "SENDING")
        self.assertEqual(self.registry.list()[0]["state"], "SENDING")
        self.assertEqual([p.packet_id for p in self.wire.written], ["p-1"])
        self.wire.send_all()
        self.assertEqual(machine.state, "WAITING")
        self.assertNoResult(d)
        ack = self.answer(Command.ACK)
        machine.event("ack", ack)
        self.assertIs(self.successResultOf(d), ack)
        self.assertEqual(self.path(machine), [("AT_STARTUP", "run", "SENDING"), ("SENDING", "sent", "WAITING"),
                                              ("WAITING", "ack", "DONE")])
        self.assert_gone(machine)
        self.assertEqual(machine.info()["response"], "Ack")

    def test_reply_with_the_same_packet_id_is_the_answer(self) -> None:
        machine = self.machine()
        d = machine.run()
        self.wire.send_all()
        files = self.answer(Command.FILES, b"listing")
        machine.event("reply", files)
        self.assertEqual(self.successResultOf(d).payload, b"listing")
        self.assertEqual(machine.state, "DONE")
        self.assert_gone(machine)

    def test_fail_answers_peer_refused_with_the_reason(self) -> None:
        machine = self.machine()
        d = machine.run()
        self.wire.send_all()
        machine.event("fail", self.answer(Command.FAIL, b"no space left"))
        err = self.failureResultOf(d, PeerRefused).value
        self.assertEqual(err.reason, "no space left")
        self.assertIn("no space left", str(err))
        self.assertEqual(err.http_code, 409)
        self.assertEqual(machine.state, "FAILED")
        self.assertEqual(machine.info()["error"], "refused: no space left")
        self.assert_gone(machine)

    def test_no_answer_times_out_after_the_timeout(self) -> None:
        machine = self.machine(timeout=10.0)
        d = machine.run()
        self.wire.send_all()
        self.clock.advance(9.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        err = self.failureResultOf(d, Timeout).value
        self.assertIn("no answer from " + BOB, str(err))
        self.assertEqual(self.path(machine)[-1], ("WAITING", "timeout", "TIMEOUT"))
        self.assert_gone(machine)

    def test_timeout_while_still_sending(self) -> None:
        machine = self.machine(timeout=5.0)
        d = machine.run()
        self.clock.advance(5.0)
        self.assertIn("could not send", str(self.failureResultOf(d, Timeout).value))
        self.assertEqual(machine.state, "TIMEOUT")
        # the wire finishing later is ignored quietly (the machine is gone)
        self.wire.send_all()
        self.assertEqual(machine.unexpected_count, 0)
        self.assert_gone(machine)

    def test_without_wait_response_done_once_sent(self) -> None:
        machine = self.machine(wait_response=False)
        d = machine.run()
        self.assertNoResult(d)
        self.wire.send_all()
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.path(machine), [("AT_STARTUP", "run", "SENDING"), ("SENDING", "sent", "DONE")])
        self.assert_gone(machine)

    def test_send_error_is_passed_on(self) -> None:
        machine = self.machine(write=lambda m: fail(NotFound("unknown user bob")))
        d = machine.run()
        self.assertIn("unknown user bob", str(self.failureResultOf(d, NotFound).value))
        self.assertEqual(machine.state, "FAILED")
        self.assertTrue(machine.send_failure.check(NotFound))
        self.assert_gone(machine)

    def test_write_that_raises_is_a_send_error(self) -> None:
        def broken(machine):
            raise Unavailable("no transport")

        d = self.machine(write=broken).run()
        self.failureResultOf(d, Unavailable)

    def test_ack_before_sent_is_still_the_answer(self) -> None:
        machine = self.machine()
        d = machine.run()
        machine.event("ack", self.answer(Command.ACK))
        self.assertEqual(self.successResultOf(d).command, "Ack")
        self.assert_gone(machine)

    def test_cancel_by_the_gateway_fails_with_its_error(self) -> None:
        machine = self.machine()
        d = machine.run()
        self.wire.send_all()
        machine.event("cancel", Unavailable("gateway stopped"))
        self.failureResultOf(d, Unavailable)
        self.assertEqual(machine.state, "CANCELLED")
        self.assert_gone(machine)

    def test_cancel_by_the_caller(self) -> None:
        machine = self.machine()
        d = machine.run()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(machine.state, "CANCELLED")
        self.assert_gone(machine)

    def test_unexpected_events_are_logged_not_fatal(self) -> None:
        machine = self.machine()
        machine.event("ack", self.answer(Command.ACK))  # before run: nothing asked yet
        self.assertEqual(machine.state, "AT_STARTUP")
        d = machine.run()
        self.wire.send_all()
        machine.event("sent")  # a second "sent" while waiting
        self.assertEqual([(u.state, u.event) for u in machine.unexpected], [("AT_STARTUP", "ack"), ("WAITING", "sent")])
        machine.event("ack", self.answer(Command.ACK))
        machine.event("ack", self.answer(Command.ACK))  # after the end: recorded as sent to a destroyed machine
        self.assertTrue(machine.unexpected[-1].destroyed)
        self.assertEqual(self.successResultOf(d).command, "Ack")

    def test_timeout_must_be_positive(self) -> None:
        self.assertRaises(ValueError, self.machine, timeout=0)

    def test_info_is_json_safe(self) -> None:
        import json

        machine = self.machine()
        machine.run()
        row = machine.info()
        self.assertEqual(json.loads(json.dumps(row)), row)
        self.assertEqual((row["direction"], row["command"], row["state"], row["payload_size"]),
                         ("out", "Retrieve", "SENDING", 7))
        self.wire.send_all()
        machine.event("ack", self.answer(Command.ACK))

    # A finished machine is freed only by the cyclic GC: it must not keep the blocks it carried.

    def test_payloads_are_dropped_once_the_answer_is_handed_over(self) -> None:
        machine = self.machine()
        d = machine.run()
        self.wire.send_all()
        reply = self.answer(Command.DATA, b"x" * 1000)
        machine.event("reply", reply)
        self.assertEqual(self.successResultOf(d).payload, b"x" * 1000)  # the caller got all of it
        self.assertEqual((machine.packet.payload, machine.response.payload), (b"", b""))
        row = machine.info()
        self.assertEqual((row["payload_size"], row["response"], row["command"]), (7, "Data", "Retrieve"))

    def test_payload_is_dropped_after_a_failure_too(self) -> None:
        machine = self.machine()
        d = machine.run()
        self.clock.advance(10.0)
        self.failureResultOf(d, Timeout)
        self.assertEqual(machine.packet.payload, b"")
        self.assertEqual(machine.info()["payload_size"], 7)
