"""STUN (RFC 5389) Binding: a small UDP server and a client, to learn one's address as others see it.

Only what a node needs: the Binding request (class request, method 0x001) and
its success response carrying XOR-MAPPED-ADDRESS (and the classic
MAPPED-ADDRESS for old clients), IPv4. A datagram that is not a well-formed
Binding request (wrong length, wrong magic cookie, a response, a truncated
attribute) is ignored and counted, never answered and never fatal.

Message layout (big-endian)::

    u16 type | u16 length of attributes | u32 magic cookie 0x2112A442 | 12-byte transaction id
    attributes: u16 type | u16 length | value, padded to 4 bytes
"""

from __future__ import annotations

import ipaddress
import os
import struct
from collections import Counter

from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol

from bitnode.errors import BadRequest, Timeout

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ATTR_MAPPED_ADDRESS = 0x0001
ATTR_XOR_MAPPED_ADDRESS = 0x0020
HEADER = struct.Struct(">HHI12s")
MAX_DATAGRAM = 548  # the RFC's safe size; anything bigger is not ours


def binding_request(transaction_id: bytes | None = None) -> tuple[bytes, bytes]:
    """A Binding request and its transaction id."""
    tid = transaction_id if transaction_id is not None else os.urandom(12)
    if len(tid) != 12:
        raise BadRequest("a STUN transaction id has 12 bytes")
    return HEADER.pack(BINDING_REQUEST, 0, MAGIC_COOKIE, tid), tid


def _address_attribute(kind: int, host: str, port: int, xor: bool) -> bytes:
    ip = int(ipaddress.IPv4Address(host))
    if xor:
        port ^= MAGIC_COOKIE >> 16
        ip ^= MAGIC_COOKIE
    value = struct.pack(">BBHI", 0, 0x01, port, ip)
    return struct.pack(">HH", kind, len(value)) + value


def binding_response(transaction_id: bytes, host: str, port: int) -> bytes:
    """The success response telling the requester its address ``host:port``."""
    body = (_address_attribute(ATTR_XOR_MAPPED_ADDRESS, host, port, True)
            + _address_attribute(ATTR_MAPPED_ADDRESS, host, port, False))
    return HEADER.pack(BINDING_SUCCESS, len(body), MAGIC_COOKIE, transaction_id) + body


def parse_header(data: bytes) -> tuple[int, bytes, bytes]:
    """(type, transaction id, attributes) of a STUN message; BadRequest when it is not one."""
    if len(data) < HEADER.size or len(data) > MAX_DATAGRAM:
        raise BadRequest("not a STUN message: bad size")
    kind, length, cookie, tid = HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE or kind & 0xC000 or length % 4 or HEADER.size + length != len(data):
        raise BadRequest("not a STUN message: bad header")
    return kind, tid, data[HEADER.size:]


def parse_attributes(body: bytes) -> dict[int, bytes]:
    """Attribute type → value; BadRequest when one runs past the end."""
    out: dict[int, bytes] = {}
    offset = 0
    while offset < len(body):
        if offset + 4 > len(body):
            raise BadRequest("truncated STUN attribute header")
        kind, length = struct.unpack_from(">HH", body, offset)
        start, end = offset + 4, offset + 4 + length
        if end > len(body):
            raise BadRequest("truncated STUN attribute")
        out.setdefault(kind, body[start:end])
        offset = start + ((length + 3) & ~3)
    return out


def parse_mapped_address(attributes: dict[int, bytes]) -> tuple[str, int]:
    """The address a Binding response reports (XOR-MAPPED-ADDRESS preferred)."""
    for kind, xor in ((ATTR_XOR_MAPPED_ADDRESS, True), (ATTR_MAPPED_ADDRESS, False)):
        value = attributes.get(kind)
        if value is None:
            continue
        if len(value) != 8 or value[1] != 0x01:
            raise BadRequest("STUN address is not IPv4")
        _zero, _family, port, ip = struct.unpack(">BBHI", value)
        if xor:
            port ^= MAGIC_COOKIE >> 16
            ip ^= MAGIC_COOKIE
        return str(ipaddress.IPv4Address(ip)), port
    raise BadRequest("STUN response has no mapped address")


class StunServer(DatagramProtocol):
    """Answers Binding requests with the address they came from."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        """One request in, one response out; anything else is counted and dropped."""
        try:
            kind, tid, body = parse_header(data)
            parse_attributes(body)
            if kind != BINDING_REQUEST:
                raise BadRequest("not a Binding request")
            response = binding_response(tid, addr[0], addr[1])
        except (BadRequest, ValueError):
            self.counters["ignored"] += 1
            return
        self.counters["answered"] += 1
        self.transport.write(response, addr)


class StunClient(DatagramProtocol):
    """Sends Binding requests from one local UDP port and matches the answers."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self._waiting: dict[bytes, defer.Deferred] = {}
        self.counters: Counter[str] = Counter()

    def query(self, server: tuple[str, int], timeout: float = 3.0, retries: int = 2) -> defer.Deferred:
        """Fires with ``(host, port)`` as ``server`` sees us; Timeout after ``retries`` extra tries."""
        return defer.ensureDeferred(self._query(server, timeout, retries))

    async def _query(self, server: tuple[str, int], timeout: float, retries: int) -> tuple[str, int]:
        for _attempt in range(retries + 1):
            request, tid = binding_request()
            d = defer.Deferred()
            self._waiting[tid] = d
            d.addTimeout(timeout, self.clock)
            self.transport.write(request, server)
            try:
                return await d
            except defer.TimeoutError:
                continue
            finally:
                self._waiting.pop(tid, None)
        raise Timeout(f"no STUN answer from {server[0]}:{server[1]}")

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        """Match a response to its request; ignore the rest."""
        try:
            kind, tid, body = parse_header(data)
            if kind != BINDING_SUCCESS or tid not in self._waiting:
                raise BadRequest("unexpected STUN message")
            mapped = parse_mapped_address(parse_attributes(body))
        except (BadRequest, ValueError):
            self.counters["ignored"] += 1
            return
        self._waiting.pop(tid).callback(mapped)
