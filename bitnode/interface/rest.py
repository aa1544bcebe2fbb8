"""The HTTP REST API: one twisted.web resource generated from the route table.

GET parameters come from the query string; other verbs take a JSON object
body (query-string parameters are accepted too); a parameter that is part of
the path (URL-decoded: ``event/listen/my%20id/v1`` is consumer ``my id``)
cannot be given a different value elsewhere. Every answer is the JSON
envelope with the HTTP code from the one error table.

``GET /openapi.json`` answers the OpenAPI document of the API (built from the
route table, as :mod:`bitnode.interface.openapi` does), so tools and clients
can find it. Each request is judged as soon as its headers arrive (:class:`ApiRequest`):
rate-limited per client host first, then its Origin, Host and secret are
checked (see :mod:`bitnode.interface.auth`), and a Content-Length over
``interface/api/max-body-bytes`` is a 413. A refused request is answered at
once and its body is never stored; an accepted body is kept in memory and cut
(413) if it streams past the limit. A method that answers at once is written
at once, without a Deferred; one that answers later is written when it does,
and cancelled if the client goes away first.
"""

from __future__ import annotations

import json
from json.encoder import c_make_encoder, encode_basestring_ascii

from twisted.logger import Logger
from twisted.web.http import combinedLogFormatter
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from bitnode.boundedjson import BadJson
from bitnode.errors import BadRequest, BitnodeError, MethodNotAllowed, TooManyRequests
from bitnode.interface.auth import ApiGuard, RateLimiter
from bitnode.interface.dispatch import Answer, Dispatcher, error_answer, parse_json_object
from bitnode.interface.openapi import build_openapi
from bitnode.main.bounded_request import BoundedRequest, PayloadTooLarge
from bitnode.main.connections import TrackingSite
from bitnode.main.logs import redact

#: Where the node serves the OpenAPI document of its API (with the secret, like every request).
OPENAPI_PATH = b"/openapi.json"
#: Seconds an idle HTTP connection stays open (a long-poll is not idle: its request is being handled).
IDLE_TIMEOUT = 120

JSON_TYPE = b"application/json; charset=utf-8"

# The C encoder of json.dumps, built once and without the circular-reference check (answers are
# trees): json.dumps(..., default=str) would build a new encoder, in Python, on every call.
# Output is the same as json.dumps (", " and ": " separators, ASCII).
if c_make_encoder is not None:
    _encode_parts = c_make_encoder(None, str, encode_basestring_ascii, None, ": ", ", ", False, False, True)

    def _to_json(value) -> str:
        return "".join(_encode_parts(value, 0))
else:  # pragma: no cover - Pythons without the json C accelerator
    _to_json = json.JSONEncoder(default=str).encode


def encode_envelope(envelope: dict) -> bytes:
    """JSON text of an envelope; values JSON cannot carry become strings rather than a 500."""
    return _to_json(envelope).encode("ascii")


_VERBS = {verb.encode("ascii"): verb for verb in ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS")}


def _canonical(name: bytes) -> bytes:
    """A header name as ``Headers.getAllRawHeaders`` spells it (it canonicalises capitalisation)."""
    return next(iter(Headers({name: [b""]}).getAllRawHeaders()))[0]


# The headers the guard reads, looked for in one pass over the request's headers.
_GUARD_HEADERS = {_canonical(b"host"): 0, _canonical(b"origin"): 1, _canonical(b"api_secret"): 2,
                  _canonical(b"api-secret"): 3}


class ApiResource(Resource):
    """Serves every route of the table under one leaf resource."""

    isLeaf = True
    log = Logger()

    def __init__(self, dispatcher: Dispatcher, guard: ApiGuard, limiter: RateLimiter):
        super().__init__()
        self._dispatcher = dispatcher
        self._guard = guard
        self._limiter = limiter
        #: The limits and counters shared with the dispatcher.
        self.limits = dispatcher.limits
        self._openapi: bytes | None = None

    def render(self, request: Request):
        """Check the caller, resolve the route, read the arguments, dispatch, write the envelope."""
        if request.path == OPENAPI_PATH:
            return self._render_openapi(request)
        try:
            target, kwargs = self._prepare(request)
        except BitnodeError as err:
            return self._start_answer(request, error_answer(err))
        except Exception as err:  # a bug: the envelope of a 500, and the traceback in the log
            self.log.failure("reading the API request failed")
            return self._start_answer(request, error_answer(err))
        answer = self._dispatcher.answer(target, kwargs)
        if isinstance(answer, Answer):
            # The body goes back to twisted.web, which sets Content-Length, writes and finishes in one go.
            return self._start_answer(request, answer)
        request.notifyFinish().addErrback(lambda _: answer.cancel())
        answer.addCallback(self._write_later, request)
        answer.addErrback(lambda f: self.log.failure("writing API answer failed", f))
        return NOT_DONE_YET

    def _render_openapi(self, request: Request) -> bytes:
        """The OpenAPI document of this node's API (the secret is needed like everywhere else)."""
        try:
            if not getattr(request, "admitted", False):
                self.check_caller(request)
            if request.method not in (b"GET", b"HEAD"):
                raise MethodNotAllowed("the OpenAPI document is read with GET", ("GET",))
        except BitnodeError as err:
            return self._start_answer(request, error_answer(err))
        if self._openapi is None:
            address = request.getHost()
            host = f"[{address.host}]" if ":" in address.host else address.host
            document = build_openapi(self._dispatcher.is_implemented, server_url=f"http://{host}:{address.port}")
            self._openapi = json.dumps(document, indent=1).encode("utf-8")
        request.responseHeaders.setRawHeaders(b"content-type", [JSON_TYPE])
        request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
        return self._openapi

    def check_caller(self, request: Request) -> None:
        """Rate limit, Origin, Host and secret of a request, from its headers alone (raises to refuse)."""
        # The rate limit counts per client host (not per port or connection), before any check.
        if self._limiter.rate:
            self._limiter.hit(getattr(request.getClientAddress(), "host", "?"))
        found = [None, None, None, None]  # host, origin, api_secret, api-secret: the last value of each
        for name, values in request.requestHeaders.getAllRawHeaders():
            index = _GUARD_HEADERS.get(name)
            if index is not None and values:
                found[index] = values[-1]
        self._guard.check(found[0], found[1], found[2] or found[3])

    def _prepare(self, request: Request):
        if not getattr(request, "admitted", False):  # not an ApiRequest, which checked the headers already
            self.check_caller(request)
        verb = _VERBS.get(request.method) or request.method.decode("ascii", "replace").upper()
        try:
            path = request.path.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the request path is not UTF-8 (send other characters %-encoded)") from None
        target, from_path = self._dispatcher.by_path(path, verb)
        kwargs = {}
        if request.args:
            for key, values in request.args.items():
                name = key.decode("utf-8", "replace")
                if name != "api_secret":
                    kwargs[name] = values[-1].decode("utf-8", "replace")
        if verb != "GET":
            kwargs.update(self._read_body(request))
        for name, value in from_path.items():
            # The path names what is acted on; a different value elsewhere must not override it.
            if name in kwargs and kwargs[name] != value:
                raise BadRequest(f"parameter '{name}' is already given in the path")
            kwargs[name] = value
        return target, kwargs

    def _read_body(self, request: Request) -> dict:
        limits = self.limits
        request.content.seek(0)
        raw = request.content.read(limits.max_body_bytes + 1)
        if len(raw) > limits.max_body_bytes:
            limits.count("body_too_large")
            raise PayloadTooLarge(f"request body larger than {limits.max_body_bytes} bytes")
        if not raw.strip():
            return {}
        try:
            return parse_json_object(raw, "body", limits.max_json_depth)
        except BadJson as err:
            limits.count_json_error(err)
            raise

    def _start_answer(self, request: Request, answer: Answer) -> bytes:
        """Status and headers of ``answer``; returns the body to send."""
        code, envelope, extra = answer
        try:
            body = _to_json(envelope).encode("ascii")
        except Exception:  # a result JSON cannot carry even as text (too deep): a 500, not a hung request
            self.log.failure("encoding the API answer failed")
            code, body = 500, encode_envelope({"status": "ERROR", "errors": ["internal error: answer not encodable"]})
        if code != 200:
            request.setResponseCode(code if code != 499 else 400)
        headers = request.responseHeaders
        headers.setRawHeaders(b"content-type", [JSON_TYPE])
        headers.setRawHeaders(b"cache-control", [b"no-store"])
        if extra:
            for name, value in extra.items():
                headers.setRawHeaders(name.encode("ascii"), [str(value).encode("ascii")])
        return body

    def _write_later(self, answer: Answer, request: Request) -> None:
        if request.finished or request._disconnected:
            return
        body = self._start_answer(request, answer)
        # A length instead of chunked encoding: one write, and clients know when the answer ends.
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        request.write(body)
        request.finish()


class ApiRequest(BoundedRequest):
    """An API request, judged when its headers arrive (see :class:`~bitnode.main.bounded_request.BoundedRequest`)."""

    def admit(self, length: int | None) -> None:
        """Rate limit, Origin, Host and secret, before any byte of the body is read."""
        self.channel.site.resource.check_caller(self)

    def max_body(self) -> int:
        """``interface/api/max-body-bytes``."""
        return self.channel.site.limits.max_body_bytes

    def refused(self, err: BitnodeError, discarded: int) -> None:
        """Count the refusal by kind."""
        limits = self.channel.site.limits
        if isinstance(err, PayloadTooLarge):
            limits.count("body_too_large")
        else:
            limits.count("refused_at_headers")
            if isinstance(err, TooManyRequests):
                limits.count("rate_limited")
        if discarded:
            limits.count("body_bytes_discarded", discarded)

    def discarded(self, amount: int) -> None:
        """Count body bytes thrown away."""
        self.channel.site.limits.count("body_bytes_discarded", amount)


def _redacted_access_line(timestamp: str, request: Request) -> str:
    """twisted.web's access log line, without a secret a client put in the URL."""
    return redact(combinedLogFormatter(timestamp, request))


class ApiSite(TrackingSite):
    """The HTTP API's Site: :class:`ApiRequest` for every request, access log lines only when asked.

    ``log_requests`` follows ``logs/api-calls``. Form bodies are not parsed
    (the API reads JSON), and idle connections close after :data:`IDLE_TIMEOUT`.
    """

    noisy = False
    log_requests = False

    def __init__(self, resource: ApiResource, reactor=None):
        super().__init__(resource, requestFactory=ApiRequest, parsePOSTFormSubmission=False, timeout=IDLE_TIMEOUT,
                         logFormatter=_redacted_access_line, reactor=reactor)
        self.limits = resource.limits

    def log(self, request) -> None:
        """Skip the per-request access log unless enabled."""
        if self.log_requests:
            super().log(request)
