"""service_identity_server: an HTTP identity server (``GET``/``POST /<name>.xml``).

A node running this service keeps the identity documents of the users who
registered here and serves them to anyone::

    GET  /                 JSON list of the names held here (only with
                           services/identity-server/list-names on; 404 otherwise)
    GET  /<name>.xml       the stored document (text/xml), 404 if unknown
    POST /<name>.xml       register or update <name> with a signed identity document

A POST is accepted (200, JSON envelope) only when every rule holds, checked in
this order; the first that fails decides the answer:

1. the body is at most ``services/identity-server/max-size`` bytes (413, as
   soon as the headers say so: a refused body is never stored);
2. the source address has not sent more than ``posts-per-minute`` POSTs (429);
3. it parses as an identity document and its signature verifies (400); the
   parser refuses DTDs and entities, so "billion laughs" is a plain 400; a
   key under 2048 bits is refused too;
4. the name in the document is the name in the path (400);
5. one of its sources is this server: the configured
   ``services/identity-server/host`` and the port we listen on (403);
6. the name is free, or held by the same RSA key: the first key to register
   a name owns it (409 otherwise);
7. a new name: the server holds fewer than ``max-identities`` (507), and the
   source address has registered fewer than ``registrations-per-hour`` new
   names in the last hour (429 with Retry-After);
8. its revision is higher than the stored one (409); the same revision with
   the same signed content is an idempotent 200.

What the limits refused is counted in the service's status (``service_info``).

The document is persisted (atomically) before the 200 goes out. Errors use the
bitnode error envelope ``{"status": "ERROR", "errors": [...]}``.

Files live in ``basedir/identityserver/<name>.xml``; a valid name is a safe
file name. Everything runs on the reactor thread on purpose: documents are at
most 64 KiB, so parsing, one RSA public-key verification and a small
synchronous atomic write are cheap, and handling a POST in one uninterrupted
step makes "first come owns the name" race-free without locks. Loading the
whole store at start-up, which may be many files, runs in the node's thread
pool.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from bitnode import globalid
from bitnode.errors import (
    BadRequest,
    BitnodeError,
    Conflict,
    Forbidden,
    InsufficientStorage,
    MethodNotAllowed,
    NotFound,
    TooManyRequests,
    error_response,
)
from bitnode.main.bounded_request import BoundedRequest
from bitnode.main.connections import TrackingSite
from bitnode.main.fileutil import atomic_write, ensure_dir, read_limited
from bitnode.main.options import BOOLEAN, FLOAT, INTEGER, Option
from bitnode.main.ratelimit import KeyedRateLimiter
from bitnode.main.schema import TCP_INTERFACE_KEY
from bitnode.services.base import Service
from bitnode.services.context import NodeContext
from bitnode.userid.identity import MAX_XML_BYTES, Identity

STORE_FOLDER = "identityserver"
MAX_SIZE_KEY = "services/identity-server/max-size"
PORT_KEY = "services/identity-server/web-port"
HOST_KEY = "services/identity-server/host"
LIST_NAMES_KEY = "services/identity-server/list-names"
REGISTRATIONS_KEY = "services/identity-server/registrations-per-hour"
POSTS_KEY = "services/identity-server/posts-per-minute"
MAX_IDENTITIES_KEY = "services/identity-server/max-identities"
# An oversize body is read and thrown away up to this many times the limit, so
# an honest client still gets its 413; past that the connection is cut.
DISCARD_FACTOR = 16
IDLE_TIMEOUT = 60

_PATH_RE = re.compile(r"/([a-z][a-z0-9_-]*)\.xml\Z")
_ALLOWED = ("GET", "HEAD", "POST")


class ServerLimits:
    """Per-source-address limits of one identity server, from its settings, and what they refused."""

    def __init__(self, clock, settings):
        self._settings = settings
        self.posts = KeyedRateLimiter(clock, 0, 1)
        self.registrations = KeyedRateLimiter(clock, 0, 1)
        self.refused = {"posts_rate_limited": 0, "registrations_rate_limited": 0, "store_full": 0,
                        "listing_refused": 0, "body_too_large": 0}
        self.configure()

    def configure(self, *_changed) -> None:
        """Take the limits from the settings (a settings listener calls it on every change)."""
        per_minute = float(self._settings.get(POSTS_KEY))
        per_hour = float(self._settings.get(REGISTRATIONS_KEY))
        self.posts.configure(per_minute / 60.0, max(1.0, per_minute))
        self.registrations.configure(per_hour / 3600.0, max(1.0, per_hour))

    def list_names(self) -> bool:
        """Whether ``GET /`` lists the names held here."""
        return bool(self._settings.get(LIST_NAMES_KEY))

    def max_identities(self) -> int:
        """How many identities the server holds at most."""
        return int(self._settings.get(MAX_IDENTITIES_KEY))

    def check_post(self, source: str) -> None:
        """One more POST from ``source``, or TooManyRequests."""
        if not self.posts.allow(source):
            self.refused["posts_rate_limited"] += 1
            raise TooManyRequests(f"too many identity posts from {source}; slow down",
                                  retry_after=self.posts.retry_after(source))

    def check_registration(self, source: str, held: int) -> None:
        """One more new name from ``source`` while ``held`` are stored, or InsufficientStorage/TooManyRequests."""
        if held >= self.max_identities():
            self.refused["store_full"] += 1
            raise InsufficientStorage("this identity server holds as many identities as it may")
        if not self.registrations.allow(source):
            self.refused["registrations_rate_limited"] += 1
            raise TooManyRequests(f"too many new identities registered from {source}; try again later",
                                  retry_after=self.registrations.retry_after(source))


class IdentityStore:
    """The identities held by one server: name -> verified :class:`Identity`, persisted as XML files."""

    log = Logger()

    def __init__(self, directory: str):
        self.directory = directory
        self._items: dict[str, Identity] = {}
        self.load_errors: list[str] = []

    def load(self) -> None:
        """Read every stored document (blocking: run it in a thread). Bad files are skipped and listed."""
        ensure_dir(self.directory)
        items: dict[str, Identity] = {}
        errors: list[str] = []
        for filename in sorted(os.listdir(self.directory)):
            if not filename.endswith(".xml") or filename.startswith("."):
                continue
            try:
                data = read_limited(os.path.join(self.directory, filename), MAX_XML_BYTES)
                identity = Identity.from_xml(data)
                if not identity.verify():
                    raise BadRequest("signature does not verify")
                if f"{identity.name}.xml" != filename:
                    raise BadRequest(f"holds the identity of {identity.name!r}")
            except (OSError, BitnodeError) as err:
                errors.append(f"{filename}: {err}")
                continue
            items[identity.name] = identity
        self._items = items
        self.load_errors = errors
        for error in errors:
            self.log.warn("identity server: skipped stored document {error}", error=error)

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        """Names held here, sorted."""
        return sorted(self._items)

    def get(self, name: str) -> Identity | None:
        """The stored identity of ``name``, if any."""
        return self._items.get(name)

    def accept(self, identity: Identity) -> str:
        """Store a verified ``identity`` if the ownership and revision rules allow it.

        Returns ``"created"``, ``"updated"`` or ``"unchanged"``; raises
        :class:`~bitnode.errors.Conflict` when the name belongs to another key
        or the revision does not move forward. Persists before returning.
        """
        current = self._items.get(identity.name)
        if current is None:
            outcome = "created"
        else:
            if current.rsa_public_key() != identity.rsa_public_key():
                raise Conflict(f"name {identity.name!r} is already registered here by another key")
            if identity.revision == current.revision and identity.signed_content() == current.signed_content():
                return "unchanged"
            if identity.revision <= current.revision:
                raise Conflict(
                    f"revision {identity.revision} of {identity.name!r} is not newer than "
                    f"the stored revision {current.revision}"
                )
            outcome = "updated"
        # Small (<= 64 KiB) synchronous write on purpose: see the module docstring.
        ensure_dir(self.directory)
        atomic_write(os.path.join(self.directory, f"{identity.name}.xml"), identity.to_xml())
        self._items[identity.name] = identity
        return outcome


class _IdentityRequest(BoundedRequest):
    """A request whose body is refused (413) as soon as it is known to be over the site's ``max_body``.

    A refused body is read and thrown away up to ``DISCARD_FACTOR`` times the
    limit, so an honest client gets its 413; past that the connection is cut.
    """

    def max_body(self) -> int:
        """``services/identity-server/max-size``."""
        return self.channel.site.max_body()

    def discard_budget(self) -> int:
        """``DISCARD_FACTOR`` times the limit."""
        return self.channel.site.max_body() * DISCARD_FACTOR

    def refused(self, err: BitnodeError, discarded: int) -> None:
        """Count oversize bodies."""
        self.channel.site.limits.refused["body_too_large"] += 1


class IdentityResource(resource.Resource):
    """The HTTP face of an :class:`IdentityStore` (see the module docstring)."""

    isLeaf = True
    log = Logger()

    def __init__(self, store: IdentityStore, is_this_server, limits: ServerLimits):
        super().__init__()
        self._store = store
        self._is_this_server = is_this_server
        self._limits = limits

    def render(self, request: server.Request) -> bytes:
        """Dispatch by method; every failure becomes an error envelope with its HTTP code."""
        try:
            method = request.method.decode("ascii", "replace")
            if method not in _ALLOWED:
                raise MethodNotAllowed(f"method {method} is not allowed here", allowed=_ALLOWED)
            path = request.path.decode("ascii", "replace")
            if path == "/":
                if method == "POST":
                    raise MethodNotAllowed("POST an identity to /<name>.xml", allowed=("GET", "HEAD"))
                if not self._limits.list_names():
                    self._limits.refused["listing_refused"] += 1
                    raise NotFound("this identity server does not list the names it holds; "
                                   "ask for /<name>.xml")
                return self._send_json(request, 200, {"status": "OK", "result": {
                    "names": self._store.names(), "count": len(self._store)}})
            name = self._path_name(path)
            if method == "POST":
                return self._post(request, name)
            return self._get(request, name)
        except BitnodeError as err:
            response = error_response(err)
            for header, value in response.headers.items():
                request.setHeader(header, value)
            return self._send_json(request, response.http_code, response.envelope)
        except Exception:
            self.log.failure("identity server failed on {method} {path}", method=request.method,
                             path=request.path)
            return self._send_json(request, 500, error_response(RuntimeError()).envelope)

    @staticmethod
    def _path_name(path: str) -> str:
        match = _PATH_RE.match(path)
        if not match:
            raise NotFound(f"no such document {path[:100]!r}; identities are at /<name>.xml")
        return globalid.validate_name(match.group(1))

    def _get(self, request: server.Request, name: str) -> bytes:
        identity = self._store.get(name)
        if identity is None:
            raise NotFound(f"no identity called {name!r} here")
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        return identity.to_xml()

    def _post(self, request: server.Request, name: str) -> bytes:
        source = getattr(request.getClientAddress(), "host", "?")
        self._limits.check_post(source)
        request.content.seek(0)
        body = request.content.read()
        identity = Identity.from_xml(body)
        if not identity.verify():
            raise BadRequest("identity signature does not verify")
        if identity.name != name:
            raise BadRequest(f"the document is the identity of {identity.name!r}, posted to /{name}.xml")
        here = [source for source in identity.sources if self._is_this_server(source)]
        if not here:
            raise Forbidden("none of the identity's sources points at this identity server")
        if self._store.get(name) is None:
            self._limits.check_registration(source, len(self._store))
        outcome = self._store.accept(identity)
        if outcome != "unchanged":
            self.log.info("identity server: {outcome} {name} revision {revision}",
                          outcome=outcome, name=name, revision=identity.revision)
        return self._send_json(request, 200, {"status": "OK", "result": {
            "name": name, "idurl": here[0], "revision": identity.revision, "outcome": outcome}})

    @staticmethod
    def _send_json(request: server.Request, code: int, body: dict) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode("utf-8")


class IdentitySite(TrackingSite):
    """A quiet Site using :class:`_IdentityRequest`, with the body limit read from a callable.

    Its open connections are in ``connections`` so the service can close them when it stops.
    """

    noisy = False

    def __init__(self, root: resource.Resource, max_body, limits: ServerLimits, reactor=None):
        super().__init__(root, requestFactory=_IdentityRequest, parsePOSTFormSubmission=False,
                         timeout=IDLE_TIMEOUT, reactor=reactor)
        self.max_body = max_body
        self.limits = limits

    def log(self, request) -> None:
        """No access log: lookups are frequent and say nothing useful."""


class IdentityServerService(Service):
    """Runs the identity server of this node (see the module docstring)."""

    name = "service_identity_server"
    enabled_by_default = False
    description = "HTTP identity server: serves and registers users' identity documents"
    options = (
        Option(MAX_SIZE_KEY, INTEGER, MAX_XML_BYTES, "Largest identity document (bytes) the server accepts.",
               minimum=1024, maximum=MAX_XML_BYTES),
        Option(LIST_NAMES_KEY, BOOLEAN, False,
               "Answer GET / with the list of every name held here (off: strangers cannot enumerate users)."),
        Option(REGISTRATIONS_KEY, FLOAT, 20.0,
               "New names one source address may register per hour (a burst of as many; 0: no limit).",
               minimum=0),
        Option(POSTS_KEY, FLOAT, 60.0, "Identity posts (new or updated) one source address may send per minute "
               "(0: no limit).", minimum=0),
        Option(MAX_IDENTITIES_KEY, INTEGER, 100_000, "Most identities this server holds (507 for new names above).",
               minimum=1),
    )
    log = Logger()

    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(ctx)
        self.store: IdentityStore | None = None
        self._port = None
        self._site: IdentitySite | None = None
        self.limits: ServerLimits | None = None

    @defer.inlineCallbacks
    def start(self):
        """Load the stored identities (in a thread), then listen."""
        store = IdentityStore(self.ctx.basedir.path(STORE_FOLDER))
        yield self.ctx.run_in_thread(store.load)
        self.store = store
        settings = self.ctx.settings
        limits = self.limits = ServerLimits(self.ctx.clock, settings)
        settings.add_listener(REGISTRATIONS_KEY, limits.configure)
        settings.add_listener(POSTS_KEY, limits.configure)
        site = IdentitySite(IdentityResource(store, self.is_this_server, limits),
                            lambda: settings.get(MAX_SIZE_KEY), limits, reactor=self.ctx.reactor)
        self._site = site
        self._port = self.ctx.reactor.listenTCP(settings.get(PORT_KEY), site,
                                                 interface=settings.get(TCP_INTERFACE_KEY) or "127.0.0.1")
        self.log.info("identity server listening on port {port} with {count} identities",
                      port=self.port, count=len(store))

    @defer.inlineCallbacks
    def stop(self):
        """Stop listening and close open connections."""
        if self.limits is not None:
            self.ctx.settings.remove_listener(REGISTRATIONS_KEY, self.limits.configure)
            self.ctx.settings.remove_listener(POSTS_KEY, self.limits.configure)
        port, self._port = self._port, None
        if port is not None:
            yield port.stopListening()
        if self._site is not None:
            yield self._site.connections.close_all()  # aborted at once: lookups have nothing to finish
            self._site = None

    @property
    def port(self) -> int | None:
        """The TCP port we listen on (useful when the setting is 0), or None when stopped."""
        return self._port.getHost().port if self._port is not None else None

    @property
    def host(self) -> str:
        """The host name identities registered here must use in their sources."""
        return self.ctx.settings.get(HOST_KEY).lower()

    def idurl(self, name: str) -> str:
        """The IDURL of ``name`` on this server (needs the server running)."""
        if self.port is None:
            raise BadRequest("the identity server is not running")
        return str(globalid.IdUrl(globalid.validate_name(name), self.host, self.port))

    def is_this_server(self, source: str) -> bool:
        """True when the IDURL ``source`` points at this server (configured host, listening port)."""
        try:
            idurl = globalid.IdUrl.parse(source)
        except BadRequest:
            return False
        return self.port is not None and idurl.host == self.host and idurl.port == self.port

    def status(self) -> dict[str, Any]:
        """Port, host and how many identities are held."""
        return {"port": self.port, "host": self.host,
                "identities": len(self.store) if self.store is not None else 0,
                "load_errors": len(self.store.load_errors) if self.store is not None else 0,
                "refused": dict(self.limits.refused) if self.limits is not None else {}}
