"""Iterative Kademlia lookups (FIND_NODE and FIND_VALUE) with alpha parallel requests.

A lookup keeps a shortlist of every contact it has heard of, ordered by XOR
distance to the target. It keeps up to ``alpha`` requests in flight, always to
the closest contacts not yet asked among the ``k`` closest still alive. It ends
when none of the ``k`` closest remains unasked and nothing is in flight — so
when a round brings nothing closer, the rest of the k closest get asked before
giving up, as in the paper.

A FIND_VALUE lookup stops sending new requests once ``values_wanted`` valid
copies arrived (one by default; more when the caller decides by majority, as for
first-come records), waits for those in flight, and reports every valid copy it
saw (the caller picks the best) plus the closest node that answered without the
value (a place to cache it).

Layers: in a layer lookup a node that answers without advertising the layer is
a *relay* — its answer is used, but it leaves the shortlist so it neither
appears in the result nor keeps the lookup going. Relays serve to *reach* the
layer, not to walk it: contacts not advertising the layer (as far as the answer
naming them says) are asked only until the first member answers, and at most
``max_relays`` of them; from then on members' answers drive the lookup.

Reflection: an answer may name any address as a contact, e.g. a victim's, at
many ports. From one answer a lookup takes at most ``max_per_host`` contacts
on a host other than the answering node's own (nodes sharing the answerer's
host, as on one machine or behind one NAT, are not limited); the rest are
counted in ``skipped``.

Hops: a seed is hop 1; a contact first learnt from a hop-h answer is hop h+1.
The lookup is pure logic: it sends through the ``query`` callable it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from bitnode.dht import messages
from bitnode.dht.ids import Contact
from bitnode.dht.messages import Message

#: sends FIND_NODE or FIND_VALUE to a contact; fires with the response Message
QueryFn = Callable[[Contact], Deferred]
#: validates a raw VALUE record; returns the parsed value or None if it must be ignored
AcceptFn = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class LookupResult:
    """What a lookup found."""

    target: int
    contacts: tuple[Contact, ...]
    values: tuple[tuple[Contact, Any], ...] = ()
    cache_at: Contact | None = None
    queried: int = 0
    responded: int = 0
    failed: int = 0
    hops: int = 0
    elapsed: float = 0.0
    skipped: int = 0


@dataclass
class _Entry:
    contact: Contact
    hop: int
    distance: int  # to the target, kept: the shortlist is re-sorted on every answer
    state: str = "new"  # new | asked | answered | failed
    member: bool = False
    had_value: bool = False


_by_distance = attrgetter("distance")


@dataclass
class IterativeLookup:
    """One lookup; call :meth:`start` once.

    :param target: id looked for.
    :param seeds: contacts to start from (usually our k closest).
    :param query: sends the request to one contact.
    :param own_id: never queried nor returned.
    :param layer: results only include responders advertising this layer.
    :param find_value: a FIND_VALUE lookup (``accept`` must be given).
    :param values_wanted: stop asking once this many valid values arrived.
    :param max_queries: hard cap on requests sent by this lookup.
    :param max_relays: cap on non-members asked by a layer lookup.
    :param max_per_host: contacts taken from one answer per host other than the answerer's.
    """

    target: int
    seeds: Iterable[Contact]
    query: QueryFn
    clock: IReactorTime
    own_id: int
    k: int = 20
    alpha: int = 3
    layer: int = 0
    find_value: bool = False
    values_wanted: int = 1
    accept: AcceptFn | None = None
    max_queries: int = 200
    max_relays: int = 40
    max_per_host: int = 2
    _entries: dict[int, _Entry] = field(default_factory=dict, init=False)
    _in_flight: int = field(default=0, init=False)
    _queried: int = field(default=0, init=False)
    _values: list[tuple[Contact, Any, int]] = field(default_factory=list, init=False)
    _done: Deferred | None = field(default=None, init=False)
    _started: float = field(default=0.0, init=False)
    _skipped: int = field(default=0, init=False)

    _log = Logger()

    def start(self) -> Deferred:
        """Run the lookup; fires with a :class:`LookupResult` (never fails)."""
        done = self._done = Deferred()
        self._started = self.clock.seconds()
        for c in self.seeds:
            self._learn(c, 1)
        self._pump()  # may finish at once (no seeds, or every query failed synchronously)
        return done

    # -- internals ----------------------------------------------------------------

    def _learn(self, contact: Contact, hop: int) -> None:
        if contact.node_id != self.own_id and contact.node_id not in self._entries:
            self._entries[contact.node_id] = _Entry(contact, hop, contact.node_id ^ self.target)

    def _closest_alive(self) -> list[_Entry]:
        """The shortlist window: the k best entries not failed and not known relays."""
        entries = [e for e in self._entries.values() if e.state != "failed"]
        if self.layer != 0:
            relays = sum(1 for e in entries if e.state == "answered" and not e.member)
            inside = any(e.state == "answered" and e.member for e in entries)
            use_relays = not inside and relays < self.max_relays
            entries = [
                e for e in entries
                if e.member or (e.state != "answered" and (use_relays or e.contact.in_layer(self.layer)))
            ]
        entries.sort(key=_by_distance)
        return entries[: self.k]

    def _pump(self) -> None:
        if self._done is None or self._done.called:
            return
        stop_asking = (self.find_value and len(self._values) >= self.values_wanted) or self._queried >= self.max_queries
        if not stop_asking:
            for entry in self._closest_alive():
                if self._in_flight >= self.alpha or self._queried >= self.max_queries or self._done is None:
                    break
                if entry.state == "new":
                    self._send(entry)  # may answer synchronously and re-enter _pump
        if self._in_flight == 0 and self._done is not None:
            self._finish()

    def _send(self, entry: _Entry) -> None:
        entry.state = "asked"
        self._in_flight += 1
        self._queried += 1
        d = self.query(entry.contact)
        d.addCallbacks(self._answered, self._failed, callbackArgs=(entry,), errbackArgs=(entry,))
        d.addErrback(lambda f: self._log.failure("DHT lookup step failed", f))
        d.addBoth(self._step_done)

    def _step_done(self, _: object) -> None:
        self._in_flight -= 1
        self._pump()

    def _answered(self, msg: Message, entry: _Entry) -> None:
        if msg.sender.node_id != entry.contact.node_id:
            # Someone else now answers at that address: not the contact we meant.
            entry.state = "failed"
            return
        entry.state = "answered"
        entry.member = self.layer == 0 or self.layer in msg.sender.layers
        entry.contact = Contact(
            entry.contact.node_id, entry.contact.host, entry.contact.port, msg.sender.user, msg.sender.layers
        )
        if msg.kind == messages.VALUE and self.accept is not None:
            value = self.accept(msg.body["record"])
            if value is not None:
                entry.had_value = True
                self._values.append((entry.contact, value, entry.hop))
            return
        per_host: dict[str, int] = {}
        for c in msg.body.get("contacts", ()):
            if c.host != entry.contact.host:
                per_host[c.host] = per_host.get(c.host, 0) + 1
                if per_host[c.host] > self.max_per_host:
                    self._skipped += 1
                    continue
            self._learn(c, entry.hop + 1)

    def _failed(self, failure: Any, entry: _Entry) -> None:
        entry.state = "failed"

    def _finish(self) -> None:
        answered = [e for e in self._entries.values() if e.state == "answered" and e.member]
        answered.sort(key=_by_distance)
        closest = answered[: self.k]
        without_value = [e for e in answered if not e.had_value]
        if self._values:
            hops = min(h for _, _, h in self._values)
        else:
            hops = max((e.hop for e in closest), default=0)
        result = LookupResult(
            target=self.target,
            contacts=tuple(e.contact for e in closest),
            values=tuple((c, v) for c, v, _ in self._values),
            cache_at=without_value[0].contact if (self._values and without_value) else None,
            queried=self._queried,
            responded=sum(1 for e in self._entries.values() if e.state == "answered"),
            failed=sum(1 for e in self._entries.values() if e.state == "failed"),
            hops=hops,
            elapsed=self.clock.seconds() - self._started,
            skipped=self._skipped,
        )
        done, self._done = self._done, None
        if done is not None:
            done.callback(result)
