"""Tests for bitnode.customer.suppliers_record: my record names my suppliers as they are called now.

A supplier that moved its identity to another identity server (its primary
died) is written into my signed record under its new IDURL, and the customer
service publishes the record again as soon as it hears of the move; the
roster keeps the name the supplier was hired under.  Fakes only (a DHT that
keeps what it is given, suppliers that acknowledge), time is a Clock.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode import globalid
from bitnode.customer.customer_service import CustomerService
from bitnode.customer.suppliers_record import RecordPublisher, summary
from bitnode.dht import bound_values
from bitnode.errors import BadRequest
from bitnode.main.events import Event
from tests.userid.fakes import rsa_key

ALICE_IDURL = "http://id1.local:8084/alice.xml"
HIRED = ["s0@id1.local_8084", "s1@id1.local_8084"]
MOVED = {"s1@id1.local_8084": "s1@id2.local_8084"}
DAY = 86400


class FakeDHT:
    """Keeps the last value stored under each key."""

    def __init__(self):
        self.values: dict[str, dict] = {}

    def set_value(self, key, value, expire=None, record_type=None):
        self.values[key] = value
        return defer.succeed({"key": key})


class RecordNamesTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.roster = SimpleNamespace(positions=list(HIRED), revision=4)
        self.dht = FakeDHT()
        self.handed: list[str] = []
        self.names = {}

        def current_id(supplier_id):
            if supplier_id == "broken@id1.local_8084":
                raise BadRequest("not a global id")
            return self.names.get(supplier_id, supplier_id)

        self.publisher = RecordPublisher(self.clock, self.clock.callLater, defer.maybeDeferred, lambda: self.roster,
                                         lambda n: f"1-of-{n}", lambda: rsa_key(0), lambda: ALICE_IDURL,
                                         lambda: DAY, lambda: self.dht, self.push, current_id=current_id)
        self.addCleanup(self.publisher.stop)

    def push(self, supplier_id, payload):
        self.handed.append(supplier_id)
        return defer.succeed(None)

    def published(self) -> dict:
        (value,) = self.dht.values.values()
        bound_values.check_suppliers(next(iter(self.dht.values)), value)  # signed by alice's key, well formed
        return summary(value, "alice@id1.local_8084")

    def test_suppliers_are_named_by_their_hire_names_until_they_move(self):
        self.publisher.publish()
        self.assertEqual(self.published()["suppliers"], HIRED)
        self.assertEqual(self.publisher.status()["suppliers_renamed"], 0)

    def test_a_moved_supplier_is_named_by_its_new_idurl_and_the_roster_keeps_the_old_name(self):
        self.publisher.publish()
        first = self.publisher.value
        self.names.update(MOVED)
        self.clock.advance(1)
        self.publisher.publish()
        found = self.published()
        self.assertEqual(found["suppliers"], ["s0@id1.local_8084", "s1@id2.local_8084"])
        self.assertEqual(found["idurls"][1], globalid.global_id_to_idurl("s1@id2.local_8084"))
        self.assertEqual(self.publisher.status()["suppliers_renamed"], 1)
        # newer than the first value (a reader and a supplier's keeper take it), same roster revision
        self.assertGreater(bound_values.order("suppliers", self.publisher.value), bound_values.order("suppliers", first))
        self.assertEqual(self.roster.positions, HIRED)
        self.assertEqual(self.handed, HIRED + HIRED)  # handed to each supplier under the name it was hired by

    def test_a_name_the_identity_cache_cannot_read_stays_as_it_is(self):
        self.roster.positions = ["broken@id1.local_8084", ""]
        self.publisher.publish()
        self.assertEqual(self.published()["suppliers"], ["broken@id1.local_8084", ""])

    def test_the_record_is_published_again_every_half_ttl_for_days(self):
        self.publisher.publish()
        self.names.update(MOVED)
        for _ in range(8):
            self.clock.advance(DAY / 2)
        self.assertEqual(self.published()["suppliers"][1], "s1@id2.local_8084")
        self.assertEqual(self.publisher.status()["published"], 9)


class SupplierMovedTests(unittest.TestCase):
    """service_customer hears ``identity-rotated`` and publishes again only for one of its suppliers."""

    def service(self) -> tuple[CustomerService, list]:
        published: list = []
        service = CustomerService.__new__(CustomerService)
        service.roster = SimpleNamespace(hired=lambda: list(HIRED))
        service.fire_hire = None
        service.publisher = SimpleNamespace(publish=lambda: published.append(True))
        aliases = dict(MOVED)
        identity = SimpleNamespace(same_user=lambda a, b: aliases.get(a, a) == aliases.get(b, b))
        service.deps = SimpleNamespace(identity=identity)
        return service, published

    def test_a_supplier_that_moved_makes_the_record_published_again(self):
        service, published = self.service()
        service._on_event(Event(1, "identity-rotated", {"old_global_id": HIRED[1], "global_id": MOVED[HIRED[1]]},
                                0.0))
        self.assertEqual(published, [True])

    def test_someone_else_moving_changes_nothing(self):
        service, published = self.service()
        service._on_event(Event(1, "identity-rotated", {"old_global_id": "x@id1.local_8084",
                                                         "global_id": "x@id2.local_8084"}, 0.0))
        service._on_event(Event(2, "identity-rotated", {}, 0.0))
        self.assertEqual(published, [])
