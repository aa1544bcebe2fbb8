"""The HTTP REST API: one twisted.web resource generated from the route table.

GET parameters come from the query string; other verbs take a JSON object
body (query-string parameters are accepted too); a parameter that is part of
the path cannot be given a different value elsewhere. Every answer is the
JSON envelope with the HTTP code from the one error table (413 for a body
over :data:`MAX_BODY`).
"""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from bitnode.errors import BadRequest, BitnodeError, error_response
from bitnode.interface.auth import ApiGuard, RateLimiter
from bitnode.interface.dispatch import Answer, Dispatcher

MAX_BODY = 1024 * 1024


class PayloadTooLarge(BadRequest):
    """The request body is over :data:`MAX_BODY` (HTTP 413)."""

    http_code = 413


def encode_envelope(envelope: dict) -> bytes:
    """JSON text of an envelope; values JSON cannot carry become strings rather than a 500."""
    return json.dumps(envelope, default=str).encode("utf-8")


class ApiResource(Resource):
    """Serves every route of the table under one leaf resource."""

    isLeaf = True
    log = Logger()

    def __init__(self, dispatcher: Dispatcher, guard: ApiGuard, limiter: RateLimiter):
        super().__init__()
        self._dispatcher = dispatcher
        self._guard = guard
        self._limiter = limiter

    def render(self, request: Request):
        """Check the caller, resolve the route, read the arguments, dispatch, write the envelope."""
        try:
            target, kwargs = self._prepare(request)
        except BitnodeError as err:
            response = error_response(err)
            self._write(request, Answer(response.http_code, response.envelope, response.headers))
            return NOT_DONE_YET
        d = self._dispatcher.execute(target, kwargs)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallback(lambda answer: self._write(request, answer))
        d.addErrback(lambda f: self.log.failure("writing API answer failed", f))
        return NOT_DONE_YET

    def _prepare(self, request: Request):
        header = request.getHeader
        self._guard.check(header("host"), header("origin"), header("api_secret") or header("api-secret"))
        client = getattr(request.getClientAddress(), "host", "?")
        self._limiter.hit(client)
        verb = request.method.decode("ascii", "replace").upper()
        path = request.path.decode("utf-8", "replace")
        target, from_path = self._dispatcher.by_path(path, verb)
        kwargs = {}
        for key, values in request.args.items():
            name = key.decode("utf-8", "replace")
            if name == "api_secret":
                continue
            kwargs[name] = values[-1].decode("utf-8", "replace")
        if verb != "GET":
            kwargs.update(self._read_body(request))
        for name, value in from_path.items():
            # The path names what is acted on; a different value elsewhere must not override it.
            if name in kwargs and kwargs[name] != value:
                raise BadRequest(f"parameter '{name}' is already given in the path")
            kwargs[name] = value
        return target, kwargs

    @staticmethod
    def _read_body(request: Request) -> dict:
        request.content.seek(0)
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise PayloadTooLarge(f"request body larger than {MAX_BODY} bytes")
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise BadRequest(f"malformed JSON body: {err}") from None
        if not isinstance(body, dict):
            raise BadRequest("the JSON body must be an object of parameters")
        return body

    @staticmethod
    def _write(request: Request, answer: Answer) -> None:
        if request.finished or request._disconnected:
            return
        body = encode_envelope(answer.envelope)
        request.setResponseCode(answer.code if answer.code != 499 else 400)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        # A length instead of chunked encoding: one write, and clients know when the answer ends.
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        for name, value in answer.headers.items():
            request.setHeader(name.encode("ascii"), str(value).encode("ascii"))
        request.write(body)
        request.finish()


class ConnectionTracker(WrappingFactory):
    """Wraps a server factory (the Site, the WebSocket factory) to know its open connections.

    Stopping to listen leaves accepted connections open, with their idle
    timers; a node that stops must close them itself, or they outlive it.
    """

    noisy = False

    def __init__(self, wrapped_factory):
        super().__init__(wrapped_factory)
        self._when_empty: list[defer.Deferred] = []

    def logPrefix(self) -> str:
        """Log as the wrapped factory ("_ApiSite starting on 8180"), as without the tracker."""
        return self.wrappedFactory.__class__.__name__

    def unregisterProtocol(self, p) -> None:
        """A connection went away; tell :meth:`close_all` when it was the last one."""
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self._when_empty = self._when_empty, []
            for waiter in waiters:
                waiter.callback(None)

    def close_all(self, clock: IReactorTime, grace: float = 2.0) -> defer.Deferred:
        """Close every connection; fires once all are gone (aborting those still open after ``grace``).

        A wrapped protocol with a ``close_for_shutdown()`` method closes
        itself politely (a WebSocket close frame); others lose the connection
        once written data is flushed.
        """
        if not self.protocols:
            return defer.succeed(None)
        done = defer.Deferred()
        self._when_empty.append(done)
        for wrapper in list(self.protocols):
            closer = getattr(wrapper.wrappedProtocol, "close_for_shutdown", None)
            if closer is not None:
                closer()
            else:
                wrapper.transport.loseConnection()
        abort = clock.callLater(grace, self._abort_all)
        done.addBoth(lambda result: (abort.cancel() if abort.active() else None, result)[1])
        return done

    def _abort_all(self) -> None:
        for wrapper in list(self.protocols):
            wrapper.transport.abortConnection()
