"""service_identity: this node's keys and identity, and the identities of others.

Its files (identity.xml, packetkey.pem, keys/, identitycache/) are in
:mod:`bitnode.userid.id_files`.

The public interface other parts code against:

- ``.keystore`` (``None`` while there is no identity: key ids need an owner),
  ``.cache``, ``.client`` (all set once the service runs), ``.publisher``
  (:class:`~bitnode.userid.id_publisher.Publisher`: publish state and retry);
- :meth:`my_identity`, :meth:`my_global_id`, :meth:`my_idurl`, :meth:`my_names` (every
  source of my identity names me: packets to an old name are mine), :meth:`is_me`,
  :meth:`storage_id` (the name my keys and my stored files are under: it never changes);
- others' names: :meth:`names`, :meth:`current_id`, :meth:`same_user` (a user who
  moved their primary keeps the old names, see :mod:`bitnode.userid.idcache`);
- :meth:`packet_signer`, :meth:`packet_private_key` (``None`` without identity);
- :meth:`resolve_verifier` (sync), :meth:`fetch_identity` (Deferred);
- :meth:`create_identity`, :meth:`recover_identity`, :meth:`erase_identity`,
  :meth:`rotate_identity`, :meth:`probe_sources`, :meth:`update_contacts`, :meth:`backup_identity`;
- events on ``node.events``: ``my-identity-created``, ``my-identity-changed``,
  ``my-identity-rotated`` (my primary moved: ``old_global_id`` -> ``global_id``),
  ``identity-rotated`` (a cached user moved), ``my-identity-erased``, and
  ``network-join-requested`` (see :meth:`create_identity`).

Changes to my identity are serialised by one lock, so two updates never
produce the same revision. A new revision is saved before it is published
(revisions never go backwards, even after a crash); a failed publish of an
update is retried in the background with a growing pause.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from bitnode import globalid
from bitnode.crypt import fastsign, keys
from bitnode.crypt.fastsign import Ed25519PrivateKey
from bitnode.crypt.keys import RsaPrivateKey
from bitnode.crypt.keystore import KeyStore
from bitnode.errors import BadRequest, BitnodeError, Conflict, Forbidden, NotFound, Unavailable
from bitnode.main.fileutil import PRIVATE_FILE_MODE, atomic_write
from bitnode.main.options import FLOAT, INTEGER, STRING_LIST, Option
from bitnode.main.schema import TCP_INTERFACE_KEY, TCP_PORT_KEY
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.userid import id_backup, id_files, id_rotation
from bitnode.userid.id_fetcher import IdentityFetcher
from bitnode.userid.id_publisher import Publisher, parse_servers
from bitnode.userid.id_rotation import RotateResult, SourceState
from bitnode.userid.id_sources import SourceFetcher
from bitnode.userid.idcache import IdentityCache
from bitnode.userid.identity import MAX_SOURCES, Identity, validate_contact
from bitnode.userid.packet_keys import Ed25519Signer, Ed25519Verifier, generate_identity, signing_key_text

#: What a method that needs my identity answers (409) before identity_create or identity_recover.
NO_IDENTITY = "this node has no identity yet: call identity_create or identity_recover first"

__all__ = ["IdentityService", "RotateResult", "identity_as_dict"]


def identity_as_dict(identity: Identity, include_xml: bool = False) -> dict:
    """The API shape of an identity (public data only)."""
    result = {
        "name": identity.name,
        "global_id": identity.global_id,
        "idurl": identity.idurl,
        "sources": list(identity.sources),
        "contacts": list(identity.contacts),
        "revision": identity.revision,
        "date": identity.date,
        "version": identity.version,
        "publickey": identity.public_key,
        "fingerprint": identity.fingerprint(),
        "signingkey": identity.signing_key,
        "signature": identity.signature,
    }
    if include_xml:
        result["xml"] = identity.to_xml().decode("utf-8")
    return result


class IdentityService(Service):
    """Owns my identity, my keys, the identity cache and the identity-server client."""

    name = "service_identity"
    enabled_by_default = True
    description = "My keys and identity document; cache of other users' identities"
    options = (
        Option("services/identity/fetch-timeout", FLOAT, 10.0,
               "Seconds to wait for an identity server to answer one request.", minimum=0.1, maximum=300.0),
        Option("services/identity/fetch-retries", INTEGER, 1,
               "How many more times a failed identity server request is tried.", minimum=0, maximum=10),
        Option("services/identity/max-concurrent-fetches", INTEGER, 8,
               "Identity documents fetched at once; more wait (ours) or are refused (for strangers).",
               minimum=1, maximum=1000, restart_needed=True),
        Option("services/identity/max-stranger-fetches", INTEGER, 4,
               "Of those, how many may be fetched at once to check strangers' introductions.",
               minimum=1, maximum=1000, restart_needed=True),
        Option("services/identity/negative-cache-seconds", FLOAT, 60.0,
               "A failed identity fetch is not repeated for a stranger for this long.", minimum=0.0,
               maximum=86400.0, restart_needed=True),
        Option("services/identity/cache-entries", INTEGER, 10_000,
               "Other users' identities kept (memory and identitycache/ files); the least recently used go "
               "first.", minimum=10, maximum=10_000_000, restart_needed=True),
        Option("services/identity/allowed-servers", STRING_LIST, [],
               "Identity servers (host or host:port) whose documents we fetch; empty: any. Others are "
               "refused without a request.", restart_needed=True),
        Option("services/identity/network-servers-asked", INTEGER, 8,
               "When none of a user's sources answers, how many of the network's identity servers "
               "(personal/identity-servers) are asked for the same name.", minimum=0, maximum=64,
               restart_needed=True),
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.keystore: KeyStore | None = None
        self.cache: IdentityCache | None = None
        self.client: Any = None
        self.fetcher: IdentityFetcher | None = None
        self.sources: SourceFetcher | None = None
        self.last_rotation: dict = {}
        self.load_problems: list[str] = []
        self._identity: Identity | None = None
        self._packet_key: Ed25519PrivateKey | None = None
        self._signer: Ed25519Signer | None = None
        self._pending_contacts: tuple[str, ...] | None = None
        self._lock = defer.DeferredLock()
        self.publisher = Publisher(lambda: self.client, self.my_identity, self._lock.run, ctx.call_later)
        self.files = id_files.IdentityFiles.of(ctx.basedir)
        self.identity_file = self.files.identity_file
        self.packet_key_file = self.files.packet_key_file
        self.keys_dir = self.files.keys_dir
        self.cache_dir = self.files.cache_dir

    # -- lifecycle --------------------------------------------------------

    def make_client(self) -> Any:
        """The identity-server client (tests override this to plug in a fake)."""
        from bitnode.userid.id_client import IdentityClient

        settings = self.ctx.settings
        return IdentityClient(self.ctx.reactor, self.ctx.clock,
                              timeout=settings.get("services/identity/fetch-timeout"),
                              retries=settings.get("services/identity/fetch-retries"))

    def start(self) -> Deferred:
        """Open the key store, the cache and my identity (off the reactor)."""
        self.load_problems = []
        d = self.ctx.run_in_thread(id_files.open_files, self.files, self.ctx.run_in_thread, self.ctx.clock,
                                   self.ctx.settings.get("services/identity/cache-entries"))
        d.addCallback(self._opened)
        return d

    def _opened(self, loaded: tuple) -> None:
        self.cache, identity, keystore, packet_key, problems = loaded
        self.load_problems = problems + list(self.cache.load_errors)
        for problem in problems:
            self.log.warn("service_identity: {problem}", problem=problem)
        self.cache.writer = self.ctx.run_in_thread  # files are written off the reactor from now on
        self.client = self.make_client()
        self.fetcher = self.make_fetcher()
        self.sources = SourceFetcher(self.fetcher, self.identity_servers,
                                     self.ctx.settings.get("services/identity/network-servers-asked"))
        self.cache.on_moved = self._peer_moved
        self._install(identity, keystore, packet_key)
        if identity is not None:
            self.log.info("my identity is {global_id} revision {revision}",
                          global_id=identity.global_id, revision=identity.revision)

    def make_fetcher(self) -> IdentityFetcher:
        """The :class:`~bitnode.userid.id_fetcher.IdentityFetcher` in front of the client, as the settings say."""
        get = self.ctx.settings.get
        return IdentityFetcher(
            lambda idurl: self.client.fetch(idurl), self.ctx.clock,
            max_concurrent=get("services/identity/max-concurrent-fetches"),
            max_stranger_concurrent=get("services/identity/max-stranger-fetches"),
            negative_ttl=get("services/identity/negative-cache-seconds"),
            allowed_hosts=get("services/identity/allowed-servers"),
        )

    def stop(self) -> Deferred | None:
        """Cancel the background republish, close the client, finish writing the cache."""
        self.publisher.cancel()
        client, self.client = self.client, None
        waits = [self.cache.flush()] if self.cache is not None else []
        if client is not None and hasattr(client, "close"):
            waits.append(defer.maybeDeferred(client.close))
        return defer.gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)

    def status(self) -> dict:
        """Facts for service_info."""
        identity = self._identity
        return {
            "global_id": identity.global_id if identity else None,
            "revision": identity.revision if identity else None,
            "published_revision": self.publisher.published_revision,
            "last_publish_error": self.publisher.last_error,
            "has_packet_key": self._packet_key is not None,
            "cached_identities": len(self.cache) if self.cache is not None else 0,
            "cache": self.cache.stats() if self.cache is not None else {},
            "fetches": self.fetcher.stats() if self.fetcher is not None else {},
            "sources": self.sources.stats() if self.sources is not None else {},
            "names": self.my_names(),
            "storage_id": self.storage_id(),
            "last_rotation": dict(self.last_rotation),
            "problems": list(self.load_problems),
        }

    # -- who am I -----------------------------------------------------------

    def my_identity(self) -> Identity | None:
        """My signed identity, or None."""
        return self._identity

    def my_global_id(self) -> str | None:
        """``name@host[_port]``, or None."""
        return self._identity.global_id if self._identity else None

    def my_idurl(self) -> str | None:
        """My primary IDURL, or None."""
        return self._identity.idurl if self._identity else None

    def my_names(self) -> list[str]:
        """Every global id that is me: one per source of my identity, the current one first."""
        return id_files.names_of(self._identity) if self._identity is not None else []

    def is_me(self, name: str) -> bool:
        """True when ``name`` (a global id or an IDURL) is one of my names."""
        try:
            return str(globalid.to_global_id(name)) in self.my_names()
        except BadRequest:
            return False

    def storage_id(self) -> str | None:
        """The name my keys and my stored files are under (my first global id; it never changes)."""
        if self.keystore is not None:
            return self.keystore.owner
        return self.my_global_id()

    def names(self, name: str) -> list[str]:
        """Every known name of a user, their current global id first (mine: :meth:`my_names`)."""
        if self.is_me(name):
            return self.my_names()
        if self.cache is None:
            return [str(globalid.to_global_id(name))]
        return self.cache.names(name)

    def current_id(self, name: str) -> str:
        """The global id a user has now, as far as we know (``name`` itself when they never moved)."""
        names = self.names(name)
        return names[0]

    def same_user(self, first: str, second: str) -> bool:
        """True when the two names are known to be the same user."""
        try:
            return self.current_id(first) == self.current_id(second)
        except BadRequest:
            return False

    def packet_signer(self) -> Ed25519Signer | None:
        """Signs my packets with the Ed25519 key certified in my identity; None without one."""
        return self._signer

    def packet_private_key(self) -> Ed25519PrivateKey | None:
        """My Ed25519 packet key (the DHT signs records with it); None without one."""
        return self._packet_key

    def _install(self, identity: Identity | None, keystore: KeyStore | None,
                 packet_key: Ed25519PrivateKey | None) -> None:
        self._identity = identity
        self.keystore = keystore
        if keystore is not None and identity is not None:
            keystore.set_names(id_files.names_of(identity))
        self._packet_key = packet_key if identity is not None else None
        self._signer = Ed25519Signer(packet_key) if identity is not None and packet_key is not None else None

    def _require_running(self) -> None:
        if self.cache is None or self.client is None:
            raise Unavailable("service_identity is not running")

    def require_identity(self) -> Identity:
        """My identity; NotFound (404) when there is none, Unavailable when the service is off."""
        self._require_running()
        if self._identity is None:
            raise NotFound("this node has no identity yet: call identity_create or identity_recover")
        return self._identity

    def require_global_id(self) -> str:
        """My global id; Conflict (409) while this node has no identity."""
        me = self.my_global_id()
        if not me:
            raise Conflict(NO_IDENTITY)
        return me

    def require_keystore(self) -> KeyStore:
        """My key store; Conflict (409) while this node has no identity (key ids need an owner)."""
        if self.keystore is None:
            raise Conflict(NO_IDENTITY)
        return self.keystore

    def master_private_key(self) -> RsaPrivateKey:
        """My RSA master key (it signs my identity and my suppliers record); Conflict without one."""
        return self._master_key()

    def _master_key(self) -> RsaPrivateKey:
        keystore = self.require_keystore()
        try:
            return keystore.private_key(keystore.master_key_id)
        except NotFound:
            raise Conflict("the master private key is missing; recover it with identity_recover") from None

    # -- others -------------------------------------------------------------

    def resolve_verifier(self, global_id: str) -> Ed25519Verifier | None:
        """A verifier for packets from ``global_id`` (mine or a cached identity); None if unknown."""
        try:
            key = str(globalid.to_global_id(global_id))
        except BadRequest:
            return None
        identity = self._identity if self._identity is not None and key in self.my_names() else None
        if identity is None and self.cache is not None:
            try:
                identity = self.cache.get(key)
            except (NotFound, BadRequest):
                return None
        if identity is None:
            return None
        public = identity.fast_public_key()
        return Ed25519Verifier(public) if public is not None else None

    def fetch_identity(self, idurl_or_global_id: str, refresh: bool = False, stranger: bool = False) -> Deferred:
        """Deferred[Identity]: mine, the cached one, or fetched from its servers and cached.

        A fetched identity goes through the cache's pinning rules: another key
        for a known IDURL fails with ``KeyMismatch`` (403). With ``refresh``
        the servers are asked even when a copy is cached (the newest wins).
        ``stranger``: asked because of a stranger's packet (an introduction):
        answered from the negative cache and refused when too many such
        fetches run (see :mod:`bitnode.userid.id_fetcher`).
        """
        return Deferred.fromCoroutine(self._fetch_identity(idurl_or_global_id, refresh, stranger))

    async def _fetch_identity(self, idurl_or_global_id: str, refresh: bool, stranger: bool = False) -> Identity:
        self._require_running()
        wanted = globalid.to_global_id(idurl_or_global_id)
        key = str(wanted)
        if self._identity is not None and key in self.my_names():
            return self._identity
        cached = self.cache.get(key) if self.cache.has(key) else None
        if cached is not None and not refresh:
            return cached
        asked = str(wanted.idurl)
        fetched = await self.sources.fetch(asked, cached, stranger)
        # served for the name asked: that name is theirs (an old one when their primary moved)
        self.cache.put(fetched, also_known_as=asked)
        return self.cache.get(fetched.global_id)

    def _peer_moved(self, old: str, new: str) -> None:
        self.log.info("{old} moved its identity: now {new}", old=old, new=new)
        self.ctx.events.publish("identity-rotated", {"old_global_id": old, "global_id": new})

    # -- creating -------------------------------------------------------------

    def identity_servers(self, preferred: list[str] | None = None) -> list[tuple[str, int]]:
        """``preferred`` (``host:port`` strings) or the ``personal/identity-servers`` setting, parsed."""
        return parse_servers(list(preferred or []) or list(self.ctx.settings.get("personal/identity-servers")))

    def _initial_contacts(self) -> list[str]:
        if self._pending_contacts is not None:
            return list(self._pending_contacts)
        settings = self.ctx.settings
        iface = settings.get(TCP_INTERFACE_KEY)
        port = settings.get(TCP_PORT_KEY)
        if iface in ("", "0.0.0.0", "::") or not port:
            # Not a reachable address: the transport calls update_contacts once it listens.
            return []
        try:
            return [validate_contact(f"tcp://{iface}:{port}")]
        except BadRequest:
            return []

    def create_identity(self, username: str, preferred_servers: list[str] | None = None,
                        join_network: bool = False) -> Deferred:
        """Deferred[Identity]: make keys, build and publish revision 1, then persist.

        The master RSA key (size ``personal/private-key-size``) and the Ed25519
        packet key are generated off the reactor. Sources are
        ``http://host:port/<username>.xml`` for each identity server. Nothing is
        written to disk unless at least one server accepted the identity; the
        client's error (409 name taken, 503 unreachable...) is passed on.
        Conflict if an identity exists. ``join_network`` publishes the event
        ``network-join-requested`` (the network connector, when it exists,
        reacts to it).
        """
        return self._lock.run(lambda: Deferred.fromCoroutine(
            self._create(username, list(preferred_servers or []), join_network)))

    def _check_no_identity(self) -> None:
        self._require_running()
        if self._identity is not None:
            raise Conflict(f"this node already has an identity: {self._identity.global_id}")
        if os.path.exists(self.identity_file):
            raise Conflict("identity.xml exists but cannot be loaded; erase it with identity_erase first")

    async def _create(self, username: str, preferred: list[str], join_network: bool) -> Identity:
        self._check_no_identity()
        name = globalid.validate_name(username)
        servers = self.identity_servers(preferred)
        if not servers:
            raise BadRequest("no identity server: pass preferred_servers or set personal/identity-servers")
        if len(servers) > MAX_SOURCES:
            raise BadRequest(f"at most {MAX_SOURCES} identity servers")
        sources = [str(globalid.IdUrl(name, host, port)) for host, port in servers]
        key_size = keys.check_key_size(self.ctx.settings.get("personal/private-key-size"))
        master, packet_key, identity = await self.ctx.run_in_thread(
            generate_identity, name, sources, self._initial_contacts(), key_size, self.ctx.clock.seconds())
        accepted = await self.client.publish(identity)
        if identity.sources[0] not in accepted:
            # The first server did not take it (it may be dead): a server that did becomes my primary,
            # so peers find me; the others keep their places after it.
            order = [s for s in sources if s in accepted] + [s for s in sources if s not in accepted]
            identity = await self.ctx.run_in_thread(
                identity.updated(now=self.ctx.clock.seconds(), sources=tuple(order)).sign, master)
            accepted = await self.client.publish(identity)
        await self._persist_new(identity, master, packet_key)
        self.publisher.mark_published(identity)
        self.log.info("identity {global_id} created, published to {count} server(s)",
                      global_id=identity.global_id, count=len(accepted))
        self._announce("my-identity-created", identity, join_network)
        return identity

    async def _persist_new(self, identity: Identity, master: RsaPrivateKey, packet_key: Ed25519PrivateKey,
                           home: str = "") -> None:
        keystore = await self.ctx.run_in_thread(id_files.write_new, self.files, identity, master, packet_key,
                                                self.ctx.run_in_thread, self.ctx.clock, home)
        self._pending_contacts = None
        self._install(identity, keystore, packet_key)

    def _announce(self, event_id: str, identity: Identity, join_network: bool = False, **extra: Any) -> None:
        data = {"global_id": identity.global_id, "idurl": identity.idurl, "revision": identity.revision}
        data.update(extra)
        self.ctx.events.publish(event_id, data)
        if join_network:
            self.ctx.events.publish("network-join-requested", {"global_id": identity.global_id})

    # -- recovering -------------------------------------------------------------

    def recover_identity(self, private_key_source: str, known_idurl: str | None = None,
                         join_network: bool = False) -> Deferred:
        """Deferred[Identity]: restore my identity from a backup (see :mod:`bitnode.userid.id_backup`).

        ``private_key_source`` is the backup text, a bare PEM, or an absolute
        path to a backup file; ``known_idurl`` is tried first. The identity is
        fetched from its servers and must carry the RSA key of the backup
        (Forbidden otherwise). Without a matching packet key in the backup a
        new one is made and a new revision published before anything is saved.
        """
        return self._lock.run(lambda: Deferred.fromCoroutine(
            self._recover(private_key_source, known_idurl, join_network)))

    async def _recover(self, private_key_source: str, known_idurl: str | None, join_network: bool) -> Identity:
        self._check_no_identity()
        text = await self.ctx.run_in_thread(id_backup.read_source, private_key_source)
        contents = await self.ctx.run_in_thread(id_backup.parse_backup, text)
        idurls = list(contents.idurls)
        if known_idurl:
            first = str(globalid.IdUrl.parse(known_idurl))
            idurls = [first] + [u for u in idurls if u != first]
        if not idurls:
            raise BadRequest("the key source names no IDURL: pass known_idurl")
        try:
            identity = await self.client.fetch_any(idurls)
        except BitnodeError:
            # every server of the backup is gone: the network's servers may hold it (moved since the backup)
            identity = await self.sources.fetch(idurls[0])
        if identity.rsa_public_key() != contents.master_key.public_key():
            raise Forbidden(f"the private key does not match the identity published at {identity.idurl}")
        packet_key = contents.packet_key
        contacts = self._pending_contacts if self._pending_contacts is not None else identity.contacts
        if packet_key is None or identity.fast_public_key() != packet_key.public_key():
            packet_key = fastsign.generate_ed25519()
        if signing_key_text(packet_key) != identity.signing_key or tuple(contacts) != identity.contacts:
            candidate = identity.updated(now=self.ctx.clock.seconds(), contacts=tuple(contacts),
                                         signing_key=signing_key_text(packet_key))
            identity = await self.ctx.run_in_thread(candidate.sign, contents.master_key)
            await self.client.publish(identity)
        home = globalid.idurl_to_global_id(contents.idurls[0]) if contents.idurls else ""
        await self._persist_new(identity, contents.master_key, packet_key, home)
        self.publisher.mark_published(identity)
        self.log.info("identity {global_id} recovered at revision {revision}",
                      global_id=identity.global_id, revision=identity.revision)
        self._announce("my-identity-created", identity, join_network, recovered=True)
        return identity

    # -- backing up and erasing -----------------------------------------------------

    def backup_identity(self, destination_filepath: str) -> Deferred:
        """Deferred[str]: write the backup file (0600, never over an existing file); fires with its path."""
        try:
            identity = self.require_identity()
            # the name my keys are stored under first: a recovered node keeps it (see id_files.write_new)
            home = globalid.global_id_to_idurl(self.storage_id() or identity.global_id)
            idurls = [home] + [source for source in identity.sources if source != home]
            data = id_backup.render_backup(idurls, self._master_key(), self._packet_key)
        except BitnodeError:
            return defer.fail()
        return self.ctx.run_in_thread(id_backup.write_new_file, destination_filepath, data)

    def erase_identity(self, erase_private_key: bool = False) -> Deferred:
        """Deferred[str]: delete identity.xml (and with ``erase_private_key`` the master and packet keys).

        Fires with the erased global id. Services that need an identity learn
        it from the ``my-identity-erased`` event. Other keys in the key store
        are kept.
        """
        return self._lock.run(lambda: Deferred.fromCoroutine(self._erase(erase_private_key)))

    async def _erase(self, erase_private_key: bool) -> str:
        self._require_running()
        identity = self._identity
        if identity is None and not os.path.exists(self.identity_file):
            raise NotFound("this node has no identity to erase")
        master_key_id = self.keystore.master_key_id if self.keystore is not None else None
        self.publisher.reset()
        await self.ctx.run_in_thread(id_files.remove_files, self.files, erase_private_key, master_key_id)
        self._install(None, None, None)
        global_id = identity.global_id if identity is not None else ""
        self.log.info("identity {global_id} erased (private key erased: {erased})",
                      global_id=global_id, erased=erase_private_key)
        self.ctx.events.publish("my-identity-erased",
                                 {"global_id": global_id, "private_key_erased": erase_private_key})
        return global_id

    # -- changing -------------------------------------------------------------------

    def update_contacts(self, contacts: list[str]) -> Deferred:
        """Deferred[Identity | None]: a new revision with these contacts, saved, then published.

        No-op (fires with the current identity) when unchanged. Without an
        identity the contacts are remembered for :meth:`create_identity` /
        :meth:`recover_identity` and the Deferred fires with None. A failed
        publish does not fail the call: it is logged and retried in the
        background (see :class:`~bitnode.userid.id_publisher.Publisher`).
        """
        try:
            if isinstance(contacts, str) or not isinstance(contacts, (list, tuple)):
                raise BadRequest("contacts must be a list")
            wanted = tuple(dict.fromkeys(validate_contact(c) for c in contacts))
        except BadRequest:
            return defer.fail()
        return self._lock.run(lambda: Deferred.fromCoroutine(self._update_contacts(wanted)))

    async def _update_contacts(self, contacts: tuple[str, ...]) -> Identity | None:
        self._require_running()
        if self._identity is None:
            self._pending_contacts = contacts
            return None
        if contacts == self._identity.contacts:
            return self._identity
        identity = await self._save_revision(self._identity.updated(now=self.ctx.clock.seconds(),
                                                                    contacts=contacts))
        await self.publisher.publish_or_retry(identity)
        return identity

    async def _save_revision(self, candidate: Identity) -> Identity:
        """Sign, save and install a new revision of my identity; announce it."""
        signed = await self.ctx.run_in_thread(candidate.sign, self._master_key())
        return await self._store_revision(signed)

    async def _store_revision(self, signed: Identity) -> Identity:
        await self.ctx.run_in_thread(atomic_write, self.identity_file, signed.to_xml(), PRIVATE_FILE_MODE)
        self._identity = signed
        self._announce("my-identity-changed", signed)
        return signed

    def rotate_identity(self, wanted: str = "") -> Deferred:
        """Deferred[RotateResult]: move my identity to another primary identity server, on demand.

        The primary moves to the next of my sources that answers (``wanted``:
        that one), else to a configured identity server (``personal/identity-servers``)
        not yet among my sources that accepts my name; my global id follows the
        primary and the old one stays one of my names (listed, and in
        ``my_names``). With nowhere to move, a new revision is saved and
        published where I am. Fails with the client's error when no server
        accepts it.
        """
        return self._lock.run(lambda: Deferred.fromCoroutine(self._rotate(force=True, wanted=wanted)))

    def move_identity(self) -> Deferred:
        """Deferred[RotateResult]: my primary is dead: move to a live source or a configured server.

        :class:`~bitnode.userid.id_rotation.NowhereToMove` (an Unavailable;
        nothing changed) when no other server answers: waiting is all there is
        to do then (id_rotator calls this).
        """
        return self._lock.run(lambda: Deferred.fromCoroutine(self._rotate(force=False)))

    def probe_sources(self) -> Deferred:
        """Deferred[list[SourceState]]: what each of my sources holds now (see :mod:`bitnode.userid.id_rotation`)."""
        try:
            me = self.require_identity()
        except BitnodeError:
            return defer.fail()
        return id_rotation.probe_sources(self.client, me)

    def republish(self) -> Deferred:
        """Deferred[list[str]]: publish my current revision again (to servers that hold an old one)."""
        try:
            me = self.require_identity()
        except BitnodeError:
            return defer.fail()
        return self._lock.run(lambda: Deferred.fromCoroutine(self.publisher.publish(self._identity or me)))

    def _configured_sources(self, name: str) -> list[str]:
        return [str(globalid.IdUrl(name, host, port)) for host, port in self.identity_servers()]

    async def _rotate(self, force: bool, wanted: str = "") -> RotateResult:
        current = self.require_identity()
        master = self._master_key()
        home = str(globalid.GlobalId.parse(self.storage_id() or current.global_id).idurl)

        def sign(candidate: Identity) -> Deferred:
            return self.ctx.run_in_thread(candidate.sign, master)

        try:
            signed, accepted, refused, probe = await id_rotation.rotate(
                self.client, current, sign, self._configured_sources(current.name), self.ctx.clock.seconds(),
                keep=home, wanted=wanted)
        except id_rotation.NowhereToMove as err:
            self.last_rotation = {"at": self.ctx.clock.seconds(), "moved": False, "error": str(err)}
            if not force or wanted:
                raise
            # on demand with nowhere to go: a new revision where I am (saved first, then published)
            identity = await self._save_revision(current.updated(now=self.ctx.clock.seconds()))
            accepted = await self.publisher.publish(identity)
            return RotateResult(identity, current.global_id, (), (), tuple(accepted))
        except BitnodeError as err:
            self.last_rotation = {"at": self.ctx.clock.seconds(), "moved": False, "error": str(err)}
            raise
        return await self._rotated(current, signed, accepted, refused, probe)

    async def _rotated(self, old: Identity, signed: Identity, accepted: list[str], refused: list[str],
                       probe: list[SourceState]) -> RotateResult:
        identity = await self._store_revision(signed)
        self.publisher.mark_published(identity)
        if self.keystore is not None:
            self.keystore.set_names(id_files.names_of(identity))
        added = tuple(s for s in identity.sources if s not in old.sources)
        result = RotateResult(identity, old.global_id, added, tuple(refused), tuple(accepted), tuple(probe))
        self.last_rotation = {"at": self.ctx.clock.seconds(), "moved": result.moved, "from": old.global_id,
                              "to": identity.global_id, "revision": identity.revision,
                              "published_to": list(accepted), "refused": list(refused)}
        if result.moved:
            self.log.info("identity moved from {old} to {new} (revision {revision}, published to {to})",
                          old=old.global_id, new=identity.global_id, revision=identity.revision, to=accepted)
            self._announce("my-identity-rotated", identity, old_global_id=old.global_id, old_idurl=old.idurl)
        return result

