"""A twisted.web Request that judges a request when its headers arrive and keeps its body small.

twisted.web's own Request writes any body of 100,000 bytes or more, and every
chunked body, to a temporary file before the resource sees it, so a client
that is about to be refused still costs disk and time. :class:`BoundedRequest`
decides as soon as the headers are in:

- :meth:`BoundedRequest.admit` (for subclasses) may refuse the request from its
  headers alone (a missing secret, a foreign Origin, a rate limit);
- a Content-Length over :meth:`BoundedRequest.max_body` is refused at once
  (413), and a body without one (chunked) is cut when it passes the limit;
- a refused request is answered at once with the error envelope and
  ``Connection: close``, and the connection is closed. A body still on its way
  is read and thrown away (never stored) first when that is at most
  :meth:`BoundedRequest.discard_budget` bytes (a chunked body is cut after
  that many), so an honest
  client sees the answer rather than a reset; a bigger one, or one the client
  was told not to send (``Expect: 100-continue``), is not waited for;
- an accepted body is kept in memory (it is at most ``max_body`` bytes).
"""

from __future__ import annotations

import json
from io import BytesIO

from twisted.web import http, server

from bitnode.errors import BadRequest, BitnodeError, error_response

#: Body bytes of a refused request read and dropped before the connection is cut.
DISCARD_BYTES = 1024 * 1024


class PayloadTooLarge(BadRequest):
    """A request body over the size limit (HTTP 413)."""

    http_code = 413


class BoundedRequest(server.Request):
    """See the module docstring. Subclasses override :meth:`admit`, :meth:`max_body` and :meth:`refused`."""

    #: The error this request was refused with when its headers (or too much body) arrived, else None.
    refusal: BitnodeError | None = None
    #: True once the headers passed :meth:`admit` and the length check.
    admitted = False
    _limit = 0
    _discarded = 0
    _length: int | None = None

    # --- for subclasses -------------------------------------------------------------

    def admit(self, length: int | None) -> None:
        """Raise a BitnodeError to refuse the request from its headers (``self.requestHeaders``)."""

    def max_body(self) -> int:
        """The largest body accepted, in bytes."""
        raise NotImplementedError

    def refused(self, err: BitnodeError, discarded: int) -> None:
        """Called once when the request is refused (for counters); ``discarded`` body bytes so far."""

    def discarded(self, amount: int) -> None:
        """Called for body bytes thrown away after the refusal (for counters)."""

    def discard_budget(self) -> int:
        """How many body bytes of a refused request are read and dropped at most (then the connection is cut)."""
        return DISCARD_BYTES

    # --- twisted.web's hooks ------------------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        """The headers are in: admit or refuse now, before any body byte is kept."""
        self.content = BytesIO()  # never a temporary file: a kept body is at most max_body() bytes
        self._length = length
        try:
            self.admit(length)
            limit = self.max_body()
            if length is not None and length > limit:
                raise PayloadTooLarge(f"request body larger than {limit} bytes")
        except BitnodeError as err:
            self._refuse(err)
            return
        self._limit = limit
        self.admitted = True

    def handleContentChunk(self, data: bytes) -> None:
        """Keep a chunk of an admitted body within the limit; drop a refused one's."""
        if self.refusal is None:
            if self.content.tell() + len(data) <= self._limit:
                self.content.write(data)
                return
            self._refuse(PayloadTooLarge(f"request body larger than {self._limit} bytes"), len(data))
            return
        self._discarded += len(data)
        self.discarded(len(data))
        if self._discarded > self.discard_budget() and self.channel is not None:
            self.channel.transport.abortConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole body is in: render an admitted request; close a refused one (already answered)."""
        if self.refusal is not None:
            if self.channel is not None:
                self.channel.loseConnection()
            return
        super().requestReceived(command, path, version)

    # --- internals ---------------------------------------------------------------------------

    def _refuse(self, err: BitnodeError, discarded: int = 0) -> None:
        self.refusal = err
        self.admitted = False
        received = self.content.tell() + discarded
        self.content = BytesIO()
        self._discarded = discarded
        self.refused(err, discarded)
        expects_continue = self.requestHeaders.hasHeader(b"expect")
        # No "100 Continue" after the final answer: the client must not send the body at all.
        self.requestHeaders.removeHeader(b"expect")
        channel = self.channel
        channel.persistent = False
        channel.transport.write(_raw_answer(err))
        still_to_come = None if self._length is None else self._length - received
        if expects_continue or (still_to_come is not None and still_to_come > self.discard_budget()):
            channel.loseConnection()  # nothing worth waiting for: the answer is written, then the connection closes


def _raw_answer(err: BitnodeError) -> bytes:
    """The whole HTTP answer to a refused request: status, headers, the error envelope."""
    response = error_response(err)
    body = json.dumps(response.envelope).encode("utf-8")
    code = response.http_code
    lines = [b"HTTP/1.1 %d %s" % (code, http.RESPONSES.get(code, b"Error")),
             b"Content-Type: application/json; charset=utf-8",
             b"Cache-Control: no-store",
             b"Connection: close",
             b"Content-Length: %d" % len(body)]
    for name, value in response.headers.items():
        lines.append(name.encode("ascii") + b": " + str(value).encode("ascii"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
