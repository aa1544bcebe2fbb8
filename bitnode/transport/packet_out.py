"""packet_out: the life of one outgoing packet, from the wire to its answer.

One :class:`PacketOut` machine per outgoing packet.  It hands the packet to a
``write`` neighbour (the gateway: resolve the peer's address, queue, send on
a connection), then, if an answer is wanted, waits for the peer's ``Ack``,
``Fail`` or any other packet with the same ``packet_id`` (responses correlate
by packet id and by the peer they come from).  Its :attr:`PacketOut.result`
Deferred fires with:

- the response :class:`~bitnode.transport.packet.Packet` (``Ack`` or a reply);
- ``None`` when no answer was wanted and the packet went out;
- :class:`PeerRefused` when the peer answered ``Fail`` (its payload is the reason);
- :class:`~bitnode.errors.Timeout` when nothing came within ``timeout`` seconds
  (the clock starts at ``run``, so it covers resolving and connecting too);
- the send error (``Unavailable``, ``NotFound`` ...) when the packet could not
  be written;
- ``Unavailable`` when the gateway stops (``cancel``), or ``CancelledError``
  when the caller cancels the Deferred.

The machine lives in the node's registry while it runs, so ``automats_list``
shows the packets in flight, and destroys itself on reaching a final state
(``DONE``, ``FAILED``, ``TIMEOUT``, ``CANCELLED``).  The timeout is a setting,
so it is a ``callLater`` on the injected clock, not a class-level timer.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from automats import Automat
from bitnode.errors import Conflict, Timeout, Unavailable
from bitnode.transport.packet import Packet

#: Payload bytes of a ``Fail`` shown in error texts.
MAX_REASON = 300

FINAL_STATES = frozenset({"DONE", "FAILED", "TIMEOUT", "CANCELLED"})


class PeerRefused(Conflict):
    """The peer answered ``Fail``; ``reason`` is its payload as text, ``response`` the packet."""

    def __init__(self, message: str, reason: str = "", response: Packet | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.response = response


def fail_reason(packet: Packet) -> str:
    """The text of a ``Fail`` payload, bounded and printable."""
    text = packet.payload[:MAX_REASON].decode("utf-8", errors="replace")
    return text.strip() or "no reason given"


class PacketOut(Automat):
    """Sends one packet and waits for its answer.

    :param clock: time source for the timeout.
    :param packet: the signed packet.
    :param write: ``write(machine) -> Deferred[None]`` puts the packet on the
        wire (fires once it is handed to a connection).
    :param wait_response: wait for ``Ack``/``Fail``/a reply, or finish once sent.
    :param timeout: seconds from ``run`` to the answer (or to sent).
    :param on_finished: called with the machine once it reached a final state,
        just before :attr:`result` fires.
    """

    name = "packet_out"
    initial = "AT_STARTUP"
    transitions = [
        # state        event          guard             next         actions
        ("AT_STARTUP", "run",         None,             "SENDING",   ["start_timeout", "write_to_wire"]),
        ("SENDING",    "sent",        "needs_response", "WAITING",   ["note_sent"]),
        ("SENDING",    "sent",        None,             "DONE",      ["note_sent", "finish", "report_sent"]),
        ("SENDING",    "send-failed", None,             "FAILED",    ["keep_send_error", "finish", "report_send_error"]),
        # an answer proves delivery even if "sent" has not been seen yet
        ("SENDING",    "ack",         None,             "DONE",      ["finish", "report_response"]),
        ("SENDING",    "reply",       None,             "DONE",      ["finish", "report_response"]),
        ("SENDING",    "fail",        None,             "FAILED",    ["finish", "report_refused"]),
        ("SENDING",    "timeout",     None,             "TIMEOUT",   ["finish", "report_timeout"]),
        ("SENDING",    "cancel",      None,             "CANCELLED", ["finish", "report_cancelled"]),
        ("WAITING",    "ack",         None,             "DONE",      ["finish", "report_response"]),
        ("WAITING",    "reply",       None,             "DONE",      ["finish", "report_response"]),
        ("WAITING",    "fail",        None,             "FAILED",    ["finish", "report_refused"]),
        ("WAITING",    "timeout",     None,             "TIMEOUT",   ["finish", "report_timeout"]),
        ("WAITING",    "cancel",      None,             "CANCELLED", ["finish", "report_cancelled"]),
    ]

    def __init__(
        self,
        clock: IReactorTime,
        packet: Packet,
        write: Callable[[PacketOut], Deferred[None]],
        wait_response: bool,
        timeout: float,
        on_finished: Callable[[PacketOut], None] | None = None,
        registry: Any = None,
        log: Any = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.packet = packet
        self.payload_size = len(packet.payload)
        self.wait_response = bool(wait_response)
        self.timeout = float(timeout)
        self.result: Deferred[Packet | None] = Deferred(self._cancelled_by_caller)
        self.response: Packet | None = None
        self.error = ""
        self.send_failure: Failure | None = None
        self.reintroduced = False  # the gateway introduced us to the peer and sent again (at most once)
        self.challenged = False  # the gateway answered the peer's challenge and sent again (at most once)
        self.started_at = clock.seconds()
        self.sent_at: float | None = None
        self.finished_at: float | None = None
        self._write = write
        self._on_finished = on_finished
        self._deadline: Any = None
        super().__init__(clock, registry=registry, log=log)

    # -- public -------------------------------------------------------------

    def run(self) -> Deferred[Packet | None]:
        """Start sending; returns :attr:`result`."""
        self.event("run")
        return self.result

    @property
    def key(self) -> tuple[str, str]:
        """``(peer, packet_id)``: what an answer must match."""
        return (self.packet.remote_id, self.packet.packet_id)

    def info(self) -> dict:
        """A JSON-safe row for ``packets_list``."""
        now = self.finished_at if self.finished_at is not None else self.clock.seconds()
        row = {
            "direction": "out",
            "machine": self.id,
            "state": self.state,
            "command": self.packet.command,
            "packet_id": self.packet.packet_id,
            "remote_id": self.packet.remote_id,
            "payload_size": self.payload_size,
            "wait_response": self.wait_response,
            "timeout": self.timeout,
            "started": self.started_at,
            "sent": self.sent_at,
            "elapsed": round(now - self.started_at, 6),
        }
        if self.finished_at is not None:
            row["finished"] = self.finished_at
        if self.response is not None:
            row["response"] = self.response.command
        if self.error:
            row["error"] = self.error
        return row

    # -- guards ---------------------------------------------------------------

    def needs_response(self, *args: Any) -> bool:
        """Whether the caller waits for an answer."""
        return self.wait_response

    # -- actions --------------------------------------------------------------

    def start_timeout(self, *args: Any) -> None:
        """Arm the deadline on the injected clock."""
        self._deadline = self.clock.callLater(self.timeout, self.event, "timeout")

    def write_to_wire(self, *args: Any) -> None:
        """Ask the neighbour to send; its outcome comes back as ``sent`` / ``send-failed``."""
        try:
            d = self._write(self)
        except Exception:
            d = Deferred()
            d.errback(Failure())
        d.addCallbacks(self._write_done, self._write_failed)

    def _write_done(self, _: Any) -> None:
        # after a timeout or cancel the machine is gone and the outcome no longer matters
        if not self.destroyed:
            self.event("sent")

    def _write_failed(self, failure: Failure) -> None:
        if not self.destroyed:
            self.event("send-failed", failure)

    def note_sent(self, *args: Any) -> None:
        """Remember when the packet was handed to a connection."""
        self.sent_at = self.clock.seconds()

    def keep_send_error(self, failure: Failure, *args: Any) -> None:
        """Remember why the packet could not be sent (the owner reads it on finish)."""
        self.send_failure = failure
        self.error = failure.getErrorMessage()

    def finish(self, *args: Any) -> None:
        """Disarm the deadline and leave the registry (the report that follows tells the owner)."""
        self.finished_at = self.clock.seconds()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        self.destroy()

    def report_sent(self, *args: Any) -> None:
        """No answer wanted: the packet is out."""
        self._fire(None)

    def report_response(self, response: Packet, *args: Any) -> None:
        """Hand the Ack or reply to the caller."""
        self.response = response
        self._fire(response)

    def report_refused(self, response: Packet, *args: Any) -> None:
        """The peer answered Fail."""
        self.response = response
        reason = fail_reason(response)
        self.error = f"refused: {reason}"
        self._fail(PeerRefused(
            f"{response.creator_id} refused {self.packet.command} {self.packet.packet_id}: {reason}",
            reason, response,
        ))

    def report_send_error(self, failure: Failure, *args: Any) -> None:
        """Pass the send error on unchanged (NotFound, Unavailable, Timeout ...)."""
        self._fail(failure)

    def report_timeout(self, *args: Any) -> None:
        """Nothing came back (or it could not even be sent) in time."""
        if self.sent_at is None:
            text = f"could not send {self.packet.command} to {self.packet.remote_id} within {self.timeout:g}s"
        else:
            text = (f"no answer from {self.packet.remote_id} to {self.packet.command} "
                    f"{self.packet.packet_id} within {self.timeout:g}s")
        self.error = "timeout"
        self._fail(Timeout(text))

    def report_cancelled(self, error: Exception | None = None, *args: Any) -> None:
        """Stopped by the gateway (an error to report) or by the caller (``CancelledError`` follows)."""
        self.error = str(error) if error is not None else "cancelled by the caller"
        if error is not None:
            self._fail(error)
        else:
            self._tell_owner()  # Deferred.cancel fails the result with CancelledError itself

    # -- internals ------------------------------------------------------------

    def _cancelled_by_caller(self, _d: Deferred) -> None:
        if not self.destroyed:
            self.event("cancel", None)

    def _tell_owner(self) -> None:
        # the owner files the outcome before the caller hears it
        owner, self._on_finished = self._on_finished, None
        if owner is not None:
            owner(self)

    def _fire(self, value: Packet | None) -> None:
        self._tell_owner()
        if not self.result.called:
            self.result.callback(value)
        self._drop_payloads()

    def _fail(self, error: Exception | Failure) -> None:
        self._tell_owner()
        if not self.result.called:
            self.result.errback(error if isinstance(error, Failure) else Failure(error))
        self._drop_payloads()

    def _drop_payloads(self) -> None:
        # A finished machine is freed only by the cyclic GC (its logger and its result's canceller point
        # back at it), which may run much later: it must not keep a block sent or received alive until then.
        self.packet = replace(self.packet, payload=b"")
        if self.response is not None:
            self.response = replace(self.response, payload=b"")


def gateway_stopped() -> Unavailable:
    """The error pending packets get when the gateway stops."""
    return Unavailable("the gateway stopped before an answer came")
