"""The API load clients of ``make bench``: REST round trips and WebSocket calls per second.

Imported by ``scripts/bench.py`` (not run on its own). Both are single-threaded
selector loops on plain sockets, so the client spends as little CPU per call as
Python allows and the server is what is measured.

:func:`hammer`: HTTP/1.1 GETs over persistent connections, one in flight on each.

:func:`hammer_ws`: a minimal WebSocket client on plain sockets (no autobahn on the client side, so the
client costs little CPU and the node is what is measured): it opens
``connections`` WebSocket connections authenticated with the ``api_secret``
header, keeps ``depth`` ``api_call`` messages in flight on each (a real client
multiplexes calls on one connection by ``call_id``) and counts the answers.
Every answer is checked: its ``call_id`` must be one in flight and its code
200. Client frames are masked (as RFC 6455 requires) with a zero key, which
leaves the payload as it is and saves the client an XOR pass.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field

HEALTH_PATH = "/process/health/v1"
# --- REST -------------------------------------------------------------------------------


def parse_response(buf: bytes | bytearray) -> tuple[int, bytes, int] | None:
    """One HTTP/1.1 response from the start of ``buf``: (status, body, bytes used), or None if incomplete.

    Handles Content-Length and chunked bodies (twisted.web uses chunked when a
    resource writes without a length, as the node's API does).
    """
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = bytes(buf[:head_end]).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    pos = head_end + 4
    if "content-length" in headers:
        end = pos + int(headers["content-length"])
        return (status, bytes(buf[pos:end]), end) if len(buf) >= end else None
    if headers.get("transfer-encoding", "").lower() != "chunked":
        raise ValueError("response without Content-Length or chunked encoding")
    body = bytearray()
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(bytes(buf[pos:line_end]).split(b";", 1)[0], 16)
        start, end = line_end + 2, line_end + 2 + size
        if len(buf) < end + 2:
            return None
        if size == 0:
            # no trailers are sent by twisted.web: the last chunk is "0\r\n\r\n"
            return status, bytes(body), end + 2
        body += buf[start:end]
        pos = end + 2


@dataclass
class LoadResult:
    """The outcome of one burst of requests against one server."""

    requests: int
    seconds: float
    errors: int
    sample: bytes = b""
    statuses: dict = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Round trips per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def _received(sel: selectors.BaseSelector, buffers: dict[socket.socket, bytearray], timeout: float,
              server: str) -> list[tuple[socket.socket, bytearray]]:
    """Wait for bytes on the selector's sockets and append them to their buffers: [(socket, its buffer)].

    TimeoutError when nothing comes within ``timeout``, ConnectionError when ``server`` closes a connection.
    """
    events = sel.select(timeout)
    if not events:
        raise TimeoutError(f"no answer from {server} within {timeout}s")
    ready = []
    for key, _ in events:
        sock = key.fileobj
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"{server} closed the connection")
        buffers[sock] += data
        ready.append((sock, buffers[sock]))
    return ready


def hammer(port: int, secret: str, requests: int, concurrency: int, path: str = HEALTH_PATH,
           timeout: float = 30.0) -> LoadResult:
    """Send ``requests`` GETs over ``concurrency`` persistent connections, one in flight on each.

    A single thread with a selector, so the client spends as little CPU per
    request as Python allows and the server is what is measured.
    """
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\napi_secret: {secret}\r\n"
               "Accept: application/json\r\n\r\n").encode("ascii")
    sel = selectors.DefaultSelector()
    socks = []
    buffers: dict[socket.socket, bytearray] = {}
    sent = done = errors = 0
    sample = b""
    statuses: dict[int, int] = {}
    try:
        for _ in range(max(1, min(concurrency, requests))):
            sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            socks.append(sock)
            buffers[sock] = bytearray()
            sel.register(sock, selectors.EVENT_READ)
        start = time.perf_counter()
        for sock in socks:
            sock.sendall(request)
            sent += 1
        while done < requests:
            for sock, buf in _received(sel, buffers, timeout, f"the HTTP server on port {port}"):
                parsed = parse_response(buf)
                if parsed is None:
                    continue
                status, body, used = parsed
                del buf[:used]
                done += 1
                statuses[status] = statuses.get(status, 0) + 1
                if status != 200:
                    errors += 1
                if not sample:
                    sample = body
                if sent < requests:
                    sock.sendall(request)
                    sent += 1
        seconds = time.perf_counter() - start
    finally:
        sel.close()
        for sock in socks:
            sock.close()
    return LoadResult(requests, seconds, errors, sample, statuses)



# --- WebSocket --------------------------------------------------------------------------

_OP_TEXT = 0x1
_OP_CLOSE = 0x8
_OP_PING = 0x9


def client_frame(payload: bytes, opcode: int = _OP_TEXT) -> bytes:
    """One final, masked client frame (mask key zero: the masked payload is the payload)."""
    length = len(payload)
    if length < 126:
        head = struct.pack(">BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, length)
    return head + b"\0\0\0\0" + payload


def parse_server_frame(buf: bytes | bytearray) -> tuple[int, bytes, int] | None:
    """(opcode, payload, bytes used) of one unmasked server frame at the start of ``buf``, or None if incomplete."""
    if len(buf) < 2:
        return None
    first, second = buf[0], buf[1]
    if not first & 0x80:
        raise ValueError("fragmented server frames are not expected for API answers")
    if second & 0x80:
        raise ValueError("a server frame must not be masked")
    length, pos = second & 0x7F, 2
    if length == 126:
        if len(buf) < 4:
            return None
        (length,) = struct.unpack_from(">H", buf, 2)
        pos = 4
    elif length == 127:
        if len(buf) < 10:
            return None
        (length,) = struct.unpack_from(">Q", buf, 2)
        pos = 10
    if len(buf) < pos + length:
        return None
    return first & 0x0F, bytes(buf[pos:pos + length]), pos + length


def handshake(port: int, secret: str, timeout: float = 30.0) -> socket.socket:
    """Open one WebSocket connection to 127.0.0.1:``port`` authenticated by the ``api_secret`` header."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\napi_secret: {secret}\r\n\r\n")
                 .encode("ascii"))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"WebSocket on port {port} closed during the handshake")
        head += chunk
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        sock.close()
        raise ConnectionError(f"WebSocket handshake refused: {status.decode('latin-1')}")
    if head.index(b"\r\n\r\n") + 4 != len(head):
        sock.close()
        raise ConnectionError("unexpected bytes after the WebSocket handshake")
    return sock


@dataclass
class WsResult:
    """The outcome of one burst of WebSocket API calls."""

    calls: int
    seconds: float
    errors: int
    sample: bytes = b""

    @property
    def rate(self) -> float:
        """Answered calls per second."""
        return self.calls / self.seconds if self.seconds > 0 else 0.0


def hammer_ws(port: int, secret: str, calls: int, connections: int = 4, depth: int = 8,
              method: str = "process_health", timeout: float = 30.0) -> WsResult:
    """Make ``calls`` API calls of ``method`` over ``connections`` WebSockets, ``depth`` in flight on each."""
    socks = [handshake(port, secret, timeout) for _ in range(max(1, connections))]
    sel = selectors.DefaultSelector()
    buffers: dict[socket.socket, bytearray] = {}
    in_flight: dict[socket.socket, set[int]] = {}
    sent = done = errors = 0
    sample = b""

    def send_one(sock: socket.socket) -> None:
        nonlocal sent
        message = json.dumps({"command": "api_call", "method": method, "kwargs": {}, "call_id": sent})
        sock.sendall(client_frame(message.encode("utf-8")))
        in_flight[sock].add(sent)
        sent += 1

    try:
        for sock in socks:
            sock.setblocking(True)
            buffers[sock] = bytearray()
            in_flight[sock] = set()
            sel.register(sock, selectors.EVENT_READ)
        start = time.perf_counter()
        for sock in socks:
            for _ in range(depth):
                if sent < calls:
                    send_one(sock)
        while done < calls:
            for sock, buf in _received(sel, buffers, timeout, f"the WebSocket server on port {port}"):
                while True:
                    frame = parse_server_frame(buf)
                    if frame is None:
                        break
                    opcode, payload, used = frame
                    del buf[:used]
                    if opcode == _OP_CLOSE:
                        raise ConnectionError(f"WebSocket closed by the node: {payload[2:]!r}")
                    if opcode == _OP_PING:
                        sock.sendall(client_frame(payload, 0xA))
                        continue
                    message = json.loads(payload)
                    if message.get("type") != "api_call":
                        continue  # a pushed event: not an answer
                    call_id = message.get("call_id")
                    if call_id not in in_flight[sock]:
                        raise ValueError(f"answer to a call that is not in flight: {call_id!r}")
                    in_flight[sock].discard(call_id)
                    done += 1
                    if message.get("code") != 200:
                        errors += 1
                    if not sample:
                        sample = payload
                    if sent < calls:
                        send_one(sock)
        seconds = time.perf_counter() - start
    finally:
        sel.close()
        for sock in socks:
            sock.close()
    return WsResult(calls, seconds, errors, sample)
