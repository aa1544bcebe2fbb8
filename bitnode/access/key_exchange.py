"""The key exchange of one node: shares keys, audits them, and answers peers' shares and audits.

:class:`KeyExchange` sends ``Key`` and ``AuditKey`` packets through the
gateway and handles the incoming ones; the payloads, the share policy and
the audit proofs are in :mod:`bitnode.access.key_packets` (read it for the
formats and the reasons behind them).  In short:

- ``share(key_id, user, include_private)``: the key is encrypted to the
  user's master key; the user stores it (public or private) and acknowledges
  it with the key's fingerprint.  Any key the sharer holds may go, but a
  master private key never (403), and a key of a third party's namespace
  only as the reshare policy for its alias prefix allows (``reshare``).
  The receiver takes a third party's key only when it holds no different
  one under that id; the key's owner replaces a different one (a rotation);
  a key of the receiver's own namespace only through ``own_key``.
- ``audit(key_id, user, is_private)``: a random challenge; the user proves
  it holds the private key (an RSA-PSS signature over the challenge context)
  or the public key (an HMAC keyed by it).  ``{"result": "OK"|"FAILED"}``.

Every send first pings the peer with our identity: a node drops packets from
senders it does not know yet.  A refusal (``Fail``) of a share is a 409 with
the peer's reason; no answer is a 503 (``Timeout`` or ``Unavailable``).
RSA private-key work (unwrapping a shared key, signing an audit answer) runs
in the node's thread pool, at most ``max_busy`` requests of peers at a time;
beyond that a peer is refused with "busy".

Events on the node's bus: ``key-shared`` (``{"key_id", "trusted_user_id",
"include_private", "fingerprint", "label", "shared"}``) after an
acknowledged share, ``key-received`` (``{"key_id", "from", "is_private",
"fingerprint", "label", "replaced"}``) after a key was stored (``replaced``:
its owner sent a new generation of a key held here).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from bitnode import globalid
from bitnode.access.key_packets import (
    MASTER_ALIAS,
    NOT_HELD,
    KeyOffer,
    ack_payload,
    answer_audit,
    asker_knows_key,
    check_audit_answer,
    check_share_policy,
    check_timeout,
    decode_audit_request,
    encode_audit_answer,
    encode_audit_request,
    json_object,
    make_audit_request,
    open_key,
    seal_key,
)
from bitnode.errors import BadRequest, BitnodeError, Conflict, Forbidden, NotFound, Timeout
from bitnode.transport.commands import Command
from bitnode.transport.packet_out import PeerRefused


class KeyExchange:
    """Shares keys with other nodes and audits them, and answers their shares and audits.

    :param clock: ``IReactorTime`` (timeouts).
    :param gateway: the running :class:`~bitnode.transport.gateway.Gateway`.
    :param identity: ``service_identity`` (``keystore``, ``my_global_id()``,
        ``fetch_identity(user)``).
    :param run_in_thread: runs CPU work off the reactor, returns a Deferred.
    :param publish: ``publish(event_id, data)`` (the node's event bus):
        ``key-shared`` after a share was acknowledged, ``key-received`` after
        a key was stored.
    :param max_busy: peers' requests handled at once (more are refused as busy).
    :param reshare: ``reshare(key_id, recipient, include_private)`` before a key
        of a third party's namespace is sent: raises Forbidden (or returns a
        Deferred that fails) when the key's owner does not allow it.
    :param own_key: ``own_key(offer, sender)`` when a peer offers a key of *my*
        namespace: returns the stored KeyInfo (or a Deferred of it), or raises
        Forbidden; by default every such offer is refused.
    """

    log = Logger()

    def __init__(self, clock: Any, gateway: Any, identity: Any, run_in_thread: Callable[..., Deferred],
                 publish: Callable[[str, Any], Any], max_busy: int = 8,
                 reshare: Callable[[str, str, bool], Any] = lambda key_id, recipient, include_private: None,
                 own_key: Callable[[KeyOffer, str], Any] | None = None) -> None:
        self.clock = clock
        self.gateway = gateway
        self.identity = identity
        self.run_in_thread = run_in_thread
        self.publish = publish
        self.max_busy = max_busy
        self.reshare = reshare
        self.own_key = own_key if own_key is not None else _refuse_own_key
        self.busy = 0
        self.counters = {"shared": 0, "received": 0, "refused": 0, "audits_asked": 0, "audits_answered": 0}
        self._routes: list[Any] = []

    def start(self) -> None:
        """Handle incoming ``Key`` and ``AuditKey`` packets (routes on the gateway's packet router)."""
        router = self.gateway.router
        self._routes = [router.add(Command.KEY, self._on_key, owner="key_exchange"),
                        router.add(Command.AUDIT_KEY, self._on_audit, owner="key_exchange")]

    def stop(self) -> None:
        """Stop handling them."""
        for route in self._routes:
            route.remove()
        self._routes = []

    def _me(self) -> str:
        return self.gateway.my_id

    def _keystore(self) -> Any:
        return self.identity.require_keystore()

    def _begin(self, key_id: str, user_id: str, timeout: float) -> tuple[float, Any, str, str, str]:
        """Checked arguments of a share or an audit: (deadline, key store, me, key id, peer)."""
        deadline = self.clock.seconds() + check_timeout(timeout)
        store = self._keystore()
        me = self._me()
        key_id = str(globalid.KeyId.parse(key_id))
        peer = str(globalid.to_global_id(user_id))
        if peer == me:
            raise BadRequest("that is this node's own user id")
        return deadline, store, me, key_id, peer

    async def _within(self, d: Deferred, deadline: float, what: str) -> Any:
        """Await ``d``, failing with Timeout once the clock passes ``deadline``."""
        left = deadline - self.clock.seconds()
        if left <= 0:
            d.cancel()
            raise Timeout(f"no time left for {what}")
        d.addTimeout(left, self.clock)
        try:
            return await d
        except defer.TimeoutError:
            raise Timeout(f"{what} took longer than the timeout") from None

    def _left(self, deadline: float, peer: str) -> float:
        left = deadline - self.clock.seconds()
        if left <= 0:
            raise Timeout(f"no time left to reach {peer}")
        return left

    async def _introduce(self, peer: str, deadline: float) -> None:
        """Ping ``peer`` with my identity first: a node drops packets from senders it does not know."""
        await self.gateway.ping(peer, timeout=self._left(deadline, peer))

    # -- sharing -----------------------------------------------------------------------

    def share(self, key_id: str, user_id: str, include_private: bool = False, timeout: float = 10.0) -> Deferred:
        """Send ``key_id`` (public, or private with ``include_private``) to ``user_id``.

        Fires with ``{"key_id", "trusted_user_id", "include_private",
        "fingerprint", "label", "shared": True}`` once the recipient stored it.
        Fails with NotFound (we lack the key or its private part, unknown user),
        Forbidden (policy), Conflict/PeerRefused (the recipient refused),
        Timeout or Unavailable (503: no answer, peer unreachable).
        """
        return Deferred.fromCoroutine(self._share(key_id, user_id, include_private, timeout))

    async def _share(self, key_id: str, user_id: str, include_private: bool, timeout: float) -> dict:
        deadline, store, me, key_id, peer = self._begin(key_id, user_id, timeout)
        info = store.get(key_id)
        parsed = check_share_policy(key_id, me, include_private)
        if str(parsed.owner) != me and parsed.alias != MASTER_ALIAS:
            await defer.maybeDeferred(self.reshare, key_id, peer, include_private)
        material = store.private_key(key_id) if include_private else store.public_key(key_id)
        offer = KeyOffer(key_id, info.label, include_private, info.fingerprint, material.to_pem())
        target = await self._within(self.identity.fetch_identity(peer), deadline, f"fetching {peer}'s identity")
        payload = await self.run_in_thread(seal_key, target.rsa_public_key(), me, peer, offer)
        await self._introduce(peer, deadline)
        response = await self.gateway.request(Command.KEY, peer, payload, timeout=self._left(deadline, peer))
        try:
            ack = json_object(response.payload, "Ack")
        except BadRequest:
            ack = {}
        if ack.get("key_id") != key_id or ack.get("fingerprint") != info.fingerprint:
            raise Conflict(f"{peer} acknowledged something else than key {key_id}")
        self.counters["shared"] += 1
        result = {"key_id": key_id, "trusted_user_id": peer, "include_private": include_private,
                  "fingerprint": info.fingerprint, "label": info.label, "shared": True}
        self.publish("key-shared", dict(result))
        self.log.info("key {key_id} ({what}) shared with {peer}", key_id=key_id, peer=peer,
                      what="private" if include_private else "public")
        return result

    def _on_key(self, packet: Any, address: Any) -> Deferred:
        return Deferred.fromCoroutine(self._answer(packet, self._receive_key))

    async def _answer(self, packet: Any, handle: Callable[[Any], Any]) -> None:
        """Run ``handle(packet)`` and send its (command, payload), or a ``Fail`` with the reason."""
        if self.busy >= self.max_busy:
            command, payload = Command.FAIL, b"busy: try again later"
        else:
            self.busy += 1
            try:
                command, payload = await handle(packet)
            except BitnodeError as err:
                self.counters["refused"] += 1
                command, payload = Command.FAIL, str(err).encode("utf-8")
            except Exception:
                self.log.failure("handling {command} from {peer} failed", command=packet.command,
                                 peer=packet.creator_id)
                command, payload = Command.FAIL, b"internal error"
            finally:
                self.busy -= 1
        try:
            await self.gateway.reply(packet, command, payload)
        except BitnodeError as err:
            self.log.info("could not answer {peer}: {err}", peer=packet.creator_id, err=err)

    async def _receive_key(self, packet: Any) -> tuple[Command, bytes]:
        sender, me = packet.creator_id, self._me()
        store = self._keystore()
        try:
            master = store.private_key(store.master_key_id)
        except NotFound:
            raise Conflict("this node cannot decrypt: its master private key is missing") from None
        offer = await self.run_in_thread(open_key, master, packet.payload, sender, me)
        parsed = check_share_policy(offer.key_id, sender, offer.is_private)
        owner = str(parsed.owner)
        replaced = False
        if owner == me:
            info = await defer.maybeDeferred(self.own_key, offer, sender)
        elif parsed.alias == MASTER_ALIAS:  # whoever sends it, a master key must be the one its owner publishes
            published = await self.identity.fetch_identity(owner)
            if published.rsa_public_key().fingerprint() != offer.fingerprint:
                raise Forbidden(f"{offer.key_id} is not the key {owner} publishes")
            info = store.add_public(offer.key_id, offer.pem, offer.label)
        elif owner == sender and offer.is_private:
            # The owner's word wins: a new generation (a rotation), or the real key over one planted earlier.
            held = store.get(offer.key_id).fingerprint if store.has(offer.key_id) else None
            info = store.replace_private(offer.key_id, offer.pem, offer.label or None)
            replaced = held is not None and held != info.fingerprint
        elif offer.is_private:
            info = store.add_private(offer.key_id, offer.pem, offer.label)  # Conflict when another key is held
        else:
            info = store.add_public(offer.key_id, offer.pem, offer.label)
        self.counters["received"] += 1
        self.publish("key-received", {"key_id": info.key_id, "from": sender, "is_private": offer.is_private,
                                      "fingerprint": info.fingerprint, "label": info.label, "replaced": replaced})
        self.log.info("stored key {key_id} ({what}) shared by {sender}", key_id=info.key_id, sender=sender,
                      what="private" if offer.is_private else "public")
        return Command.ACK, ack_payload(info.key_id, info.fingerprint, offer.is_private)

    # -- auditing ------------------------------------------------------------------------------

    def audit(self, key_id: str, user_id: str, is_private: bool = False, timeout: float = 10.0) -> Deferred:
        """Ask ``user_id`` to prove it holds ``key_id`` (its private part with ``is_private``).

        Fires with ``{"result": "OK"|"FAILED", "reason", "key_id",
        "untrusted_user_id", "is_private", "fingerprint"}``.  Fails with
        NotFound when we do not know the key, Timeout/Unavailable (503) when
        the user does not answer.
        """
        return Deferred.fromCoroutine(self._audit(key_id, user_id, is_private, timeout))

    async def _audit(self, key_id: str, user_id: str, is_private: bool, timeout: float) -> dict:
        deadline, store, me, key_id, peer = self._begin(key_id, user_id, timeout)
        public = store.public_key(key_id)
        request = make_audit_request(public, me, peer, key_id, "private" if is_private else "public")
        result = {"key_id": key_id, "untrusted_user_id": peer, "is_private": bool(is_private),
                  "fingerprint": public.fingerprint()}
        self.counters["audits_asked"] += 1
        await self._introduce(peer, deadline)
        try:
            response = await self.gateway.request(Command.AUDIT_KEY, peer, encode_audit_request(request),
                                                  timeout=self._left(deadline, peer))
        except PeerRefused as err:
            return dict(result, result="FAILED", reason=f"{peer} refused: {err.reason}")
        if response.command != Command.AUDIT_KEY.value:
            return dict(result, result="FAILED", reason=f"{peer} answered {response.command}, not AuditKey")
        problem = await self.run_in_thread(check_audit_answer, request, public, response.payload, me, peer)
        if problem:
            return dict(result, result="FAILED", reason=problem)
        return dict(result, result="OK", reason="")

    def _on_audit(self, packet: Any, address: Any) -> Deferred:
        return Deferred.fromCoroutine(self._answer(packet, self._answer_audit))

    async def _answer_audit(self, packet: Any) -> tuple[Command, bytes]:
        auditor, me = packet.creator_id, self._me()
        request = decode_audit_request(packet.payload)
        store = self._keystore()
        not_held = NotFound(NOT_HELD.format(key_id=request.key_id))
        if not store.has(request.key_id):
            raise not_held
        public = store.public_key(request.key_id)
        private = None
        if request.mode == "private":
            if not store.get(request.key_id).is_private:
                raise not_held
            private = store.private_key(request.key_id)
        if not asker_knows_key(public, request, auditor, me):
            raise not_held  # the same text: an asker without the key learns nothing
        proof = await self.run_in_thread(answer_audit, request, public, private, auditor, me)
        self.counters["audits_answered"] += 1
        return Command.AUDIT_KEY, encode_audit_answer(request, proof)


def _refuse_own_key(offer: KeyOffer, sender: str) -> Any:
    raise Forbidden(f"{offer.key_id} is a key of this node: it is not taken from others")
