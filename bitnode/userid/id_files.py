"""service_identity's files, read and written off the reactor (these functions run in the thread pool).

Under the basedir:

- ``metadata/identity.xml``   my signed identity document (atomic, 0600);
- ``metadata/packetkey.pem``  my Ed25519 packet-signing key, PKCS#8 (atomic, 0600);
- ``metadata/keys/``          the :class:`~bitnode.crypt.keystore.KeyStore` (0700);
- ``identitycache/``          the :class:`~bitnode.userid.idcache.IdentityCache` of others.

``identity.xml`` is written last: it is what makes an identity exist, so a
crash while keys are being written leaves no half identity behind.

My master key is stored under the name I had when it was made
(``master$alice@id1``); my global id follows my primary identity server and
may change, so the key store's owner is found among my names
(:func:`keystore_owner`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from bitnode import globalid
from bitnode.crypt import fastsign, keys
from bitnode.crypt.fastsign import Ed25519PrivateKey
from bitnode.crypt.keys import RsaPrivateKey
from bitnode.crypt.keystore import KeyStore
from bitnode.errors import BadRequest, NotFound
from bitnode.main.basedir import Basedir
from bitnode.main.fileutil import PRIVATE_FILE_MODE, atomic_write, ensure_dir, read_limited, remove_if_exists
from bitnode.userid.idcache import IdentityCache
from bitnode.userid.identity import MAX_XML_BYTES, Identity


@dataclass(frozen=True)
class IdentityFiles:
    """Where service_identity keeps its files."""

    identity_file: str
    packet_key_file: str
    keys_dir: str
    cache_dir: str

    @classmethod
    def of(cls, basedir: Basedir) -> IdentityFiles:
        """The layout in ``basedir``."""
        metadata = basedir.metadata
        return cls(os.path.join(metadata, "identity.xml"), os.path.join(metadata, "packetkey.pem"),
                   os.path.join(metadata, "keys"), basedir.path("identitycache"))


def names_of(identity: Identity) -> list[str]:
    """The global ids of an identity's sources, its primary first."""
    return [globalid.idurl_to_global_id(source) for source in identity.sources]


def open_files(files: IdentityFiles, run_in_thread: Callable, clock: Any, cache_entries: int) -> tuple:
    """(cache, identity, keystore, packet key, problems): everything service_identity loads at start."""
    ensure_dir(files.keys_dir)
    cache = IdentityCache(files.cache_dir, max_entries=cache_entries)
    identity = keystore = packet_key = None
    problems: list[str] = []
    try:
        identity = read_identity(files.identity_file)
    except FileNotFoundError:
        pass
    except (OSError, BadRequest) as err:
        problems.append(f"identity.xml cannot be used: {err}")
    if identity is not None:
        keystore = KeyStore(files.keys_dir, keystore_owner(files.keys_dir, identity), run_in_thread, clock=clock)
        problems.extend(keystore.load_errors)
        try:
            if keystore.public_key(keystore.master_key_id) != identity.rsa_public_key():
                problems.append("the master key does not match identity.xml")
            keystore.private_key(keystore.master_key_id)
        except NotFound:
            problems.append("the master private key is missing: identity updates cannot be signed")
        packet_key = read_packet_key(files.packet_key_file, identity, problems)
    return cache, identity, keystore, packet_key, problems


def keystore_owner(keys_dir: str, identity: Identity) -> str:
    """The name my master key is stored under: the first of my names with a master key file (else my global id)."""
    for name in names_of(identity):
        if os.path.exists(os.path.join(keys_dir, f"master${name}.private")):
            return name
    return identity.global_id


def read_identity(path: str) -> Identity:
    """My identity document, verified; FileNotFoundError when there is none."""
    identity = Identity.from_xml(read_limited(path, MAX_XML_BYTES))
    if not identity.verify():
        raise BadRequest("its signature does not verify")
    return identity


def read_packet_key(path: str, identity: Identity, problems: list[str]) -> Ed25519PrivateKey | None:
    """My packet key if it is the one my identity certifies; else None with the reason in ``problems``."""
    try:
        key = fastsign.private_from_pem(read_limited(path, keys.MAX_PEM_BYTES))
    except FileNotFoundError:
        problems.append("packetkey.pem is missing: packets cannot be signed")
        return None
    except (OSError, BadRequest) as err:
        problems.append(f"packetkey.pem cannot be used: {err.__class__.__name__}")
        return None
    if identity.fast_public_key() != key.public_key():
        problems.append("packetkey.pem does not match the signing key of identity.xml")
        return None
    return key


def write_new(files: IdentityFiles, identity: Identity, master: RsaPrivateKey, packet_key: Ed25519PrivateKey,
              run_in_thread: Callable, clock: Any, home: str = "") -> KeyStore:
    """Keys first, identity.xml last (its presence is what makes the identity exist).

    ``home``: the name to store a new master key under, if it is one of the
    identity's names (a recovered identity keeps the name its files were
    stored under, the first IDURL of its backup); else the global id.
    """
    ensure_dir(files.keys_dir)
    owner = keystore_owner(files.keys_dir, identity)
    if home and home in names_of(identity) and not os.path.exists(
            os.path.join(files.keys_dir, f"master${owner}.private")):
        owner = home
    keystore = KeyStore(files.keys_dir, owner, run_in_thread, clock=clock)
    if not keystore.has(keystore.master_key_id):
        keystore.add_private(keystore.master_key_id, master.to_pem(), label="master key")
    atomic_write(files.packet_key_file, packet_key.to_pem(), mode=PRIVATE_FILE_MODE)
    atomic_write(files.identity_file, identity.to_xml(), mode=PRIVATE_FILE_MODE)
    return keystore


def remove_files(files: IdentityFiles, erase_private_key: bool, master_key_id: str | None) -> None:
    """Delete identity.xml, and with ``erase_private_key`` the packet key and the master key files."""
    remove_if_exists(files.identity_file)
    if erase_private_key:
        remove_if_exists(files.packet_key_file)
        if master_key_id is not None:
            # KeyStore.erase refuses the master key on purpose; erasing the identity is the one exception.
            for suffix in (".private", ".public", ".json"):
                remove_if_exists(os.path.join(files.keys_dir, master_key_id + suffix))
