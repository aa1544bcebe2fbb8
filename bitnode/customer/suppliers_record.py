"""The ``suppliers:<customer>`` DHT record: its key, and reading it back with its writer checked.

service_customer writes the record (see :mod:`bitnode.customer.customer_service`);
anyone reads it with :func:`lookup_suppliers` — a share reader looks for the
owner's suppliers this way, a recovered identity for its own.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from bitnode import globalid
from bitnode.dht import records
from bitnode.dht.dht_service import DHTService
from bitnode.errors import BadRequest, Conflict, Unavailable

RECORD_TTL = 24 * 3600
REPUBLISH_AFTER = RECORD_TTL / 2


def suppliers_key(customer_id: str) -> str:
    """The DHT key of a customer's suppliers record."""
    return f"{records.SUPPLIERS}:{customer_id}"


def lookup_suppliers(dht: Any, identities: Any, customer_id: str) -> defer.Deferred:
    """Read ``customer_id``'s suppliers record from the DHT and check its writer is that customer.

    ``dht`` is the running DHT service (None when it is off: Unavailable),
    ``identities`` anything with ``fetch_identity(global_id)`` (the identity service).

    Fires with ``{"customer_id", "customer_idurl", "revision", "ecc_map",
    "suppliers": [global id or ""], "idurls", "writer_verified", "created",
    "expires"}``; NotFound without a record, Conflict when the record was not
    written with the customer's identity key (someone else holds the key).
    Works whether or not service_customer runs (anyone's list can be read).
    """
    return defer.Deferred.fromCoroutine(_lookup_suppliers(dht, identities, customer_id))


async def _lookup_suppliers(dht: Any, identities: Any, customer_id: str) -> dict:
    if dht is None:
        raise Unavailable(f"{DHTService.name} is not running")
    gid = str(globalid.to_global_id(customer_id))
    record = await dht.get_value(suppliers_key(gid), records.SUPPLIERS)
    identity = await identities.fetch_identity(gid)
    value = record["value"]
    if not identity.signing_key or record["writer_pubkey"] != identity.signing_key:
        raise Conflict(f"the DHT record {suppliers_key(gid)} is not signed by {gid}'s identity key")
    if value["customer_idurl"] != identity.idurl:
        raise Conflict(f"the DHT record {suppliers_key(gid)} names another customer")
    suppliers = []
    for idurl in value["suppliers"]:
        try:
            suppliers.append(globalid.idurl_to_global_id(idurl) if idurl else "")
        except BadRequest:
            suppliers.append("")
    return {"customer_id": gid, "customer_idurl": value["customer_idurl"], "revision": value["revision"],
            "ecc_map": value["ecc_map"], "suppliers": suppliers, "idurls": list(value["suppliers"]),
            "writer_verified": True, "created": record["created"], "expires": record["expires"]}
