"""The network a node joins: its seed nodes, identity servers and STUN servers, in one file.

A network file is JSON (format version 1)::

    {"version": 1,
     "name": "bitnode",
     "identity-servers": ["id1.example.net:8084", "id2.example.net:8084"],
     "seeds": ["seed1.example.net:14441"],
     "stun-servers": ["stun1.example.net:3478"]}

Every entry is ``host:port`` (a lowercase DNS name or dotted IPv4 address).
``name`` is free text for people; the lists may be empty (the shipped file
for the public network has empty placeholders until public servers exist).

A node reads ``basedir/config/network.json`` when it exists (``bitnode start
--network FILE`` installs one there; ``bitnode localnet`` writes its own), else
the file shipped with bitnode (:func:`shipped_path`). The lists become the
*defaults* of three settings (:data:`SETTING_KEYS`): a setting the user set
explicitly wins over the network file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from bitnode import boundedjson, globalid
from bitnode.errors import BadRequest
from bitnode.main.fileutil import atomic_write, read_limited

NETWORK_FORMAT = 1
MAX_FILE_BYTES = 64 * 1024
MAX_ENTRIES = 64
MAX_NAME = 100
FILE_NAME = "network.json"
SHIPPED_FILE = "default_network.json"

#: Which list of the file is the default of which setting.
SETTING_KEYS = {
    "identity-servers": "personal/identity-servers",
    "seeds": "services/entangled-dht/known-nodes",
    "stun-servers": "services/stun-client/servers",
}
_KEYS = frozenset({"version", "name"} | set(SETTING_KEYS))


class BadNetworkFile(BadRequest):
    """A network file that cannot be used; the message says which entry and why."""


def parse_host_port(text: str, what: str = "address") -> tuple[str, int]:
    """``host:port`` -> (host, port); :class:`BadNetworkFile` when it is not one (the port is required)."""
    if not isinstance(text, str):
        raise BadNetworkFile(f"{what} must be text 'host:port'")
    host, sep, port_text = text.strip().rpartition(":")
    try:
        if not sep or not port_text.isdigit() or port_text != str(int(port_text)):
            raise BadRequest("no port")
        globalid.validate_host(host)
        port = globalid.validate_port(int(port_text))
    except BadRequest:
        raise BadNetworkFile(f"{what} {text!r} is not of the form host:port") from None
    return host, port


@dataclass(frozen=True)
class NetworkFile:
    """A parsed, validated network file; ``path`` says where it was read from ("" if built in memory)."""

    name: str = ""
    identity_servers: tuple[str, ...] = ()
    seeds: tuple[str, ...] = ()
    stun_servers: tuple[str, ...] = ()
    path: str = ""

    def lists(self) -> dict[str, tuple[str, ...]]:
        """The three lists by their key in the file."""
        return {"identity-servers": self.identity_servers, "seeds": self.seeds, "stun-servers": self.stun_servers}

    def setting_defaults(self) -> dict[str, list[str]]:
        """Setting key -> list: what this network makes the default of each setting."""
        return {SETTING_KEYS[key]: list(values) for key, values in self.lists().items()}

    def to_json(self) -> bytes:
        """The file's bytes (canonical: sorted keys, one entry per line)."""
        data = {"version": NETWORK_FORMAT, "name": self.name, **{k: list(v) for k, v in self.lists().items()}}
        return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8")

    def describe(self) -> dict:
        """The API shape: name, the lists, and where the file was read from."""
        return {"name": self.name, "file": self.path, **{k: list(v) for k, v in self.lists().items()}}


def parse(data: bytes, path: str = "") -> NetworkFile:
    """Validate a network file's bytes; :class:`BadNetworkFile` with the reason."""
    try:
        doc = boundedjson.loads(data, "network file", max_depth=4, max_bytes=MAX_FILE_BYTES)
    except BadRequest as err:
        raise BadNetworkFile(str(err)) from None
    if not isinstance(doc, dict):
        raise BadNetworkFile("a network file is a JSON object")
    unknown = sorted(set(doc) - _KEYS)
    if unknown:
        raise BadNetworkFile(f"unknown key(s) in the network file: {', '.join(unknown)}")
    if doc.get("version") != NETWORK_FORMAT:
        raise BadNetworkFile(f"network file version must be {NETWORK_FORMAT}, got {doc.get('version')!r}")
    name = doc.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME or any(ord(ch) < 32 for ch in name):
        raise BadNetworkFile(f"network name must be text of at most {MAX_NAME} printable characters")
    lists: dict[str, tuple[str, ...]] = {}
    for key in SETTING_KEYS:
        values = doc.get(key, [])
        if not isinstance(values, list):
            raise BadNetworkFile(f"{key} must be a list of 'host:port'")
        if len(values) > MAX_ENTRIES:
            raise BadNetworkFile(f"{key} lists more than {MAX_ENTRIES} entries")
        seen: list[str] = []
        for value in values:
            host, port = parse_host_port(value, f"{key} entry")
            canonical = f"{host}:{port}"
            if canonical not in seen:
                seen.append(canonical)
        lists[key] = tuple(seen)
    return NetworkFile(name, lists["identity-servers"], lists["seeds"], lists["stun-servers"], path)


def load(path: str) -> NetworkFile:
    """Read and validate the network file at ``path``; OSError when it cannot be read."""
    return parse(read_limited(path, MAX_FILE_BYTES), os.path.abspath(path))


def shipped_path() -> str:
    """The network file shipped with bitnode (the public network)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), SHIPPED_FILE)


def installed_path(config_dir: str) -> str:
    """Where a node's own network file lives (``basedir/config/network.json``)."""
    return os.path.join(config_dir, FILE_NAME)


def for_node(config_dir: str) -> NetworkFile:
    """The node's network: its installed file, else the shipped one. BadNetworkFile/OSError if unusable."""
    path = installed_path(config_dir)
    if not os.path.exists(path):
        path = shipped_path()
    try:
        return load(path)
    except OSError as err:
        raise BadNetworkFile(f"cannot read the network file {path}: {err.strerror or err}") from None
    except BadNetworkFile as err:
        raise BadNetworkFile(f"{path}: {err}") from None


def install(config_dir: str, source: str | NetworkFile) -> NetworkFile:
    """Validate ``source`` (a path, or a NetworkFile) and write it as the node's network file (atomic)."""
    if isinstance(source, NetworkFile):
        network = source
    else:
        try:
            network = load(source)
        except OSError as err:
            raise BadNetworkFile(f"cannot read the network file {source}: {err.strerror or err}") from None
    os.makedirs(config_dir, mode=0o700, exist_ok=True)
    target = installed_path(config_dir)
    atomic_write(target, network.to_json(), mode=0o600)
    return NetworkFile(network.name, network.identity_servers, network.seeds, network.stun_servers, target)
