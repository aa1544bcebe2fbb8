"""nickname_holder: keep ``nickname:<name> -> my IDURL`` registered in the DHT.

The wanted name comes from the setting ``services/private-messages/nickname``
(or the legacy ``set_my_nickname``). If someone else holds it, the holder tries
``name-1``, ``name-2``, ... and keeps the first free one; it re-publishes the
record well before it expires, and starts over when a new name is set.

The machine, read top to bottom (the table below is the specification)::

    AT_STARTUP / READY / FAILED --set(name)--> DHT_READ      look the name up
    DHT_READ  --found-free-or-mine--> DHT_WRITE              write our record
    DHT_READ  --found-taken--> DHT_READ                      try name-N+1
    DHT_WRITE --write-ok--> READY                            hold it; re-publish on a timer
    DHT_WRITE --write-taken--> DHT_READ                      lost a race: try name-N+1
    DHT_READ / DHT_WRITE --dht-failed--> FAILED              retry on a timer

The DHT neighbour is anything with ``get_value(key, record_type)`` (fires
with a record having ``.value``, or None) and ``set_value(key, value,
record_type, expire)`` (fails with a ``Conflict`` when another writer holds
the key) — :class:`bitnode.dht.kademlia_node.DHTNode` in a node.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from twisted.internet import defer

from automats import Automat
from bitnode.errors import BadRequest, Conflict

NICKNAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
RECORD_TTL = 24 * 3600
MAX_SUFFIX = 100


def nickname_key(nickname: str) -> str:
    """The DHT key of a nickname."""
    return f"nickname:{nickname}"


def validate_nickname(nickname: str) -> str:
    """A nickname: 1-64 of ``[A-Za-z0-9_.-]``."""
    if not isinstance(nickname, str) or not NICKNAME_RE.match(nickname):
        raise BadRequest(f"nickname must be 1-64 characters of A-Z a-z 0-9 _ . -, got {nickname!r}")
    return nickname


class NicknameHolder(Automat):
    """Holds one nickname for this node in the DHT."""

    name = "nickname_holder"
    initial = "AT_STARTUP"
    timers = {
        "timer-republish": (RECORD_TTL / 4, {"READY"}),
        "timer-retry": (60.0, {"FAILED"}),
    }
    transitions = [
        # state        event                  guard  next         actions
        ("AT_STARTUP", "set",                None,  "DHT_READ",  ["start_with", "read_key"]),
        ("*",         "set",                 None,  "DHT_READ",  ["start_with", "read_key"]),
        ("DHT_READ",  "found-free-or-mine",  None,  "DHT_WRITE", ["write_key"]),
        ("DHT_READ",  "found-taken",         None,  "DHT_READ",  ["next_name", "read_key"]),
        ("DHT_READ",  "dht-failed",          None,  "FAILED",    ["note_failure"]),
        ("DHT_WRITE", "write-ok",            None,  "READY",     ["announce_held"]),
        ("DHT_WRITE", "write-taken",         None,  "DHT_READ",  ["next_name", "read_key"]),
        ("DHT_WRITE", "dht-failed",          None,  "FAILED",    ["note_failure"]),
        ("READY",     "timer-republish",     None,  "DHT_WRITE", ["write_key"]),
        ("FAILED",    "timer-retry",         None,  "DHT_READ",  ["read_key"]),
        ("*",         "shutdown",            None,  "CLOSED",    ["destroy"]),
        # An answer for a name we no longer want (a new `set` came) is dropped.
        ("*",         "stale-answer",        None,  "*",         []),
    ]

    def __init__(self, clock, dht: Any, my_idurl: Callable[[], str],
                 on_held: Callable[[str], None] = lambda nickname: None, **kwargs: Any):
        super().__init__(clock, **kwargs)
        self.dht = dht
        self.my_idurl = my_idurl
        self.on_held = on_held
        self.wanted = ""
        self.suffix = 0
        self.held = ""
        self.last_error = ""
        self._generation = 0

    @property
    def nickname(self) -> str:
        """The name being tried or held now: ``wanted`` or ``wanted-N``."""
        return self.wanted if self.suffix == 0 else f"{self.wanted}-{self.suffix}"

    def set(self, nickname: str) -> None:
        """Hold this name from now on (validated first)."""
        self.event("set", validate_nickname(nickname))

    # --- actions ----------------------------------------------------------------

    def start_with(self, nickname: str) -> None:
        """A new wanted name: start at its plain form."""
        self.wanted, self.suffix, self.held = nickname, 0, ""
        self._generation += 1

    def next_name(self, *_: Any) -> None:
        """The name is someone else's: try the next suffix."""
        self.suffix += 1
        if self.suffix > MAX_SUFFIX:
            self.suffix = 0
            self.event("dht-failed", f"{self.wanted} and its first {MAX_SUFFIX} variants are all taken")

    def read_key(self, *_: Any) -> None:
        """Look up who holds the current name."""
        generation = self._generation
        d = defer.maybeDeferred(self.dht.get_value, nickname_key(self.nickname), "nickname")

        def answered(record):
            if generation != self._generation:
                return self.event("stale-answer")
            value = getattr(record, "value", None) or {}
            if record is None or value.get("idurl") == self.my_idurl():
                self.event("found-free-or-mine")
            else:
                self.event("found-taken")

        d.addCallbacks(answered, lambda f: self._failed(f, generation))

    def write_key(self, *_: Any) -> None:
        """Publish (or re-publish) our record for the current name."""
        generation = self._generation
        value = {"nickname": self.nickname, "idurl": self.my_idurl()}
        d = defer.maybeDeferred(self.dht.set_value, nickname_key(self.nickname), value, "nickname", RECORD_TTL)

        def failed(failure):
            if generation != self._generation:
                return self.event("stale-answer")
            if failure.check(Conflict):
                return self.event("write-taken")
            return self._failed(failure, generation)

        d.addCallbacks(lambda _: self.event("write-ok" if generation == self._generation else "stale-answer"),
                       failed)

    def _failed(self, failure, generation: int) -> None:
        if generation != self._generation:
            self.event("stale-answer")
        else:
            self.event("dht-failed", failure.getErrorMessage())

    def note_failure(self, reason: str) -> None:
        """The DHT did not answer; retry on the timer."""
        self.last_error = reason
        self.log.info("{id}: cannot hold nickname {n}: {reason}", id=self.id, n=self.nickname, reason=reason)

    def announce_held(self, *_: Any) -> None:
        """We hold the name (again)."""
        self.last_error = ""
        if self.held != self.nickname:
            self.held = self.nickname
            self.on_held(self.held)

    def info(self) -> dict:
        """For the API: wanted and held names, state."""
        return {"wanted": self.wanted, "nickname": self.held, "state": self.state, "error": self.last_error}
