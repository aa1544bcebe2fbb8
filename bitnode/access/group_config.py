"""A group's config: who created it, which key names it, and which brokers host its log, signed by the creator.

The config is made once, by ``group_create``, and never changes. Everyone who
deals with the group checks it against the creator's published identity key:
a broker before it hosts the group's log, a member before it joins. Brokers
and members learn it from the creator (``host``), from an admin's invitation
(``invite``) or from a broker's answer; nobody has to trust whoever passed it on.

Value, version 1 (a JSON object; ``signature`` covers every other field)::

    {"v": 1, "group_key_id": "group_<hex>$alice@host", "creator": "alice@host",
     "key_fingerprint": "<sha256 hex of the group key's public DER>",
     "brokers": ["b0@host", "b1@host", ...],        # by position, 1..MAX_BROKERS distinct ids
     "created": <seconds>,
     "creator_keys": "<base64: the creator's key bundle, group_roster.wrap_keys>",
     "signature": "<base64 RSA-PSS/SHA-256 by the creator's master key>"}

Signed bytes: :data:`DOMAIN` + the canonical JSON (sorted keys, no spaces) of
the object without ``signature``.

What the brokers' positions mean (:mod:`bitnode.access.group_replica`): the
primary of term ``t`` is ``brokers[t % n]``; an entry is committed once a
majority (:func:`quorum`) of the brokers hold it, so the group keeps working
while fewer than half of them are away (one of three).

``creator_keys`` is the creator's own key bundle (generation 1), sealed to the
creator's master key: a creator recovered on a new machine gets it back from
any broker even when the catalog backup is older than the group.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, replace
from typing import Any

from bitnode import boundedjson, globalid
from bitnode.access.group_protocol import parse_group_key_id
from bitnode.crypt import keys
from bitnode.errors import BadRequest

VERSION = 1
DOMAIN = b"bitnode-group-config\x001\x00"
#: Most brokers one group may have (a config names each one).
MAX_BROKERS = 7
#: Largest config accepted (a few ids and a key bundle).
MAX_CONFIG_BYTES = 16 * 1024


def canonical(value: Any) -> bytes:
    """The one byte form of a JSON value that is signed (sorted keys, no spaces); group_roster signs it too."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class GroupConfig:
    """One group's config (see the module doc); build it with :func:`new_config`, check it with :func:`parse`."""

    group_key_id: str
    creator: str
    key_fingerprint: str
    brokers: tuple[str, ...]
    created: float
    creator_keys: str
    signature: str = ""

    def unsigned(self) -> dict:
        """The fields the signature covers."""
        return {"v": VERSION, "group_key_id": self.group_key_id, "creator": self.creator,
                "key_fingerprint": self.key_fingerprint, "brokers": list(self.brokers), "created": self.created,
                "creator_keys": self.creator_keys}

    def to_dict(self) -> dict:
        """The JSON value (with its signature)."""
        return dict(self.unsigned(), signature=self.signature)

    def to_json(self) -> str:
        """The canonical JSON text of :meth:`to_dict`."""
        return canonical(self.to_dict()).decode("utf-8")

    def signed_bytes(self) -> bytes:
        """What the creator signs."""
        return DOMAIN + canonical(self.unsigned())

    # -- the brokers -----------------------------------------------------------------------

    @property
    def size(self) -> int:
        """How many brokers host the log."""
        return len(self.brokers)

    def primary(self, term: int) -> str:
        """The broker that leads term ``term``."""
        return self.brokers[term % len(self.brokers)]

    def position(self, broker: str) -> int:
        """``broker``'s position (ValueError if it is none of the group's brokers)."""
        return self.brokers.index(broker)

    def next_term_of(self, broker: str, after: int) -> int:
        """The first term after ``after`` that ``broker`` leads."""
        n, position = len(self.brokers), self.position(broker)
        term = after + 1
        return term + (position - term) % n


def quorum(config: GroupConfig) -> int:
    """Brokers that must hold an entry before it counts as committed: a majority."""
    return config.size // 2 + 1


def new_config(group_key_id: str, creator: str, key_fingerprint: str, brokers: list[str], created: float,
               creator_keys: str) -> GroupConfig:
    """An unsigned config, checked (BadRequest for bad ids, no or duplicate brokers)."""
    return _check(GroupConfig(group_key_id, creator, key_fingerprint, tuple(brokers), float(created), creator_keys))


def sign(config: GroupConfig, creator_key: keys.RsaPrivateKey) -> GroupConfig:
    """``config`` signed with the creator's master key (CPU work: run it off the reactor)."""
    signature = keys.sign(creator_key, config.signed_bytes())
    return replace(config, signature=base64.b64encode(signature).decode("ascii"))


def verify(config: GroupConfig, creator_public: keys.RsaPublicKey) -> bool:
    """Whether ``config`` is signed by the holder of ``creator_public`` (the creator's published key)."""
    try:
        signature = base64.b64decode(config.signature, validate=True)
    except ValueError:
        return False
    return keys.verify(creator_public, config.signed_bytes(), signature)


def parse(value: Any) -> GroupConfig:
    """A config from its JSON value (a dict or JSON text), checked for shape; BadRequest otherwise.

    The signature is not checked here (it needs the creator's identity): see :func:`verify`.
    """
    if isinstance(value, (str, bytes)):
        if len(value) > MAX_CONFIG_BYTES:
            raise BadRequest("group config is too large")
        value = boundedjson.loads(value, "group config")
    if not isinstance(value, dict) or value.get("v") != VERSION:
        raise BadRequest("group config must be a JSON object of version 1")
    brokers = value.get("brokers")
    created = value.get("created")
    if not isinstance(brokers, list) or isinstance(created, bool) or not isinstance(created, (int, float)):
        raise BadRequest("group config needs a list of brokers and a creation time")
    fields = {name: value.get(name) for name in ("group_key_id", "creator", "key_fingerprint", "creator_keys",
                                                   "signature")}
    if not all(isinstance(text, str) for text in fields.values()):
        raise BadRequest("group config has a missing or malformed field")
    return _check(GroupConfig(fields["group_key_id"], fields["creator"], fields["key_fingerprint"], tuple(brokers),
                              float(created), fields["creator_keys"], fields["signature"]))


def _check(config: GroupConfig) -> GroupConfig:
    parsed = parse_group_key_id(config.group_key_id)
    if str(parsed) != config.group_key_id or str(parsed.owner) != config.creator:
        raise BadRequest("group config: the group key id must be canonical and belong to its creator")
    if len(config.key_fingerprint) != 64 or any(c not in "0123456789abcdef" for c in config.key_fingerprint):
        raise BadRequest("group config: key_fingerprint must be 64 hex digits")
    if not 1 <= len(config.brokers) <= MAX_BROKERS:
        raise BadRequest(f"group config: 1 to {MAX_BROKERS} distinct brokers")
    for broker in config.brokers:
        if not isinstance(broker, str) or str(globalid.to_global_id(broker)) != broker:
            raise BadRequest("group config: brokers must be canonical global ids")
    if len(set(config.brokers)) != len(config.brokers):
        raise BadRequest(f"group config: 1 to {MAX_BROKERS} distinct brokers")
    if len(config.creator_keys) > MAX_CONFIG_BYTES // 2:
        raise BadRequest("group config: creator_keys is too large")
    return config
