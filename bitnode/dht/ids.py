"""Node ids, key hashing, XOR distance and the contact value of the DHT.

Ids are **256-bit** integers. Node ids are drawn from the node's injected
``random.Random``; record keys (namespaced strings such as ``nickname:alice``)
are mapped to ids with SHA-256 of their UTF-8 bytes. 256 bits (rather than the
paper's 160) lets us use SHA-256 everywhere and never SHA-1. On the wire an id
is 64 lowercase hex characters.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import re
from dataclasses import dataclass, field
from typing import Any

from bitnode.errors import BadRequest

ID_BITS = 256
ID_HEX_LEN = ID_BITS // 4
ID_SPACE = 1 << ID_BITS

MAX_HOST_LEN = 255
MAX_USER_LEN = 200
MAX_LAYERS = 16
MAX_LAYER_ID = (1 << 31) - 1

_ID_HEX = re.compile(f"[0-9a-f]{{{ID_HEX_LEN}}}")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
#: a canonical dotted-quad IPv4 address (what ``ipaddress`` accepts); others go the slow way
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def key_to_id(key: str) -> int:
    """Map a record key (a namespaced string) to its 256-bit id."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest(), "big")


def random_id(rng: random.Random) -> int:
    """A uniformly random id drawn from ``rng``."""
    return rng.getrandbits(ID_BITS)


def random_id_in_range(lo: int, hi: int, rng: random.Random) -> int:
    """A random id in ``[lo, hi)``."""
    if not 0 <= lo < hi <= ID_SPACE:
        raise BadRequest(f"bad id range [{lo:x}, {hi:x})")
    return lo + rng.randrange(hi - lo)


def distance(a: int, b: int) -> int:
    """Kademlia XOR distance between two ids."""
    return a ^ b


def bucket_index(own: int, other: int) -> int:
    """Index ``i`` such that ``2**i <= own ^ other < 2**(i+1)``; the length of the shared prefix is 255-i."""
    if own == other:
        raise BadRequest("an id has no bucket index relative to itself")
    return (own ^ other).bit_length() - 1


def id_to_hex(node_id: int) -> str:
    """Wire form of an id: 64 lowercase hex characters."""
    return format(node_id, f"0{ID_HEX_LEN}x")


def id_from_hex(text: Any) -> int:
    """Parse the wire form of an id strictly (exact length, lowercase hex)."""
    if not isinstance(text, str) or not _ID_HEX.fullmatch(text):
        raise BadRequest("node id must be 64 lowercase hex characters")
    return int(text, 16)


def check_layer_id(layer_id: Any) -> int:
    """Validate a layer id (a non-negative int) and return it."""
    if type(layer_id) is not int or not 0 <= layer_id <= MAX_LAYER_ID:
        raise BadRequest(f"bad layer id: {layer_id!r}")
    return layer_id


def check_layers(layers: Any) -> tuple[int, ...]:
    """Validate a list of layer ids; returns them sorted and de-duplicated, always with layer 0."""
    if not isinstance(layers, (list, tuple)) or len(layers) > MAX_LAYERS:
        raise BadRequest("layers must be a list of at most 16 layer ids")
    return tuple(sorted({0, *(check_layer_id(x) for x in layers)}))


def check_user(user: Any) -> str:
    """Validate the opaque application text carried by a contact."""
    if not isinstance(user, str) or len(user) > MAX_USER_LEN:
        raise BadRequest(f"user must be a string of at most {MAX_USER_LEN} characters")
    return user


@dataclass(frozen=True)
class Contact:
    """A peer as we know it: id, UDP address, the layers it advertised and its opaque ``user`` text.

    Equality and hashing use the id and the address only.
    """

    node_id: int
    host: str
    port: int
    user: str = field(default="", compare=False)
    layers: tuple[int, ...] = field(default=(0,), compare=False)

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` to send datagrams to."""
        return (self.host, self.port)

    def in_layer(self, layer_id: int) -> bool:
        """True if this contact advertised membership of ``layer_id`` (everyone is in layer 0)."""
        return layer_id == 0 or layer_id in self.layers

    def to_dict(self) -> dict:
        """JSON-safe form, as sent on the wire and returned by the public API."""
        return {
            "id": id_to_hex(self.node_id),
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "layers": list(self.layers),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Contact:
        """Parse and validate the wire form; raises :class:`BadRequest`."""
        if not isinstance(data, dict):
            raise BadRequest("contact must be an object")
        host = data.get("host")
        port = data.get("port")
        if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST_LEN:
            raise BadRequest("contact host must be a non-empty string")
        if not _IPV4.fullmatch(host):  # a parse per contact is costly: the common case by a regex
            try:
                ipaddress.ip_address(host)  # contacts come from datagram source addresses: never names
            except ValueError:
                raise BadRequest("contact host must be an IP address") from None
        if type(port) is not int or not 0 < port < 65536:
            raise BadRequest("contact port must be an int in 1..65535")
        return cls(
            node_id=id_from_hex(data.get("id")),
            host=host,
            port=port,
            user=check_user(data.get("user", "")),
            layers=check_layers(data.get("layers", [0])),
        )
