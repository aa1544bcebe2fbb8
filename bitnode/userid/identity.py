"""The identity document: who a user is, where to reach them, and their keys.

XML form (format version 1; element order as written, whitespace free)::

    <?xml version='1.0' encoding='utf-8'?>
    <identity>
      <version>1</version>
      <name>alice</name>
      <sources><source>http://id.net:8084/alice.xml</source></sources>
      <contacts><contact>tcp://127.0.0.1:7001</contact></contacts>
      <revision>3</revision>
      <date>2024-05-01T12:00:00Z</date>
      <publickey>-----BEGIN PUBLIC KEY-----...</publickey>
      <signingkey>base64 of the raw Ed25519 public key (optional)</signingkey>
      <signature>base64 RSA-PSS/SHA-256 signature</signature>
    </identity>

The signature covers :meth:`Identity.signed_content`, a binary serialization
that does not depend on the XML text at all (indentation, element order, PEM
line wrapping and attribute quoting can change without breaking it)::

    b"bitnode-identity\\n"
    then, for each field in this fixed order:
        field(tag, value) = u8 len(tag) | tag | u32be len(value) | value
        version     "1" (UTF-8)
        name        UTF-8
        sources     u32be count, then each source as u32be length | UTF-8
        contacts    u32be count, then each contact as u32be length | UTF-8
        revision    decimal ASCII
        date        ASCII, YYYY-MM-DDTHH:MM:SSZ
        publickey   the RSA public key's DER (SubjectPublicKeyInfo), not its PEM
        signingkey  the raw 32-byte Ed25519 public key, or empty

(for the two lists the ``u32be len(value)`` is replaced by the count and the
items). Every field is length-prefixed, so no two different documents share a
serialization. The Ed25519 ``signingkey`` is certified by being inside it.

The parser refuses documents over 64 KiB, any DOCTYPE/ENTITY (or other ``<!``
declaration) before expat even sees the text, non-UTF-8 input, unknown,
duplicate or missing fields, attributes, and any value that does not validate.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from bitnode import globalid
from bitnode.crypt import fastsign, keys
from bitnode.crypt.fastsign import Ed25519PublicKey
from bitnode.crypt.keys import RsaPrivateKey, RsaPublicKey
from bitnode.errors import BadRequest

FORMAT_VERSION = "1"
MAX_XML_BYTES = 64 * 1024
MAX_SOURCES = 10
MAX_CONTACTS = 16
MAX_CONTACT_LENGTH = 300
MAX_REVISION = 2**63 - 1
DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_MAGIC = b"bitnode-identity\n"
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
_REVISION_RE = re.compile(r"(0|[1-9][0-9]{0,18})\Z")
_CONTACT_RE = re.compile(r"([a-z][a-z0-9]{0,15})://([^/:@?#]+):([0-9]+)\Z")
_DECLARATION_RE = re.compile(r"<!(?!--)", re.IGNORECASE)
_U32 = struct.Struct(">I")

_SCALAR_TAGS = ("version", "name", "revision", "date", "publickey", "signingkey", "signature")
_LIST_TAGS = {"sources": "source", "contacts": "contact"}
_REQUIRED_TAGS = ("version", "name", "sources", "contacts", "revision", "date", "publickey")


class InvalidIdentity(BadRequest):
    """An identity document (or a value meant for one) is malformed."""


def format_date(now: float) -> str:
    """Seconds since the epoch -> ``YYYY-MM-DDTHH:MM:SSZ`` (UTC)."""
    return datetime.fromtimestamp(int(now), tz=timezone.utc).strftime(DATE_FORMAT)


def parse_date(text: str) -> float:
    """``YYYY-MM-DDTHH:MM:SSZ`` -> seconds since the epoch; :class:`InvalidIdentity` if malformed."""
    if not isinstance(text, str) or not _DATE_RE.match(text):
        raise InvalidIdentity(f"date {text!r} is not of the form YYYY-MM-DDTHH:MM:SSZ")
    try:
        parsed = datetime.strptime(text, DATE_FORMAT)
    except ValueError:
        raise InvalidIdentity(f"date {text!r} is not a valid date") from None
    return parsed.replace(tzinfo=timezone.utc).timestamp()


def validate_contact(contact: str) -> str:
    """A contact: ``proto://host:port`` with a lowercase protocol name."""
    if not isinstance(contact, str) or len(contact) > MAX_CONTACT_LENGTH:
        raise InvalidIdentity("contact is not acceptable text")
    match = _CONTACT_RE.match(contact)
    if not match:
        raise InvalidIdentity(f"contact {contact!r} is not of the form proto://host:port")
    proto, host, port = match.groups()
    globalid.validate_host(host)
    if port != str(int(port)):
        raise InvalidIdentity(f"contact {contact!r} has a badly written port")
    globalid.validate_port(int(port))
    return contact


def _b64decode(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidIdentity(f"{what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise InvalidIdentity(f"{what} is not canonical base64")
    return raw


def _field(tag: str, value: bytes) -> bytes:
    tag_bytes = tag.encode("ascii")
    return bytes([len(tag_bytes)]) + tag_bytes + _U32.pack(len(value)) + value


def _list_field(tag: str, items: tuple[str, ...]) -> bytes:
    tag_bytes = tag.encode("ascii")
    parts = [bytes([len(tag_bytes)]), tag_bytes, _U32.pack(len(items))]
    for item in items:
        encoded = item.encode("utf-8")
        parts.append(_U32.pack(len(encoded)))
        parts.append(encoded)
    return b"".join(parts)


@dataclass(frozen=True)
class Identity:
    """A user's identity document. Validated on construction; immutable.

    ``public_key`` is the RSA public key PEM (stored re-exported, canonical);
    ``signing_key`` the base64 of the raw Ed25519 public key or ``""``;
    ``signature`` the base64 RSA-PSS signature of :meth:`signed_content`, or
    ``""`` for an unsigned document.
    """

    name: str
    sources: tuple[str, ...]
    contacts: tuple[str, ...]
    revision: int
    date: str
    public_key: str
    signing_key: str = ""
    version: str = FORMAT_VERSION
    signature: str = ""
    _rsa: RsaPublicKey = field(init=False, repr=False, compare=False)
    _fast: Ed25519PublicKey | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.version != FORMAT_VERSION:
            raise InvalidIdentity(f"unsupported identity format version {self.version!r}")
        globalid.validate_name(self.name)
        self._set("sources", self._check_sources(self.sources))
        self._set("contacts", self._check_contacts(self.contacts))
        if isinstance(self.revision, bool) or not isinstance(self.revision, int):
            raise InvalidIdentity("revision must be an integer")
        if not 0 <= self.revision <= MAX_REVISION:
            raise InvalidIdentity(f"revision {self.revision} is out of range")
        parse_date(self.date)
        if not isinstance(self.public_key, str):
            raise InvalidIdentity("public key must be PEM text")
        rsa = keys.public_from_pem(self.public_key)
        self._set("_rsa", rsa)
        self._set("public_key", rsa.to_pem().decode("ascii"))
        if not isinstance(self.signing_key, str):
            raise InvalidIdentity("signing key must be base64 text")
        if self.signing_key:
            fastsign.public_from_raw(_b64decode(self.signing_key, "signing key"))
        if not isinstance(self.signature, str):
            raise InvalidIdentity("signature must be base64 text")
        if self.signature:
            _b64decode(self.signature, "signature")

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    def _check_sources(self, sources: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        if isinstance(sources, str) or not isinstance(sources, (tuple, list)):
            raise InvalidIdentity("sources must be a list of IDURLs")
        sources = tuple(sources)
        if not sources:
            raise InvalidIdentity("identity has no sources")
        if len(sources) > MAX_SOURCES:
            raise InvalidIdentity(f"identity has more than {MAX_SOURCES} sources")
        if len(set(sources)) != len(sources):
            raise InvalidIdentity("identity lists a source twice")
        for source in sources:
            idurl = globalid.IdUrl.parse(source)
            if str(idurl) != source:
                raise InvalidIdentity(f"source {source!r} is not canonical (expected {str(idurl)!r})")
            if idurl.name != self.name:
                raise InvalidIdentity(f"source {source!r} does not end with /{self.name}.xml")
        return sources

    @staticmethod
    def _check_contacts(contacts: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        if isinstance(contacts, str) or not isinstance(contacts, (tuple, list)):
            raise InvalidIdentity("contacts must be a list")
        contacts = tuple(contacts)
        if len(contacts) > MAX_CONTACTS:
            raise InvalidIdentity(f"identity has more than {MAX_CONTACTS} contacts")
        if len(set(contacts)) != len(contacts):
            raise InvalidIdentity("identity lists a contact twice")
        for contact in contacts:
            validate_contact(contact)
        return contacts

    # -- derived values -------------------------------------------------

    @property
    def idurl(self) -> str:
        """The primary IDURL (first source); the cache and the network key on it."""
        return self.sources[0]

    @property
    def global_id(self) -> str:
        """``name@host[_port]`` of the primary IDURL."""
        return globalid.idurl_to_global_id(self.idurl)

    @property
    def is_signed(self) -> bool:
        """True when the document carries a signature (valid or not)."""
        return bool(self.signature)

    def rsa_public_key(self) -> RsaPublicKey:
        """The identity (master) RSA public key."""
        return self._rsa

    def fingerprint(self) -> str:
        """Fingerprint of the identity RSA key."""
        return self._rsa.fingerprint()

    def fast_public_key(self) -> Ed25519PublicKey | None:
        """The certified Ed25519 packet-signing key, if the document has one."""
        if not self.signing_key:
            return None
        if self._fast is None:
            # Parsed once per document: the transport asks for it for every packet it verifies.
            self._set("_fast", fastsign.public_from_raw(base64.b64decode(self.signing_key)))
        return self._fast

    # -- signing --------------------------------------------------------

    def signed_content(self) -> bytes:
        """The exact bytes the signature covers (see the module docstring)."""
        signing_raw = base64.b64decode(self.signing_key) if self.signing_key else b""
        return b"".join(
            (
                _MAGIC,
                _field("version", self.version.encode("utf-8")),
                _field("name", self.name.encode("utf-8")),
                _list_field("sources", self.sources),
                _list_field("contacts", self.contacts),
                _field("revision", str(self.revision).encode("ascii")),
                _field("date", self.date.encode("ascii")),
                _field("publickey", self._rsa.to_der()),
                _field("signingkey", signing_raw),
            )
        )

    def sign(self, priv: RsaPrivateKey) -> Identity:
        """A copy signed with ``priv``, which must match :attr:`public_key`."""
        if priv.public_key() != self._rsa:
            raise InvalidIdentity("the private key does not match the identity's public key")
        signature = keys.sign(priv, self.signed_content())
        return replace(self, signature=base64.b64encode(signature).decode("ascii"))

    def verify(self) -> bool:
        """True when the signature is valid for this content and key. Never raises."""
        if not self.signature:
            return False
        try:
            signature = base64.b64decode(self.signature)
            return keys.verify(self._rsa, self.signed_content(), signature)
        except (ValueError, BadRequest):
            return False

    def updated(self, now: float | None = None, **changes: object) -> Identity:
        """An unsigned copy with ``changes``, the revision bumped and the date set to ``now``."""
        when = time.time() if now is None else now
        changes.setdefault("revision", self.revision + 1)
        return replace(self, date=format_date(when), signature="", **changes)

    # -- XML ------------------------------------------------------------

    def to_xml(self) -> bytes:
        """The XML document (UTF-8, with declaration). Omits empty optional fields."""
        root = ET.Element("identity")

        def add(tag: str, text: str) -> None:
            ET.SubElement(root, tag).text = text

        add("version", self.version)
        add("name", self.name)
        for list_tag, item_tag in _LIST_TAGS.items():
            container = ET.SubElement(root, list_tag)
            for item in getattr(self, list_tag):
                ET.SubElement(container, item_tag).text = item
        add("revision", str(self.revision))
        add("date", self.date)
        add("publickey", self.public_key)
        if self.signing_key:
            add("signingkey", self.signing_key)
        if self.signature:
            add("signature", self.signature)
        ET.indent(root)
        return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"

    @classmethod
    def from_xml(cls, data: bytes, require_signature: bool = True) -> Identity:
        """Parse and validate an identity document (the signature is NOT checked: call :meth:`verify`).

        Raises :class:`InvalidIdentity` (a ``BadRequest``) with the reason.
        """
        root = _parse_xml(data)
        values: dict[str, object] = {}
        for child in root:
            tag = child.tag
            if not isinstance(tag, str) or (tag not in _SCALAR_TAGS and tag not in _LIST_TAGS):
                raise InvalidIdentity(f"unknown field <{tag}>")
            if tag in values:
                raise InvalidIdentity(f"duplicate field <{tag}>")
            _check_plain(child, allow_children=tag in _LIST_TAGS)
            if (child.tail or "").strip():
                raise InvalidIdentity(f"unexpected text after <{tag}>")
            if tag in _LIST_TAGS:
                values[tag] = _read_list(child, _LIST_TAGS[tag])
            else:
                values[tag] = (child.text or "").strip()
        required = _REQUIRED_TAGS + (("signature",) if require_signature else ())
        for tag in required:
            if tag not in values:
                raise InvalidIdentity(f"missing field <{tag}>")
        revision_text = values["revision"]
        if not _REVISION_RE.match(str(revision_text)):
            raise InvalidIdentity(f"revision {revision_text!r} is not a non-negative integer")
        return cls(
            name=values["name"],
            sources=values["sources"],
            contacts=values["contacts"],
            revision=int(revision_text),
            date=values["date"],
            public_key=values["publickey"],
            signing_key=values.get("signingkey", ""),
            version=values["version"],
            signature=values.get("signature", ""),
        )


def _check_plain(element: ET.Element, allow_children: bool) -> None:
    if element.attrib:
        raise InvalidIdentity(f"<{element.tag}> must not have attributes")
    if allow_children:
        if (element.text or "").strip():
            raise InvalidIdentity(f"<{element.tag}> must only contain elements")
    elif len(element):
        raise InvalidIdentity(f"<{element.tag}> must not contain elements")


def _read_list(container: ET.Element, item_tag: str) -> tuple[str, ...]:
    items = []
    for item in container:
        if item.tag != item_tag:
            raise InvalidIdentity(f"<{container.tag}> may only contain <{item_tag}>, not <{item.tag}>")
        _check_plain(item, allow_children=False)
        if (item.tail or "").strip():
            raise InvalidIdentity(f"unexpected text after <{item_tag}>")
        items.append((item.text or "").strip())
        if len(items) > max(MAX_SOURCES, MAX_CONTACTS):
            raise InvalidIdentity(f"too many <{item_tag}> entries")
    return tuple(items)


def _parse_xml(data: bytes) -> ET.Element:
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidIdentity("identity document must be bytes")
    if len(data) > MAX_XML_BYTES:
        raise InvalidIdentity(f"identity document is larger than {MAX_XML_BYTES} bytes")
    if not data.strip():
        raise InvalidIdentity("identity document is empty")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidIdentity("identity document is not UTF-8") from None
    if "\x00" in text:
        raise InvalidIdentity("identity document contains NUL bytes")
    if _DECLARATION_RE.search(text):
        raise InvalidIdentity("identity document must not contain DOCTYPE, ENTITY or other declarations")
    # encoding="utf-8" overrides whatever the XML declaration claims: we decoded it as UTF-8 above.
    parser = ET.XMLParser(encoding="utf-8")
    try:
        parser.feed(bytes(data))
        root = parser.close()
    except ET.ParseError as err:
        raise InvalidIdentity(f"identity document is not well-formed XML ({err})") from None
    if root.tag != "identity":
        raise InvalidIdentity(f"root element must be <identity>, not <{root.tag}>")
    _check_plain(root, allow_children=True)
    return root
