"""shared_access_coordinator: one share granted to me, connected to its owner's suppliers.

A reader (grantee) of a share opens it with ``share_open``; this machine then
finds the owner's suppliers (the owner's signed ``suppliers`` record in the
DHT), introduces itself to them (an Identity ping: a node drops packets from
senders it does not know), and reads the share's index from them (the owner's
catalog rows of that share, sealed with the share key and signed by the owner:
:mod:`bitnode.access.share_index`). Then the shared files are visible on this
node (``files_list`` with the share's key id) and can be downloaded from the
owner's suppliers, which serve them because the owner listed me as a reader
(:mod:`bitnode.storage.share_scope`). Read top to bottom::

    AT_STARTUP --open--> DHT_LOOKUP               look up the owner's suppliers
    DHT_LOOKUP --suppliers-found--> SUPPLIERS?    ping each of them
    SUPPLIERS? --suppliers-connected--> INDEX?    fetch, verify, decrypt, import the newest index
    INDEX? --index-read--> CONNECTED              the files are visible
    any step --*-failed | timer-30sec--> DISCONNECTED (why is kept; share_open answers it)
    DISCONNECTED --timer-1min | open--> DHT_LOOKUP   try again
    CONNECTED --timer-10min | open--> DHT_LOOKUP     read again: new files, new suppliers
    any --close--> CLOSED                         (share_close, share_delete, node stopping)

Each attempt has a number; an answer of an attempt that was given up (it
timed out, or a newer one started) carries the old number and changes
nothing. An ``open`` while an attempt runs waits for that attempt.

The neighbour ``link`` does the work, each call returning a Deferred:
``find_suppliers()`` (fires with the owner's positions, "" for empty ones),
``connect(positions)`` (fires once enough of them answered), ``load_index(positions)``
(fires with ``{"serial", "files"}`` once the index is imported) and
``release()`` (forget the files, stop their transfers). ``publish(event_id,
data)`` tells the node: ``share-connected`` and ``share-disconnected``.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer

from automats import Automat
from bitnode.errors import BitnodeError, Timeout, Unavailable

CONNECTED, DISCONNECTED, CLOSED = "CONNECTED", "DISCONNECTED", "CLOSED"
STEPS = frozenset({"DHT_LOOKUP", "SUPPLIERS?", "INDEX?"})


class SharedAccessCoordinator(Automat):
    """Reads the share ``key_id`` of ``owner_id`` from the owner's suppliers; see the module docstring."""

    name = "shared_access_coordinator"
    initial = "AT_STARTUP"
    timers = {
        "timer-30sec": (30.0, STEPS),
        "timer-1min": (60.0, {DISCONNECTED}),
        "timer-10min": (600.0, {CONNECTED}),
    }
    transitions = [
        # state          event                  guard         next            actions
        ("AT_STARTUP",   "open",                None,         "DHT_LOOKUP",   ["start_attempt", "find_suppliers"]),
        ("DHT_LOOKUP",   "suppliers-found",     "is_current", "SUPPLIERS?",   ["remember_suppliers",
                                                                                "connect_suppliers"]),
        ("DHT_LOOKUP",   "lookup-failed",       "is_current", DISCONNECTED,   ["remember_error",
                                                                                "report_disconnected"]),
        ("SUPPLIERS?",   "suppliers-connected", "is_current", "INDEX?",       ["read_index"]),
        ("SUPPLIERS?",   "connect-failed",      "is_current", DISCONNECTED,   ["remember_error",
                                                                                "report_disconnected"]),
        ("INDEX?",       "index-read",          "is_current", CONNECTED,      ["remember_index", "report_connected"]),
        ("INDEX?",       "index-failed",        "is_current", DISCONNECTED,   ["remember_error",
                                                                                "report_disconnected"]),
        ("DHT_LOOKUP",   "timer-30sec",         None,         DISCONNECTED,   ["note_timeout", "report_disconnected"]),
        ("SUPPLIERS?",   "timer-30sec",         None,         DISCONNECTED,   ["note_timeout", "report_disconnected"]),
        ("INDEX?",       "timer-30sec",         None,         DISCONNECTED,   ["note_timeout", "report_disconnected"]),
        ("CONNECTED",    "open",                None,         "DHT_LOOKUP",   ["start_attempt", "find_suppliers"]),
        ("CONNECTED",    "timer-10min",         None,         "DHT_LOOKUP",   ["start_attempt", "find_suppliers"]),
        ("DISCONNECTED", "open",                None,         "DHT_LOOKUP",   ["start_attempt", "find_suppliers"]),
        ("DISCONNECTED", "timer-1min",          None,         "DHT_LOOKUP",   ["start_attempt", "find_suppliers"]),
        ("*",            "close",               None,         CLOSED,         ["report_closed", "release", "destroy"]),
        # An attempt is running: a second open waits for its outcome.
        ("*",            "open",                None,         "*",            []),
        # Answers of an attempt that was given up (timed out, or a newer one began) change nothing.
        ("*",            "suppliers-found",     None,         "*",            []),
        ("*",            "lookup-failed",       None,         "*",            []),
        ("*",            "suppliers-connected", None,         "*",            []),
        ("*",            "connect-failed",      None,         "*",            []),
        ("*",            "index-read",          None,         "*",            []),
        ("*",            "index-failed",        None,         "*",            []),
    ]

    def __init__(self, clock: Any, key_id: str, owner_id: str, link: Any,
                 publish: Callable[[str, Any], Any] = lambda event_id, data: None, **kwargs: Any):
        super().__init__(clock, **kwargs)
        self.key_id = key_id
        self.owner_id = owner_id
        self.link = link
        self.publish = publish
        self.attempt = 0
        self.positions: list[str] = []
        self.index_serial = 0
        self.files = 0
        self.error: BitnodeError | None = None
        self.connected_at: float | None = None
        self._waiters: list[defer.Deferred] = []

    # --- what the service asks -----------------------------------------------------------

    def wait(self) -> defer.Deferred:
        """Fires with :meth:`info` at the next CONNECTED, fails with the reason at the next DISCONNECTED/CLOSED."""
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def info(self) -> dict:
        """The state of this share as shares_list shows it."""
        return {"key_id": self.key_id, "owner_id": self.owner_id, "state": self.state, "automat": self.id,
                "suppliers": list(self.positions), "index_serial": self.index_serial, "files": self.files,
                "connected_at": self.connected_at, "error": str(self.error) if self.error is not None else ""}

    # --- guards ----------------------------------------------------------------------------

    def is_current(self, attempt: int, *_: Any) -> bool:
        """The answer belongs to the attempt running now."""
        return attempt == self.attempt

    # --- actions ---------------------------------------------------------------------------

    def start_attempt(self, *_: Any) -> None:
        """A new attempt: answers of older ones will be ignored."""
        self.attempt += 1

    def find_suppliers(self, *_: Any) -> None:
        """Ask the link for the owner's suppliers."""
        self._call(self.link.find_suppliers, (), "suppliers-found", "lookup-failed")

    def remember_suppliers(self, attempt: int, positions: list[str]) -> None:
        """Keep the owner's positions."""
        self.positions = list(positions)

    def connect_suppliers(self, *_: Any) -> None:
        """Introduce me to the owner's suppliers."""
        self._call(self.link.connect, (list(self.positions),), "suppliers-connected", "connect-failed")

    def read_index(self, *_: Any) -> None:
        """Fetch and import the newest index from the owner's suppliers."""
        self._call(self.link.load_index, (list(self.positions),), "index-read", "index-failed")

    def remember_index(self, attempt: int, summary: dict) -> None:
        """The files of that index are visible now."""
        self.index_serial = int(summary.get("serial", 0))
        self.files = int(summary.get("files", 0))
        self.error = None
        self.connected_at = self.clock.seconds()

    def remember_error(self, attempt: int, error: BitnodeError) -> None:
        """Keep why the attempt failed."""
        self.error = error

    def note_timeout(self, *_: Any) -> None:
        """A step took longer than its timer (the transition is recorded already: the step is its from-state)."""
        timed_out = self.history[-1].from_state if self.history else ""
        step = {"DHT_LOOKUP": "looking up the owner's suppliers", "SUPPLIERS?": "reaching the owner's suppliers",
                "INDEX?": "reading the share index"}.get(timed_out, "connecting")
        self.error = Timeout(f"share {self.key_id}: {step} took too long")

    def report_connected(self, *_: Any) -> None:
        """Answer the waiters and tell the node."""
        info = self.info()
        self.publish("share-connected", dict(info))
        self._settle(lambda d: d.callback(dict(info)))

    def report_disconnected(self, *_: Any) -> None:
        """Answer the waiters with the reason and tell the node."""
        error = self.error or Unavailable(f"share {self.key_id} is not connected")
        self.log.info("{id}: share {key_id} not connected: {error}", id=self.id, key_id=self.key_id, error=error)
        self.publish("share-disconnected", {"key_id": self.key_id, "owner_id": self.owner_id, "error": str(error)})
        self._settle(lambda d: d.errback(error))

    def report_closed(self, *_: Any) -> None:
        """Waiters learn the share was closed."""
        self._settle(lambda d: d.errback(Unavailable(f"share {self.key_id} was closed")))

    def release(self, *_: Any) -> None:
        """Forget the files and stop their transfers."""
        d = defer.maybeDeferred(self.link.release)
        d.addErrback(lambda f: self.log.info("{id}: releasing share failed: {err}", id=self.id,
                                             err=f.getErrorMessage()))

    # --- helpers -----------------------------------------------------------------------------

    def _call(self, method: Callable[..., Any], args: tuple, ok_event: str, fail_event: str) -> None:
        attempt = self.attempt
        d = defer.maybeDeferred(method, *args)

        def answer(event: str, value: Any) -> None:
            if not self.destroyed:  # closed meanwhile: nobody waits for this answer any more
                self.event(event, attempt, value)

        d.addCallbacks(lambda result: answer(ok_event, result), lambda failure: answer(fail_event, _typed(failure)))

    def _settle(self, answer: Callable[[defer.Deferred], None]) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            answer(d)


def _typed(failure) -> BitnodeError:
    """A failure as the typed error share_open answers (anything unexpected is a 503 with its text)."""
    if isinstance(failure.value, BitnodeError):
        return failure.value
    return Unavailable(failure.getErrorMessage() or failure.type.__name__)
