"""Revoking a member of my share for good: a new generation of the share key (``share_revoke``).

Taking a member off the readers list makes my suppliers refuse it from the
next packet on, but it still holds the share key. So a revoke also rotates
the key, in this order (:func:`rotate`, run by service_shares):

1. my writers' newest files are taken into my catalog first
   (:mod:`bitnode.access.share_absorb`), while their entries still open;
2. a new private key is made and stored under the same key id
   (:meth:`KeyStore.replace_private <bitnode.crypt.keystore.KeyStore.replace_private>`:
   the old one is kept as a previous generation);
3. the version keys of every version under the share are re-wrapped with the
   new key in my catalog (:meth:`Catalog.rewrap <bitnode.storage.catalog.Catalog.rewrap>`):
   the catalog only, not a block is re-uploaded (the blocks are encrypted with
   the per-version keys, which do not change);
4. the lists go to my suppliers without the member, then the index sealed
   with the new key;
5. each remaining member gets the new key: in a ``Key`` packet at once when
   it is online, and in any case as a *key envelope* on my suppliers
   (``<alias>.index/k<member tag>``, :func:`seal_envelope`): the new key
   encrypted to the member's identity key, signed by my master key. A member
   that was away finds the index sealed with a key it does not hold
   (:class:`~bitnode.access.share_reader.KeyOutdated`), reads its envelope and
   takes the key (:func:`open_envelope`) without me being online.

**What a revoked member who kept the old key can still read.** Versions it
could read before the revoke: their blocks are unchanged, so with a copy of
them (or a supplier that serves it against the rules) the old key still opens
them. Nothing uploaded after the revoke: those version keys are wrapped only
with the new key, which it never gets, and its old index copy does not list
them. An upload running during the revoke was wrapped with the old key; it
is re-wrapped with the others only if its version row was in the catalog when
the rotation ran.
"""

from __future__ import annotations

import base64
from typing import Any

from bitnode import boundedjson
from bitnode.access import signed_envelope
from bitnode.access.key_packets import KeyOffer, open_key, seal_key
from bitnode.crypt import keys
from bitnode.crypt.keys import RsaPrivateKey, RsaPublicKey
from bitnode.errors import BadRequest, BitnodeError, Forbidden
from bitnode.storage import share_scope

ENVELOPE_FORMAT = 1
#: A key envelope is a few KiB (a 4096-bit key's PEM, sealed); anything far larger is refused unread.
MAX_ENVELOPE_BYTES = 64 * 1024


def new_generation(size_bits: int) -> RsaPrivateKey:
    """A new private key for a share (CPU work: run it in a thread)."""
    return keys.generate_rsa(size_bits)


def rewrap_with(generations: list[RsaPrivateKey], new_public: RsaPublicKey, key_id: str) -> Any:
    """The function :meth:`Catalog.rewrap` applies to each wrapped version key: open with any generation held,
    wrap with the new key (a version key no generation opens is left as it is)."""

    def rewrap(wrapped: bytes) -> bytes | None:
        for private in generations:
            try:
                return keys.wrap_key(new_public, keys.unwrap_key(private, wrapped))
            except keys.DecryptionError:
                continue
        return None

    return rewrap


def seal_envelope(owner_master: RsaPrivateKey, member_public: RsaPublicKey, owner: str, member: str,
                  offer: KeyOffer) -> bytes:
    """The new share key for ``member``, encrypted to its identity key and signed by me (CPU work)."""
    sealed = seal_key(member_public, owner, member, offer)
    return signed_envelope.seal(owner_master, {
        "format": ENVELOPE_FORMAT, "owner": owner, "member": member, "key_id": offer.key_id,
        "fingerprint": offer.fingerprint, "sealed": base64.b64encode(sealed).decode("ascii")})


def open_envelope(owner_public: RsaPublicKey, my_private: RsaPrivateKey, data: bytes, owner: str, me: str,
                  key_id: str) -> KeyOffer:
    """A key envelope checked (signed by ``owner``, for me, of ``key_id``, a private key) and opened.

    BadRequest for anything that does not check out, whatever the bytes (CPU work).
    """
    if not isinstance(data, bytes) or len(data) > MAX_ENVELOPE_BYTES:
        raise BadRequest("key envelope too large")
    signed, _ = signed_envelope.open_signed(owner_public, data, "key envelope", key_id, owner)
    try:
        head = boundedjson.loads(signed, "key envelope head")
        fields = (head["format"], head["owner"], head["member"], head["key_id"])
        sealed = base64.b64decode(head["sealed"], validate=True)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise BadRequest(f"key envelope is not readable: {err}") from None
    if fields != (ENVELOPE_FORMAT, owner, me, key_id):
        raise BadRequest(f"key envelope is not {owner}'s key of {key_id} for {me}")
    offer = open_key(my_private, sealed, owner, me)
    if offer.key_id != key_id or not offer.is_private or offer.fingerprint != head.get("fingerprint"):
        raise BadRequest(f"key envelope does not hold the private key of {key_id}")
    return offer


async def renew_key(run_in_thread: Any, store: Any, storage: Any, key_id: str) -> dict:
    """Steps 2 and 3 of the module docstring: a new generation of the key, my catalog's version keys re-wrapped."""
    generations = [store.private_key(key_id), *store.previous_private_keys(key_id)]
    new = await run_in_thread(new_generation, generations[0].size_bits)
    store.replace_private(key_id, new.to_pem())
    rewrapped = await run_in_thread(storage.catalog.rewrap, key_id, rewrap_with(generations, new.public_key(), key_id))
    storage.catalog_changed()  # backed up; the key store's change is backed up too
    return {"fingerprint": new.fingerprint(), "rewrapped": rewrapped}


async def envelopes(run_in_thread: Any, store: Any, fetch_identity: Any, key_id: str, members: list[str]
                    ) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
    """The key envelopes of ``members`` (path, bytes) and the members none could be made for (why)."""
    owner, alias = store.owner, share_scope.share_alias(key_id)
    info, private = store.get(key_id), store.private_key(key_id)
    offer = KeyOffer(key_id, info.label, True, info.fingerprint, private.to_pem())
    made, problems = [], {}
    for member in members:
        try:
            identity = await fetch_identity(member)
            sealed = await run_in_thread(seal_envelope, store.private_key(store.master_key_id),
                                         identity.rsa_public_key(), owner, member, offer)
        except BitnodeError as err:
            problems[member] = str(err)
            continue
        made.append((share_scope.envelope_path(alias, member), sealed))
    return made, problems


def take_offer(store: Any, offer: KeyOffer, wanted: str) -> bool:
    """Store the key of an envelope if it is the generation ``wanted`` (an older one re-planted is not taken)."""
    if offer.fingerprint != wanted:
        raise Forbidden(f"the key envelope of {offer.key_id} holds {offer.fingerprint[:16]}..., not the "
                        f"generation its index is sealed with ({wanted[:16]}...)")
    store.replace_private(offer.key_id, offer.pem)
    return True


def unwrap_with_any(generations: list, blob: bytes, key_id: str) -> bytes:
    """A version key unwrapped with whichever generation of the share key opens it; Forbidden when none does."""
    if not generations:
        raise Forbidden(f"the private key of {key_id} is not here: this file cannot be decrypted")
    for private in generations:
        try:
            return keys.unwrap_key(private, blob)
        except keys.DecryptionError:
            continue
    raise Forbidden(f"no generation of {key_id} held here opens this version (it was sealed for a newer key "
                    "than this node holds, or this node was removed from the share)")
