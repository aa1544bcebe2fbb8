"""User, key and path names: IDURL, global id, key id, remote path.

The forms, all canonical (lowercase host, no default port):

=============  ==========================================  =========================
IDURL          ``http://host[:port]/name.xml``             ``http://id.net:8084/alice.xml``
global id      ``name@host[_port]``                        ``alice@id.net_8084``
key id         ``alias$name@host[_port]``                  ``master$alice@id.net_8084``
remote path    ``key_id:path``                             ``master$alice@id.net_8084:docs/a.txt``
=============  ==========================================  =========================

The port is omitted when it is 80, in both IDURL and global id, so the two map
one-to-one. Only ``http`` IDURLs exist (a global id does not carry a scheme).
Hosts are DNS names or dotted IPv4 addresses (no ``_`` is possible in either,
which is what makes ``host_port`` unambiguous); IPv6 literals are not
supported. Every parser raises :class:`~bitnode.errors.BadRequest` with the
reason; the ``parse_*`` functions accept a non-canonical IDURL spelling
(``HTTP://Host:80/x.xml``) and return the canonical value, ``is_canonical_idurl``
tells them apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bitnode.errors import BadRequest

DEFAULT_PORT = 80
MAX_NAME = 64
MAX_ALIAS = 64
MAX_HOST = 253
MAX_PATH = 4096

_NAME_RE = re.compile(r"[a-z][a-z0-9_-]*\Z")
_ALIAS_RE = re.compile(r"[a-z0-9_-]+\Z")
_LABEL_RE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?\Z")
_IPV4_RE = re.compile(r"\d{1,3}(\.\d{1,3}){3}\Z")
_PORT_RE = re.compile(r"[1-9][0-9]{0,4}\Z")
_IDURL_RE = re.compile(r"(?i:http)://([^/:?#@]+)(?::([^/]*))?/([^/?#]*)\Z")


def _validate_word(value: str, what: str, limit: int, pattern: re.Pattern, rule: str) -> str:
    """``value`` if it is a non-empty string of at most ``limit`` characters matching ``pattern``."""
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{what} is empty")
    if len(value) > limit:
        raise BadRequest(f"{what} is longer than {limit} characters")
    if not pattern.match(value):
        raise BadRequest(f"{what} {value!r} {rule}")
    return value


def validate_name(name: str) -> str:
    """A user name: ``[a-z][a-z0-9_-]*``, at most 64 characters."""
    return _validate_word(name, "user name", MAX_NAME, _NAME_RE,
                          "must start with a-z and use only a-z, 0-9, '_' and '-'")


def validate_alias(alias: str) -> str:
    """A key alias: ``[a-z0-9_-]+``, at most 64 characters."""
    return _validate_word(alias, "key alias", MAX_ALIAS, _ALIAS_RE, "may use only a-z, 0-9, '_' and '-'")


def validate_host(host: str) -> str:
    """A lowercase DNS name or dotted IPv4 address; returns it unchanged."""
    if not isinstance(host, str) or not host:
        raise BadRequest("host is empty")
    if len(host) > MAX_HOST:
        raise BadRequest("host name is too long")
    if _IPV4_RE.match(host):
        if any(int(part) > 255 or (len(part) > 1 and part[0] == "0") for part in host.split(".")):
            raise BadRequest(f"bad IPv4 address {host!r}")
        return host
    labels = host.split(".")
    for label in labels:
        if not label or len(label) > 63 or not _LABEL_RE.match(label):
            raise BadRequest(f"bad host name {host!r}")
    if labels[-1].isdigit():
        raise BadRequest(f"bad host name {host!r}")
    return host


def validate_port(port: int) -> int:
    """A TCP/UDP port number 1..65535."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BadRequest(f"bad port {port!r}")
    return port


def _parse_port(text: str) -> int:
    if not _PORT_RE.match(text):
        raise BadRequest(f"bad port {text!r}")
    return validate_port(int(text))


@dataclass(frozen=True)
class _UserAt:
    """A user name at a host and port, checked on creation; the base of GlobalId and IdUrl.

    The two spell the same user differently and never compare equal.
    """

    name: str
    host: str
    port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        validate_name(self.name)
        validate_host(self.host)
        validate_port(self.port)

    def _port_text(self, separator: str) -> str:
        """``separator`` and the port, or nothing for the default port (both forms omit it)."""
        return "" if self.port == DEFAULT_PORT else f"{separator}{self.port}"


@dataclass(frozen=True)
class GlobalId(_UserAt):
    """A user: ``name@host[_port]``."""

    @classmethod
    def parse(cls, text: str) -> GlobalId:
        """Parse ``name@host`` or ``name@host_port`` (strict, lowercase)."""
        if not isinstance(text, str):
            raise BadRequest("global id must be text")
        name, sep, hostport = text.partition("@")
        if not sep:
            raise BadRequest(f"global id {text!r} has no '@'")
        host, sep, port_text = hostport.partition("_")
        if sep:
            port = _parse_port(port_text)
            if port == DEFAULT_PORT:
                raise BadRequest(f"global id {text!r} must omit the default port")
        else:
            port = DEFAULT_PORT
        return cls(name, host, port)

    @property
    def idurl(self) -> IdUrl:
        """The matching IDURL."""
        return IdUrl(self.name, self.host, self.port)

    def __str__(self) -> str:
        return f"{self.name}@{self.host}{self._port_text('_')}"


@dataclass(frozen=True)
class IdUrl(_UserAt):
    """An identity document address: ``http://host[:port]/name.xml``."""

    @classmethod
    def parse(cls, text: str) -> IdUrl:
        """Parse an IDURL; scheme and host case and an explicit ``:80`` are normalised."""
        if not isinstance(text, str):
            raise BadRequest("IDURL must be text")
        if len(text) > 1024:
            raise BadRequest("IDURL is too long")
        match = _IDURL_RE.match(text)
        if not match:
            raise BadRequest(f"IDURL {text!r} is not of the form http://host[:port]/name.xml")
        host, port_text, filename = match.groups()
        port = DEFAULT_PORT if port_text is None else _parse_port(port_text)
        if not filename.endswith(".xml"):
            raise BadRequest(f"IDURL {text!r} must end with '<name>.xml'")
        return cls(filename[: -len(".xml")], host.lower(), port)

    @property
    def global_id(self) -> GlobalId:
        """The matching global id."""
        return GlobalId(self.name, self.host, self.port)

    def __str__(self) -> str:
        return f"http://{self.host}{self._port_text(':')}/{self.name}.xml"


@dataclass(frozen=True)
class KeyId:
    """A key: ``alias$name@host[_port]``."""

    alias: str
    owner: GlobalId

    def __post_init__(self) -> None:
        validate_alias(self.alias)
        if not isinstance(self.owner, GlobalId):
            raise BadRequest("key owner must be a global id")

    @classmethod
    def parse(cls, text: str) -> KeyId:
        """Parse ``alias$name@host[_port]``; the alias is required."""
        if not isinstance(text, str):
            raise BadRequest("key id must be text")
        alias, sep, owner = text.partition("$")
        if not sep:
            raise BadRequest(f"key id {text!r} has no '$' (expected alias$user@host)")
        return cls(alias, GlobalId.parse(owner))

    def __str__(self) -> str:
        return f"{self.alias}${self.owner}"


def validate_path(path: str) -> str:
    """A remote path: relative, '/'-separated, no empty, '.' or '..' parts, no control chars.

    The empty path means the root.
    """
    if not isinstance(path, str):
        raise BadRequest("path must be text")
    if len(path) > MAX_PATH:
        raise BadRequest("path is too long")
    if path == "":
        return path
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise BadRequest("path contains control characters")
    if "\\" in path:
        raise BadRequest("path must use '/' as separator")
    if path.startswith("/"):
        raise BadRequest("path must be relative")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise BadRequest(f"path {path!r} has an empty, '.' or '..' component")
    return path


@dataclass(frozen=True)
class RemotePath:
    """A file or folder of a key's catalog: ``key_id:path``."""

    key_id: KeyId
    path: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.key_id, KeyId):
            raise BadRequest("remote path needs a key id")
        validate_path(self.path)

    @classmethod
    def parse(cls, text: str) -> RemotePath:
        """Parse ``alias$name@host[_port]:path`` (the ``:`` is required, the path may be empty)."""
        if not isinstance(text, str):
            raise BadRequest("remote path must be text")
        key_text, sep, path = text.partition(":")
        if not sep:
            raise BadRequest(f"remote path {text!r} has no ':' after the key id")
        return cls(KeyId.parse(key_text), path)

    def __str__(self) -> str:
        return f"{self.key_id}:{self.path}"


def parse_idurl(text: str) -> IdUrl:
    """Parse an IDURL (see :meth:`IdUrl.parse`)."""
    return IdUrl.parse(text)


def parse_global_id(text: str) -> GlobalId:
    """Parse a global id (see :meth:`GlobalId.parse`)."""
    return GlobalId.parse(text)


def parse_key_id(text: str) -> KeyId:
    """Parse a key id (see :meth:`KeyId.parse`)."""
    return KeyId.parse(text)


def parse_remote_path(text: str) -> RemotePath:
    """Parse a remote path (see :meth:`RemotePath.parse`)."""
    return RemotePath.parse(text)


def is_canonical_idurl(text: str) -> bool:
    """True when ``text`` parses and is already in canonical form."""
    try:
        return str(IdUrl.parse(text)) == text
    except BadRequest:
        return False


def idurl_to_global_id(idurl: str) -> str:
    """``http://id.net:8084/alice.xml`` -> ``alice@id.net_8084``."""
    return str(IdUrl.parse(idurl).global_id)


def global_id_to_idurl(global_id: str) -> str:
    """``alice@id.net_8084`` -> ``http://id.net:8084/alice.xml``."""
    return str(GlobalId.parse(global_id).idurl)


def make_key_id(alias: str, owner: str | GlobalId) -> str:
    """``make_key_id("share1", "alice@id.net")`` -> ``share1$alice@id.net``."""
    if isinstance(owner, str):
        owner = GlobalId.parse(owner)
    return str(KeyId(alias, owner))


def to_global_id(idurl_or_global_id: str) -> GlobalId:
    """Accept either an IDURL or a global id and return the global id."""
    if not isinstance(idurl_or_global_id, str):
        raise BadRequest("expected an IDURL or a global id")
    if "://" in idurl_or_global_id:
        return IdUrl.parse(idurl_or_global_id).global_id
    return GlobalId.parse(idurl_or_global_id)
