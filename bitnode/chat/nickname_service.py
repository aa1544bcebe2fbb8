"""service_nicknames: hold my nickname in the DHT and look up other users' nicknames.

Owns one :class:`~bitnode.chat.nickname_holder.NicknameHolder` (driven by the
setting ``services/private-messages/nickname``, empty meaning "my identity's
name") and one :class:`~bitnode.chat.nickname_observer.NicknameObserver`.
Publishes ``nickname-held`` on the node's event bus when a name is (re)taken.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from bitnode.chat.nickname_holder import NicknameHolder, validate_nickname
from bitnode.chat.nickname_observer import NicknameObserver
from bitnode.dht.dht_service import DHTService
from bitnode.errors import Conflict, Unavailable
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.userid.id_service import IdentityService

NICKNAME_KEY = "services/private-messages/nickname"


class NicknameService(Service):
    """Keeps my nickname registered and answers nickname searches."""

    name = "service_nicknames"
    requires = {"identity": IdentityService, "dht": DHTService}
    description = "keep my nickname in the DHT (nickname_holder) and find others' (nickname_observer)"

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.holder: NicknameHolder | None = None
        self.observer: NicknameObserver | None = None

    def _dht(self):
        dht = self.deps.dht.dht
        if dht is None:
            raise Unavailable("the DHT is not running")
        return dht

    def _my_idurl(self) -> str:
        return self.deps.identity.my_idurl() or ""

    def start(self) -> None:
        """Create both machines and claim the configured (or default) nickname."""
        ctx = self.ctx
        self.holder = NicknameHolder(ctx.clock, _LazyDHT(self._dht), self._my_idurl, self._held,
                                     registry=ctx.automats)
        self.observer = NicknameObserver(ctx.clock, _LazyDHT(self._dht), registry=ctx.automats)
        ctx.settings.add_listener(NICKNAME_KEY, self._setting_changed)
        self._unsubscribe = ctx.events.subscribe(self._on_event)
        if self._my_idurl():
            self.claim()
        # Without an identity yet, the claim happens on "my-identity-created".

    def stop(self) -> None:
        """Stop both machines (the DHT record simply expires if not re-published)."""
        self.ctx.settings.remove_listener(NICKNAME_KEY, self._setting_changed)
        if getattr(self, "_unsubscribe", None):
            self._unsubscribe()
        for machine in (self.holder, self.observer):
            if machine is not None and not machine.destroyed:
                machine.event("shutdown")
        self.holder = self.observer = None

    def status(self) -> dict[str, Any]:
        """The held nickname and the holder's state."""
        return self.holder.info() if self.holder is not None else {}

    # --- what the API calls -------------------------------------------------------------

    def wanted_nickname(self) -> str:
        """The setting, or my identity's name when the setting is empty."""
        configured = self.ctx.settings.get(NICKNAME_KEY)
        if configured:
            return configured
        identity = self.deps.identity.my_identity()
        return identity.name if identity is not None else ""

    def claim(self, nickname: str | None = None) -> dict:
        """Start holding ``nickname`` (default: :meth:`wanted_nickname`)."""
        name = nickname or self.wanted_nickname()
        if not name or self.holder is None:
            return self.status()
        if not self._my_idurl():
            raise Conflict("no identity yet: create one before holding a nickname")
        self.holder.set(validate_nickname(name))
        return self.status()

    def observe(self, nickname: str, attempts: int) -> defer.Deferred:
        """Holders of ``nickname`` and its variants."""
        if self.observer is None:
            return defer.fail(Unavailable("service_nicknames is not running"))
        return self.observer.observe(nickname, attempts)

    # --- reactions ----------------------------------------------------------------------

    def _held(self, nickname: str) -> None:
        self.ctx.events.publish("nickname-held", {"nickname": nickname, "idurl": self._my_idurl()})

    def _setting_changed(self, key: str, old: Any, new: Any) -> None:
        if new and self.holder is not None and self._my_idurl():
            self.holder.set(new)

    def _on_event(self, event) -> None:
        if event.event_id in ("my-identity-created", "my-identity-changed") and self.holder is not None:
            if self.holder.state in ("AT_STARTUP", "FAILED") and self._my_idurl():
                self.claim()


class _LazyDHT:
    """The DHT node, looked up at each call (the DHT service may restart under us)."""

    def __init__(self, get):
        self._get = get

    def get_value(self, key: str, record_type: str):
        return self._get().get_value(key, record_type)

    def set_value(self, key: str, value, record_type: str, expire: int):
        return self._get().set_value(key, value, record_type, expire)
