"""API methods of nicknames: user_search, user_observe and the legacy set_my_nickname."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from bitnode.chat.nickname_holder import validate_nickname
from bitnode.chat.nickname_service import NicknameService
from bitnode.errors import BadRequest, NotFound
from bitnode.p2p.network_service import NetworkService


class NicknameMethods:
    """Mixin of :class:`bitnode.interface.api.API`."""

    node: Any

    def _nicknames(self):
        return self.node.service_driver.running(NicknameService)

    def _with_online_status(self, holders: list[dict], check_timeout: float = 5.0) -> defer.Deferred:
        """Add ``online``/``state`` to each holder: asks them (a ping) unless they were heard from lately."""
        network = self.node.service_driver.find(NetworkService)
        online = network.online if network is not None else None

        def one(holder: dict) -> defer.Deferred:
            if online is None or not holder["global_id"]:
                return defer.succeed(None)
            d = defer.maybeDeferred(online.check, holder["global_id"], check_timeout)
            return d.addErrback(lambda _failure: online.status(holder["global_id"]))

        def fill(statuses: list) -> list[dict]:
            for holder, (_ok, status) in zip(holders, statuses, strict=True):
                holder["online"] = bool(status and status.get("online"))
                holder["state"] = status["state"] if status else "UNKNOWN"
            return holders

        return defer.DeferredList([one(h) for h in holders], consumeErrors=True).addCallback(fill)

    def _observe(self, nickname: str, attempts: int) -> defer.Deferred:
        validate_nickname(nickname)
        if not 1 <= attempts <= 20:
            raise BadRequest("attempts must be between 1 and 20")
        return self._nicknames().observe(nickname, attempts).addCallback(self._with_online_status)

    def user_search(self, nickname: str, attempts: int = 1) -> defer.Deferred:
        """Who holds ``nickname`` (first holder found), with online status; 404 if nobody."""

        def first(holders: list[dict]) -> dict:
            if not holders:
                raise NotFound(f"nobody holds the nickname {nickname!r}")
            return holders[0]

        return self._observe(nickname, attempts).addCallback(first)

    def user_observe(self, nickname: str, attempts: int = 3) -> defer.Deferred:
        """Everyone holding ``nickname`` or its ``-N`` variants (up to ``attempts`` names)."""
        return self._observe(nickname, attempts)

    def set_my_nickname(self, nickname: str) -> dict:
        """Hold ``nickname`` from now on (stored in services/private-messages/nickname)."""
        validate_nickname(nickname)
        service = self._nicknames()
        old, _ = self.node.settings.set("services/private-messages/nickname", nickname)
        if old == nickname:  # no change, so no settings listener call: claim it again ourselves
            service.claim(nickname)
        return service.status()
