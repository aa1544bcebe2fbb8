"""The HTTP API judges a request when its headers arrive: refused bodies are never stored, bodies are capped.

These tests speak raw HTTP over loopback (a real client would wait to send
its whole body before it reads an answer; the point here is what the node
does while the body is still on its way).
"""

from __future__ import annotations

import json
import tempfile

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial import unittest
from twisted.web import http

from bitnode.app import api_server
from tests.interface.support import HttpApi, start_node, wait_until


class RawClient(Protocol):
    """Sends bytes as told and keeps everything the node answers."""

    def connectionMade(self):
        self.data = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost.callback(None)

    def answer(self) -> tuple[int, dict, dict]:
        """Status code, headers (lower-case names) and JSON body of the first complete answer received."""
        head, _, body = self.data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), headers, json.loads(body[:int(headers["content-length"])])

    def has_answer(self) -> bool:
        """True once a whole answer (headers and Content-Length bytes of body) is in."""
        head, sep, body = self.data.partition(b"\r\n\r\n")
        if not sep:
            return False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b": ")
            if name.lower() == b"content-length":
                return len(body) >= int(value)
        return False


class EarlyCheckTests(unittest.TestCase):
    """Host, Origin and the secret are checked before any body byte is read; the limit before it is kept."""

    @defer.inlineCallbacks
    def setUp(self):
        self.node = yield start_node(self)
        self.port = int(self.node.endpoints()["http"].rsplit(":", 1)[1].rstrip("/"))
        self.temp_files = []
        real = tempfile.TemporaryFile

        def counting_temporary_file(*args, **kwargs):
            self.temp_files.append(1)
            return real(*args, **kwargs)

        # twisted.web writes bodies of 100,000 bytes or more, and every chunked body, to a temporary file.
        self.patch(http.tempfile, "TemporaryFile", counting_temporary_file)

    @defer.inlineCallbacks
    def connect(self) -> RawClient:
        client = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), RawClient())
        self.addCleanup(lambda: client.transport.loseConnection() or client.lost)
        return client

    def head(self, path=b"/config/set/v1", length=None, secret=True, extra=b"") -> bytes:
        """Request line and headers of a POST (ends with the blank line)."""
        lines = [b"POST " + path + b" HTTP/1.1", b"Host: 127.0.0.1:%d" % self.port]
        if secret is True:
            lines.append(b"api_secret: " + api_server(self.node).secret.encode("ascii"))
        elif secret:
            lines.append(b"api_secret: " + secret)
        if length is None:
            lines.append(b"Transfer-Encoding: chunked")
        else:
            lines.append(b"Content-Length: %d" % length)
        return b"\r\n".join(lines) + b"\r\n" + extra + b"\r\n"

    def refused(self) -> dict:
        return api_server(self.node).dispatcher.limits.refused

    @defer.inlineCallbacks
    def answered_before_the_body(self, client, body_size: int, what: str):
        """Wait for the answer to a request whose head ``client`` sent (``what``), then send ``body_size``
        bytes of body anyway and wait for the close: the answer (code, headers, body). The body was read
        and dropped, never kept in a temp file."""
        yield wait_until(client.has_answer, what)  # the 401 waited for a 50 MiB body before
        answer = client.answer()
        client.transport.write(b"x" * body_size)
        yield client.lost
        self.assertEqual(self.temp_files, [])
        return answer

    @defer.inlineCallbacks
    def test_no_cors_page_post_without_secret_is_answered_before_its_body_and_costs_nothing(self):
        # What a web page can send to 127.0.0.1:8180: text/plain, any size, no secret.
        client = yield self.connect()
        client.transport.write(self.head(length=50 * 1024 * 1024, secret=None,
                                         extra=b"Origin: http://127.0.0.1:8180\r\nContent-Type: text/plain\r\n"))
        code, headers, body = yield self.answered_before_the_body(client, 300_000, "the 401 before any body byte")
        self.assertEqual((code, body["status"]), (401, "ERROR"))
        self.assertIn("api_secret", body["errors"][0])
        self.assertEqual(headers["connection"], "close")
        self.assertEqual(self.refused()["refused_at_headers"], 1)

    @defer.inlineCallbacks
    def test_foreign_origin_is_refused_at_the_headers(self):
        client = yield self.connect()
        client.transport.write(self.head(length=200_000, extra=b"Origin: https://evil.example\r\n"))
        code, _, _ = yield self.answered_before_the_body(client, 200_000, "the 403")
        self.assertEqual(code, 403)
        self.assertEqual(self.refused()["body_bytes_discarded"], 200_000)

    @defer.inlineCallbacks
    def test_wrong_secret_with_expect_continue_gets_no_100_continue(self):
        client = yield self.connect()
        client.transport.write(self.head(length=10, secret=b"guess", extra=b"Expect: 100-continue\r\n"))
        yield wait_until(client.has_answer, "the 401")
        self.assertTrue(client.data.startswith(b"HTTP/1.1 401 "), client.data[:40])
        yield client.lost
        self.assertNotIn(b"100 Continue", client.data)

    @defer.inlineCallbacks
    def test_over_limit_content_length_is_413_at_once(self):
        client = yield self.connect()
        client.transport.write(self.head(length=2 * 1024 * 1024))
        yield wait_until(client.has_answer, "the 413 before the body")
        code, _, body = client.answer()
        self.assertEqual(code, 413)
        self.assertIn("larger than 1048576 bytes", body["errors"][0])
        self.assertEqual(self.refused()["body_too_large"], 1)
        self.assertEqual(self.temp_files, [])

    @defer.inlineCallbacks
    def test_chunked_body_is_cut_when_it_passes_the_limit(self):
        yield HttpApi(self, self.node).post("config/set/v1", key="interface/api/max-body-bytes", value=4096)
        client = yield self.connect()
        client.transport.write(self.head(length=None))
        for _ in range(5):  # 5 KiB in 1 KiB chunks: the 413 comes while the body still streams
            client.transport.write(b"400\r\n" + b" " * 1024 + b"\r\n")
        yield wait_until(client.has_answer, "the 413 once the body passed 4096 bytes")
        code, _, body = client.answer()
        self.assertEqual(code, 413)
        self.assertIn("larger than 4096 bytes", body["errors"][0])
        client.transport.write(b"0\r\n\r\n")
        yield client.lost
        self.assertEqual(self.temp_files, [])

    @defer.inlineCallbacks
    def test_refused_body_that_goes_on_and_on_is_cut_off(self):
        from bitnode.main import bounded_request

        self.patch(bounded_request, "DISCARD_BYTES", 10_000)
        client = yield self.connect()
        client.transport.write(self.head(length=None, secret=None))
        yield wait_until(client.has_answer, "the 401")
        for _ in range(20):
            client.transport.write(b"400\r\n" + b" " * 1024 + b"\r\n")
        yield client.lost  # cut after 10,000 dropped bytes, without waiting for the end of the body
        self.assertLessEqual(self.refused()["body_bytes_discarded"], 20 * 1024)

    @defer.inlineCallbacks
    def test_chunked_body_within_the_limit_is_read(self):
        client = yield self.connect()
        body = json.dumps({"key": "logs/api-calls", "value": True}).encode("ascii")
        client.transport.write(self.head(length=None) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        yield wait_until(client.has_answer, "the answer")
        code, _, envelope = client.answer()
        self.assertEqual((code, envelope["result"]["value"]), (200, True))
        self.assertTrue(self.node.settings.get("logs/api-calls"))
        self.assertEqual(self.temp_files, [])

    @defer.inlineCallbacks
    def test_large_accepted_body_stays_in_memory(self):
        reply = yield HttpApi(self, self.node).post("event/send/big/v1", data="x" * 500_000)
        self.assertEqual(reply.code, 200, reply.body)
        self.assertEqual(self.temp_files, [])  # a 500 kB body went to a temporary file before

    @defer.inlineCallbacks
    def test_rate_limited_client_is_refused_at_the_headers(self):
        yield HttpApi(self, self.node).post("config/set/v1", key="interface/api/rate-burst", value=1)
        yield HttpApi(self, self.node).post("config/set/v1", key="interface/api/rate-limit", value=0.001)
        yield HttpApi(self, self.node).get("process/health/v1")
        client = yield self.connect()
        client.transport.write(self.head(length=100_000))
        yield wait_until(client.has_answer, "the 429")
        code, headers, _ = client.answer()
        self.assertEqual(code, 429)
        self.assertIn("retry-after", headers)
        self.assertEqual((self.refused()["rate_limited"], self.refused()["refused_at_headers"]), (1, 1))

    @defer.inlineCallbacks
    def test_form_bodies_are_not_parsed_into_parameters(self):
        pending = HttpApi(self, self.node).request(
            "POST", "config/set/v1", raw=b"key=logs/api-calls&value=true",
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        reply = yield pending
        self.assertEqual(reply.code, 400, reply.body)
        self.assertFalse(self.node.settings.get("logs/api-calls"))


class AccessLogTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_secret_in_a_url_is_redacted_from_the_access_log(self):
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        node = yield start_node(self, overrides={"logs/api-calls": True})
        api = HttpApi(self, node)
        reply = yield api.request("GET", "process/health/v1", params={"api_secret": "url-secret-12345"})
        self.assertEqual(reply.code, 200)
        yield wait_until(lambda: any("process/health" in formatEvent(e) for e in events), "the access log line")
        lines = [formatEvent(e) for e in events if "process/health" in formatEvent(e)]
        self.assertIn("api_secret=<redacted>", lines[0])
        self.assertFalse([line for line in lines if "url-secret-12345" in line])
