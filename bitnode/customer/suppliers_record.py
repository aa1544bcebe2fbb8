"""The ``suppliers`` DHT record of a customer: writing it with my master key, and reading anyone's.

The record is bound to the customer's identity (RSA master) key: its DHT key
is ``suppliers:<fingerprint of the master key>`` and its value is signed by
that key (format and rules: :mod:`bitnode.dht.bound_values`). So it verifies
after a recovery from the key alone — with an identity backup or a bare
private key and ``known_idurl`` — whatever packet key the new machine has, and
a reader trusts the customer's signature, never whoever published the copy.

:class:`RecordPublisher` (service_customer) signs my value with the lifetime
``services/customer/suppliers-record-ttl`` (seconds), stores it in the DHT,
and hands it to each hired supplier in a ``Contacts`` packet: the suppliers
keep it and store it again before it expires, for as long as they hold my data
(:mod:`bitnode.supplier.record_keeper`), so the record outlives my machine.
It publishes again after every roster change and every ``ttl/2`` seconds.

A supplier that moved its identity to another identity server (its old
primary died: ``id_rotator``) is named by its *current* IDURL
(``current_id``: the identity cache knows the old name as an alias of the
new one), and the customer publishes again as soon as it hears of the move
(``identity-rotated``): a reader of the record, a recovered customer
included, reaches the supplier on a live server.  The roster keeps the name
the supplier was hired under (the catalog names its blocks that way); both
names are the same user, and a recovered customer that takes the new name
finds its blocks on that supplier all the same.

:func:`lookup_suppliers` reads anyone's record: a share reader looks for the
owner's suppliers this way, a recovered identity for its own.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from bitnode import globalid
from bitnode.crypt.keys import RsaPrivateKey, RsaPublicKey
from bitnode.dht import bound_values, records
from bitnode.dht.records import RecordConflict
from bitnode.errors import BadRequest, BitnodeError, Conflict, NotFound, Unavailable
from bitnode.storage.wire import contacts_payload

TTL_KEY = "services/customer/suppliers-record-ttl"
DEFAULT_TTL = 24 * 3600
#: Seconds before trying again a DHT store or a hand-over to a supplier that failed (at most ttl/2).
RETRY_AFTER = 60.0
#: Seconds between looks for a record while the DHT cannot answer (doubling up to the second figure).
LOOKUP_RETRY = 5.0
LOOKUP_RETRY_MAX = 60.0


def suppliers_key(public_key: RsaPublicKey | RsaPrivateKey) -> str:
    """The DHT key of the suppliers record of the identity with this master key."""
    return bound_values.key_for(records.SUPPLIERS, public_key)


def summary(value: dict, customer_id: str) -> dict:
    """What a reader learns from a verified value: positions as global ids ("" where empty or unreadable)."""
    suppliers = []
    for idurl in value["suppliers"]:
        try:
            suppliers.append(globalid.idurl_to_global_id(idurl) if idurl else "")
        except BadRequest:
            suppliers.append("")
    return {"customer_id": customer_id, "customer_idurl": value["customer_idurl"], "revision": value["revision"],
            "ecc_map": value["ecc_map"], "suppliers": suppliers, "idurls": list(value["suppliers"]),
            "ttl": value["ttl"], "signed_at": value["signed_at"], "writer_verified": True}


def lookup_suppliers(dht: Any, identities: Any, customer_id: str) -> defer.Deferred:
    """Read ``customer_id``'s suppliers record from the DHT, checked against its identity's master key.

    ``dht`` is the running DHT service (None when it is off: Unavailable),
    ``identities`` anything with ``fetch_identity(global_id)`` (the identity service).

    Fires with :func:`summary` plus ``created`` / ``expires`` (of the copy
    found) and ``publisher`` (the Ed25519 key of whoever stored that copy:
    the customer or one of its suppliers); NotFound without a record,
    Conflict when the value names another customer. Works whether or not
    service_customer runs (anyone's list can be read).
    """
    return defer.Deferred.fromCoroutine(_lookup_suppliers(dht, identities, customer_id))


async def _lookup_suppliers(dht: Any, identities: Any, customer_id: str) -> dict:
    if dht is None:
        raise Unavailable("service_entangled_dht is not running")
    gid = str(globalid.to_global_id(customer_id))
    identity = await identities.fetch_identity(gid)
    key = suppliers_key(identity.rsa_public_key())
    record = await dht.get_value(key, records.SUPPLIERS)
    value = record["value"]
    # The DHT checked the value against the key; the key is this identity's: check the customer named.
    try:
        bound_values.check_suppliers(key, value)
    except bound_values.InvalidBoundValue as err:
        raise Conflict(f"the DHT record {key} does not verify: {err}") from None
    if value["customer_idurl"] not in (identity.idurl, *identity.sources):
        raise Conflict(f"the DHT record {key} names another customer ({value['customer_idurl']})")
    return dict(summary(value, gid), created=record["created"], expires=record["expires"],
                publisher=record["writer_pubkey"])


async def find_record(clock: Any, dht: Callable[[], Any], identities: Any, customer_id: str,
                      note: Callable[[str], None] = lambda problem: None) -> dict | None:
    """Look ``customer_id``'s record up until the DHT can answer: the record, or None when there is none.

    A recovered identity must not take "I could not ask" for "there is
    nothing": without DHT peers (or while the DHT service is off) it waits
    :data:`LOOKUP_RETRY` seconds, doubling up to :data:`LOOKUP_RETRY_MAX`, and
    asks again; ``note(problem)`` hears why each time. Cancel the Deferred
    running it to stop.
    """
    delay = LOOKUP_RETRY
    while True:
        try:
            service = dht()
            if service.dht is None or not service.dht.stats()["contacts"].get("0"):
                await service.bootstrap()  # Unavailable while no seed answers
                if service.dht is None or not service.dht.stats()["contacts"].get("0"):
                    raise Unavailable("the DHT knows no other node yet")
            return await lookup_suppliers(service, identities, customer_id)
        except (NotFound, Conflict) as err:
            note(f"no usable record: {err}")
            return None
        except BitnodeError as err:
            note(f"cannot look yet (again in {delay:.0f}s): {err}")
        await task.deferLater(clock, delay, lambda: None)
        delay = min(LOOKUP_RETRY_MAX, delay * 2)


class RecordPublisher:
    """Keeps my suppliers record in the DHT and with my suppliers (see the module docstring).

    Neighbours: ``roster()`` (positions + revision, or None when stopped),
    ``ecc_map(n)``, ``master()`` (my RSA private key), ``my_idurl()``,
    ``ttl()``, ``dht()`` (service_entangled_dht, or raises Unavailable),
    ``push(supplier_id, payload)`` (a ``Contacts`` request; fires on its Ack),
    ``call_later``, ``run_in_thread`` and ``current_id(supplier_id)`` (the
    global id that supplier has now; its own by default).
    """

    log = Logger()

    def __init__(self, clock: Any, call_later: Callable, run_in_thread: Callable, roster: Callable[[], Any],
                 ecc_map: Callable[[int], str], master: Callable[[], RsaPrivateKey], my_idurl: Callable[[], str],
                 ttl: Callable[[], int], dht: Callable[[], Any], push: Callable[[str, bytes], defer.Deferred],
                 current_id: Callable[[str], str] = lambda supplier_id: supplier_id):
        self.clock = clock
        self.call_later = call_later
        self.run_in_thread = run_in_thread
        self.roster = roster
        self.ecc_map = ecc_map
        self.master = master
        self.my_idurl = my_idurl
        self.ttl = ttl
        self.dht = dht
        self.push = push
        self.current_id = current_id
        self.value: dict | None = None
        self.dht_revision: int | None = None
        self.dht_error = ""
        #: supplier id -> signature of the value it acknowledged last
        self.handed: dict[str, str] = {}
        #: positions whose supplier the last value names by a newer name than the one it was hired under
        self.renamed = 0
        self.counters: Counter[str] = Counter()
        self._busy = False
        self._again = False
        self._call: Any = None
        self._stopped = False

    def status(self) -> dict:
        """Facts for service_info."""
        value = self.value or {}
        return {"revision": value.get("revision"), "signed_at": value.get("signed_at"), "ttl": self.ttl(),
                "dht_revision": self.dht_revision, "dht_error": self.dht_error,
                "suppliers_holding": sorted(s for s, sig in self.handed.items() if sig == value.get("signature")),
                "suppliers_renamed": self.renamed,
                **{name: self.counters[name] for name in ("published", "publish_failed", "handed_over",
                                                           "hand_over_failed", "revision_bumped", "skipped_empty")}}

    def stop(self) -> None:
        """No more publishing (a publish under way ends quietly)."""
        self._stopped = True
        self._cancel()

    def publish(self) -> None:
        """Sign and publish now (once at a time; again at once if asked meanwhile)."""
        if self._stopped:
            return
        if self._busy:
            self._again = True
            return
        self._cancel()
        self._busy = True
        d = defer.Deferred.fromCoroutine(self._publish())

        def done(result: Any) -> Any:
            self._busy = False
            if self._again and not self._stopped:
                self._again = False
                self.publish()
            return result

        d.addBoth(done)
        d.addErrback(lambda f: self.log.failure("publishing my suppliers record failed", f))

    async def _publish(self) -> None:
        roster = self.roster()
        if roster is None:
            return
        positions, revision, ttl = list(roster.positions), roster.revision, int(self.ttl())
        if not any(positions):
            # Nobody to name: the last record (and the suppliers it names, who hold my data) stays the one found.
            self.counters["skipped_empty"] += 1
            return
        master = self.master()
        current = [self._current(s) if s else "" for s in positions]
        idurls = [globalid.global_id_to_idurl(s) if s else "" for s in current]
        value = await self.run_in_thread(bound_values.sign_suppliers, master, self.my_idurl(),
                                         self.ecc_map(len(positions)), idurls, revision, ttl,
                                         int(self.clock.seconds()))
        if self._stopped:
            return
        self.value = value
        self.renamed = sum(1 for old, new in zip(positions, current, strict=True) if old != new)
        retry = await self._store(master, value, roster)
        retry = await self._hand_over(value, positions) or retry
        if self._stopped or self._again:
            return
        self._later(min(RETRY_AFTER, ttl / 2) if retry else ttl / 2)

    async def _store(self, master: RsaPrivateKey, value: dict, roster: Any) -> bool:
        """Put the value in the DHT; True when it should be tried again soon."""
        try:
            await self.dht().set_value(suppliers_key(master), value, expire=value["ttl"],
                                       record_type=records.SUPPLIERS)
        except RecordConflict:
            # The DHT holds a newer revision than my roster (one started afresh): go past it.
            await self._bump_revision(master, roster)
            return True
        except BitnodeError as err:
            self.dht_error = str(err)
            self.counters["publish_failed"] += 1
            self.log.info("suppliers record not stored in the DHT (retry soon): {err}", err=err)
            return True
        self.dht_revision, self.dht_error = value["revision"], ""
        self.counters["published"] += 1
        return False

    async def _bump_revision(self, master: RsaPrivateKey, roster: Any) -> None:
        try:
            found = await self.dht().get_value(suppliers_key(master), records.SUPPLIERS)
        except BitnodeError as err:
            self.dht_error = f"a newer record is in the DHT but cannot be read: {err}"
            return
        newest = found["value"]["revision"]
        if self.roster() is roster and roster.revision <= newest:
            roster.revision = newest
            roster.save(list(roster.positions))  # revision newest + 1, same positions
            self.counters["revision_bumped"] += 1
            self._again = True

    async def _hand_over(self, value: dict, positions: list[str]) -> bool:
        """Give the value to every hired supplier; True when one of them did not take it."""
        payload = contacts_payload(value)
        hired = [s for s in positions if s]
        outcomes = await defer.DeferredList([defer.maybeDeferred(self.push, s, payload) for s in hired],
                                            consumeErrors=True)
        missed = False
        for supplier_id, (ok, result) in zip(hired, outcomes, strict=True):
            if ok:
                self.handed[supplier_id] = value["signature"]
                self.counters["handed_over"] += 1
            else:
                missed = True
                self.counters["hand_over_failed"] += 1
                self.log.info("{supplier} did not take my suppliers record: {why}", supplier=supplier_id,
                              why=result.getErrorMessage())
        for gone in set(self.handed) - set(hired):
            del self.handed[gone]
        return missed

    def _current(self, supplier_id: str) -> str:
        """The name ``supplier_id`` has now (its own when nothing better is known)."""
        try:
            return str(self.current_id(supplier_id)) or supplier_id
        except BitnodeError:
            return supplier_id

    def _later(self, delay: float) -> None:
        self._cancel()
        self._call = self.call_later(delay, self.publish)

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
