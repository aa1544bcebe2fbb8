"""nickname_observer: find who holds a nickname (and its ``-N`` variants) in the DHT.

``user_search(nickname, attempts)`` looks up ``nickname``; with more attempts
it also tries ``nickname-1``, ``nickname-2``... — the names a nickname_holder
falls back to when the plain name is taken — and reports every holder found.

States: READY → DHT_READ (one key per attempt) → READY. The DHT neighbour is
the same as nickname_holder's (``get_value(key, record_type)``).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from automats import Automat
from bitnode.chat.nickname_holder import nickname_key, validate_nickname
from bitnode.globalid import idurl_to_global_id


class NicknameObserver(Automat):
    """Looks up one nickname and its numbered variants."""

    name = "nickname_observer"
    initial = "READY"
    transitions = [
        # state       event         guard            next        actions
        ("READY",    "observe",    None,            "DHT_READ", ["begin", "read_next"]),
        ("DHT_READ", "found",      "more_attempts", "DHT_READ", ["note_holder", "read_next"]),
        ("DHT_READ", "found",      None,            "READY",    ["note_holder", "report"]),
        ("DHT_READ", "not-found",  "more_attempts", "DHT_READ", ["read_next"]),
        ("DHT_READ", "not-found",  None,            "READY",    ["report"]),
        ("*",        "shutdown",   None,            "CLOSED",   ["report", "destroy"]),
    ]

    def __init__(self, clock, dht: Any, **kwargs: Any):
        super().__init__(clock, **kwargs)
        self.dht = dht
        self._waiting: list[tuple[str, int, defer.Deferred]] = []
        self._wanted = ""
        self._attempts = 0
        self._tried = 0
        self._found: list[dict] = []
        self._result: defer.Deferred | None = None

    def observe(self, nickname: str, attempts: int = 1) -> defer.Deferred:
        """Fires with a list of ``{"nickname", "idurl", "global_id"}`` holders (possibly empty)."""
        validate_nickname(nickname)
        attempts = max(1, min(int(attempts), 20))
        d = defer.Deferred()
        if self.state == "READY":
            self.event("observe", nickname, attempts, d)
        else:
            self._waiting.append((nickname, attempts, d))
        return d

    # --- guards and actions ------------------------------------------------------

    def more_attempts(self, *_: Any) -> bool:
        """Another variant left to try?"""
        return self._tried < self._attempts

    def begin(self, nickname: str, attempts: int, result: defer.Deferred) -> None:
        """Start a search."""
        self._wanted, self._attempts, self._tried, self._found, self._result = nickname, attempts, 0, [], result

    def read_next(self, *_: Any) -> None:
        """Look up the next variant."""
        name = self._wanted if self._tried == 0 else f"{self._wanted}-{self._tried}"
        self._tried += 1
        d = defer.maybeDeferred(self.dht.get_value, nickname_key(name), "nickname")

        def answered(record):
            value = getattr(record, "value", None)
            if isinstance(value, dict) and value.get("idurl"):
                self.event("found", name, value["idurl"])
            else:
                self.event("not-found")

        d.addCallbacks(answered, lambda f: self.event("not-found"))

    def note_holder(self, name: str, idurl: str) -> None:
        """Remember one holder."""
        try:
            global_id = idurl_to_global_id(idurl)
        except Exception:  # noqa: BLE001 - a record with a bad IDURL is reported as such
            global_id = ""
        self._found.append({"nickname": name, "idurl": idurl, "global_id": global_id})

    def report(self, *_: Any) -> None:
        """Answer the caller, then start the next queued search."""
        result, self._result = self._result, None
        if result is not None:
            result.callback(list(self._found))
        if self.state == "CLOSED":
            queued, self._waiting = self._waiting, []
            for _name, _attempts, d in queued:
                d.callback([])
        elif self._waiting:
            nickname, attempts, d = self._waiting.pop(0)
            self.clock.callLater(0, self.event, "observe", nickname, attempts, d)
