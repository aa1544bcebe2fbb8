"""The signed JSON envelope that share indexes and key envelopes are stored in.

Stored form: ``{"signed": "<canonical JSON text>", "signature": "<base64 RSA-PSS/SHA-256>"}``,
itself canonical JSON (sorted keys, no spaces), so the same document always
gives the same bytes.
"""

from __future__ import annotations

import base64
import json

from bitnode import boundedjson
from bitnode.crypt import keys
from bitnode.crypt.keys import RsaPrivateKey, RsaPublicKey
from bitnode.errors import BadRequest


def canonical(value: dict) -> bytes:
    """``value`` as canonical JSON bytes (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def encode(signed: bytes, signature: bytes) -> bytes:
    """The stored form of ``signed`` (canonical JSON text) and its ``signature``."""
    return canonical({"signed": signed.decode("utf-8"), "signature": base64.b64encode(signature).decode("ascii")})


def seal(signer: RsaPrivateKey, head: dict) -> bytes:
    """``head`` signed by ``signer``, in its stored form (CPU work)."""
    signed = canonical(head)
    return encode(signed, keys.sign(signer, signed))


def open_signed(signer_public: RsaPublicKey, data: bytes, what: str, key_id: str, signer: str) -> tuple[bytes, bytes]:
    """The signed text and the signature of a stored envelope that ``signer_public`` signed.

    BadRequest naming ``what`` (of ``key_id``, by ``signer``) when the bytes
    are not an envelope or the signature does not verify, whatever the bytes.
    """
    try:
        outer = boundedjson.loads(data, what)
        signed = outer["signed"].encode("utf-8")
        signature = base64.b64decode(outer["signature"], validate=True)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise BadRequest(f"{what} is not readable: {err}") from None
    if not keys.verify(signer_public, signed, signature):
        raise BadRequest(f"{what} of {key_id} is not signed by {signer}")
    return signed, signature
