"""What a routed node and its router say to each other (payloads of ``RequestService`` and its ``Ack``).

Format version 1, JSON (:func:`proxy_request`, :func:`parse_proxy_request`)::

    RequestService  {"version": 1, "service": "service_proxy_server", "action": A, ...}
        action "route":  route my packets through you (again: a keep-alive, or after reconnecting);
                         answered Ack {"accepted": true, "router": <global id>, "contact": "tcp://..."}
        action "leave":  stop routing me; answered Ack {"left": true}
        action "probe", "port": P:  can you connect to me?  The router dials the address the request came
                         from, port P, and sends the Ack (same packet id) on that new connection:
                         {"probe": "dialled"}; if it cannot connect it answers Fail "unreachable: ...".

Every refusal is a ``Fail`` with a reason text.  Routers advertise themselves
by joining the DHT layer :data:`ROUTERS_LAYER`; a node looking for one picks
random members there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bitnode import boundedjson
from bitnode.errors import BadRequest
from bitnode.transport.commands import Command

VERSION = 1
#: The service name a proxy request carries (BitDust's name for a router).
PROXY_SERVICE = "service_proxy_server"
#: The DHT layer routers join (layer 0 is everyone, 1 the suppliers).
ROUTERS_LAYER = 2
ACTIONS = ("route", "leave", "probe")
#: Larger than any proxy request; a bigger RequestService payload is not one.
MAX_REQUEST = 1024


@dataclass(frozen=True)
class ProxyRequest:
    """A parsed proxy request: the action, and the port to dial back for a probe."""

    action: str
    port: int = 0


def proxy_request(action: str, port: int = 0) -> bytes:
    """The ``RequestService`` payload for ``action``."""
    if action not in ACTIONS:
        raise BadRequest(f"unknown proxy action {action!r}")
    body: dict[str, Any] = {"version": VERSION, "service": PROXY_SERVICE, "action": action}
    if action == "probe":
        body["port"] = _port(port)
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")


def parse_proxy_request(payload: bytes) -> ProxyRequest:
    """The request in a ``RequestService`` payload; BadRequest when it is not a valid proxy request."""
    if len(payload) > MAX_REQUEST:
        raise BadRequest("proxy request too large")
    body = boundedjson.loads(payload, "proxy request", max_depth=2, max_bytes=MAX_REQUEST)
    if not isinstance(body, dict) or body.get("service") != PROXY_SERVICE:
        raise BadRequest("not a proxy request")
    if body.get("version") != VERSION:
        raise BadRequest(f"proxy request version {body.get('version')!r} is not supported")
    action = body.get("action")
    if action not in ACTIONS:
        raise BadRequest(f"unknown proxy action {action!r}")
    return ProxyRequest(action, _port(body.get("port")) if action == "probe" else 0)


def is_proxy_request(packet: Any) -> bool:
    """Whether a ``RequestService`` packet is for the router (the packet router's ``accepts``)."""
    if packet.command != Command.REQUEST_SERVICE.value or PROXY_SERVICE.encode("ascii") not in packet.payload:
        return False
    try:
        parse_proxy_request(packet.payload)
    except BadRequest:
        return False
    return True


def encode_answer(body: dict) -> bytes:
    """An ``Ack`` payload."""
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")


def decode_answer(payload: bytes) -> dict:
    """An ``Ack`` payload as a dict; BadRequest when it is not a JSON object."""
    body = boundedjson.loads(payload, "proxy answer", max_depth=2, max_bytes=4 * MAX_REQUEST)
    if not isinstance(body, dict):
        raise BadRequest("proxy answer is not a JSON object")
    return body


def _port(value: Any) -> int:
    if type(value) is not int or not 0 < value < 65536:
        raise BadRequest(f"bad port {value!r}")
    return value
