"""Fakes for identity tests: in-memory identity servers, a client for them, a small node.

The fake client keeps the contract of :class:`bitnode.userid.id_client.IdentityClient`
(fetch, fetch_any, publish, close; the same typed errors) and applies the
identity server's rules (first key owns a name, revisions only go up), with no
sockets and no reactor. Keys are generated once per test process, in a class
attribute, because RSA generation is the slow part of these tests.
"""

from __future__ import annotations

import base64
import os
import stat

from twisted.internet import defer
from twisted.internet.task import Clock

from bitnode import globalid
from bitnode.crypt import fastsign, keys
from bitnode.errors import BadRequest, Conflict, NotFound, Unavailable
from bitnode.main.basedir import Basedir
from bitnode.main.events import EventBus
from bitnode.main.schema import SCHEMA
from bitnode.main.settings import Settings
from bitnode.userid.id_service import IdentityService
from bitnode.userid.identity import Identity, format_date

SERVER = "id.example.net:8084"
SERVER2 = "id2.example.net:8084"
FAST_KEYS = {"personal/private-key-size": 2048}


class _Keys:
    cached: list = []


def rsa_key(index: int) -> keys.RsaPrivateKey:
    """The ``index``-th 2048-bit test key (generated on first use, then reused)."""
    while len(_Keys.cached) <= index:
        _Keys.cached.append(keys.generate_rsa(2048))
    return _Keys.cached[index]


def make_identity(name: str, key: keys.RsaPrivateKey, servers=(SERVER,), revision: int = 1,
                  contacts=("tcp://127.0.0.1:9000",), packet_key=None) -> Identity:
    """A signed identity of someone else."""
    sources = []
    for server in servers:
        host, _, port = server.partition(":")
        sources.append(str(globalid.IdUrl(name, host, int(port))))
    packet_key = packet_key or fastsign.generate_ed25519()
    identity = Identity(name=name, sources=tuple(sources), contacts=tuple(contacts), revision=revision,
                        date=format_date(1_700_000_000), public_key=key.public_key().to_pem().decode("ascii"),
                        signing_key=base64.b64encode(fastsign.public_to_raw(packet_key)).decode("ascii"))
    return identity.sign(key)


def host_of(idurl: str) -> str:
    parsed = globalid.IdUrl.parse(idurl)
    return f"{parsed.host}:{parsed.port}"


class FakeServers:
    """Identity servers in memory: ``docs`` maps an IDURL to the XML stored there."""

    def __init__(self):
        self.docs: dict[str, bytes] = {}
        self.down: set[str] = set()
        self.posts: list[tuple[str, int]] = []
        self.gets: list[str] = []

    def stored(self, idurl: str) -> Identity:
        return Identity.from_xml(self.docs[idurl])

    def get(self, idurl: str) -> Identity:
        self.gets.append(idurl)
        if host_of(idurl) in self.down:
            raise Unavailable(f"{idurl}: cannot connect")
        if idurl not in self.docs:
            raise NotFound(f"{idurl}: no such identity")
        identity = Identity.from_xml(self.docs[idurl])
        if idurl not in identity.sources or not identity.verify():
            raise BadRequest(f"{idurl}: bad identity")
        return identity

    def post(self, idurl: str, identity: Identity) -> None:
        self.posts.append((idurl, identity.revision))
        if host_of(idurl) in self.down:
            raise Unavailable(f"{idurl}: cannot connect")
        current = self.docs.get(idurl)
        if current is not None:
            old = Identity.from_xml(current)
            if old.rsa_public_key() != identity.rsa_public_key():
                raise Conflict(f"{idurl}: name is taken by another key")
            if identity.revision < old.revision or (
                    identity.revision == old.revision and identity.signed_content() != old.signed_content()):
                raise Conflict(f"{idurl}: revision is not higher")
        self.docs[idurl] = identity.to_xml()


class FakeClient:
    """The IdentityClient contract over :class:`FakeServers`."""

    def __init__(self, servers: FakeServers):
        self.servers = servers
        self.closed = False
        self.hold: defer.Deferred | None = None

    def fetch(self, idurl: str) -> defer.Deferred:
        return defer.maybeDeferred(self.servers.get, str(globalid.IdUrl.parse(idurl)))

    def fetch_any(self, idurls) -> defer.Deferred:
        last = None
        for idurl in idurls:
            try:
                return defer.succeed(self.servers.get(idurl))
            except (BadRequest, NotFound, Unavailable) as err:
                last = err
        return defer.fail(last or BadRequest("no IDURL"))

    def publish(self, identity: Identity) -> defer.Deferred:
        return self.publish_to(identity, identity.sources)

    def publish_to(self, identity: Identity, sources) -> defer.Deferred:
        accepted, errors = [], []
        for source in [s for s in identity.sources if s in set(sources)]:
            try:
                self.servers.post(source, identity)
                accepted.append(source)
            except (Conflict, Unavailable) as err:
                errors.append(err)
        if accepted:
            result = defer.succeed(accepted)
        else:
            result = defer.fail(sorted(errors, key=lambda e: not isinstance(e, Conflict))[0])
        if self.hold is not None:
            # Let a test see the service while a publish is in flight.
            hold, self.hold = self.hold, None
            hold.addCallback(lambda _: result)
            return hold
        return result

    def close(self):
        self.closed = True
        return defer.succeed(None)


class FakeNode:
    """What service_identity uses of a Node: basedir, settings, events, clock, threads (run inline)."""

    def __init__(self, root: str, clock: Clock | None = None, overrides: dict | None = None):
        self.basedir = Basedir.at(root)
        self.basedir.create()
        values = dict(FAST_KEYS)
        values.update(overrides or {})
        self.settings = Settings(self.basedir.settings_file, SCHEMA, values)
        for option in IdentityService.options:
            self.settings.register(option)
        self.clock = self.reactor = clock or Clock()
        self.events = EventBus(self.clock)
        self.seen: list[tuple[str, object]] = []
        self.events.subscribe(lambda event: self.seen.append((event.event_id, event.data)))
        self.thread_calls: list[str] = []

    def run_in_thread(self, fn, *args, **kwargs) -> defer.Deferred:
        self.thread_calls.append(getattr(fn, "__name__", repr(fn)))
        return defer.maybeDeferred(fn, *args, **kwargs)

    def call_later(self, delay, fn, *args, **kwargs):
        return self.clock.callLater(delay, fn, *args, **kwargs)

    def event_ids(self) -> list[str]:
        return [event_id for event_id, _ in self.seen]


def make_service(node, servers: FakeServers) -> IdentityService:
    """A service_identity on ``node`` whose client is a :class:`FakeClient`."""
    service = IdentityService(node)
    service.make_client = lambda: FakeClient(servers)
    return service


def file_mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)
