"""The HTTP REST API: one twisted.web resource generated from the route table.

GET parameters come from the query string; other verbs take a JSON object
body (query-string parameters are accepted too). Every answer is the JSON
envelope with the HTTP code from the one error table.
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from bitnode.errors import BadRequest, BitnodeError, error_response
from bitnode.interface.auth import ApiGuard, RateLimiter
from bitnode.interface.dispatch import Answer, Dispatcher

MAX_BODY = 1024 * 1024


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
        target, kwargs = self._dispatcher.by_path(path, verb)
        for key, values in request.args.items():
            name = key.decode("utf-8", "replace")
            if name == "api_secret":
                continue
            kwargs[name] = values[-1].decode("utf-8", "replace")
        if verb != "GET":
            kwargs.update(self._read_body(request))
        return target, kwargs

    @staticmethod
    def _read_body(request: Request) -> dict:
        request.content.seek(0)
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise BadRequest(f"request body larger than {MAX_BODY} bytes")
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
        request.setResponseCode(answer.code if answer.code != 499 else 400)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        for name, value in answer.headers.items():
            request.setHeader(name.encode("ascii"), str(value).encode("ascii"))
        request.write(encode_envelope(answer.envelope))
        request.finish()
