"""The whole life of a customer's suppliers record, for days of simulated time.

A simulated DHT (:class:`tests.dht.simcluster.SimCluster`, one ``SimClock``),
a customer whose :class:`RecordPublisher` signs its record with its master key
and hands it to three suppliers, each with a :class:`RecordKeeper` on its own
DHT node. The customer then disappears; the suppliers keep the record alive.
Nothing sleeps: time is the simulation's.
"""

from __future__ import annotations

from types import SimpleNamespace

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.crypt import keys
from bitnode.crypt.fastsign import generate_ed25519
from bitnode.customer.suppliers_record import RecordPublisher, suppliers_key
from bitnode.dht import bound_values, records
from bitnode.dht.dht_service import record_as_dict
from bitnode.dht.records import InvalidRecord, RecordConflict
from bitnode.dht.simnet import next_call_time
from bitnode.errors import BadRequest, Conflict, Forbidden, NotFound
from bitnode.storage.wire import parse_contacts_payload
from bitnode.supplier.record_keeper import RecordKeeper
from tests.dht.simcluster import SimCluster

ALICE_MASTER = keys.generate_rsa(2048)
MALLORY_MASTER = keys.generate_rsa(2048)
ALICE = "alice@id.local"
ALICE_IDURL = "http://id.local/alice.xml"
SUPPLIERS = ["s0@id.local", "s1@id.local", "s2@id.local"]
HOUR, DAY = 3600, 86400
KEY = suppliers_key(ALICE_MASTER)


def run_for(clock, seconds: float) -> None:
    """Step the simulation from one due call to the next for ``seconds`` (each call runs at its own time)."""
    end = clock.seconds() + seconds
    while True:
        when = next_call_time(clock)
        if when is None or when > end:
            break
        clock.advance(max(0.0, when - clock.seconds()))
    clock.advance(max(0.0, end - clock.seconds()))


def in_thread(fn, *args, **kwargs) -> defer.Deferred:
    """run_in_thread for a simulation: at once, on the caller's thread."""
    return defer.maybeDeferred(fn, *args, **kwargs)


class SimDHT:
    """What the publisher and the keeper use of service_entangled_dht, over one simulated node."""

    def __init__(self, node):
        self.node = node

    def set_value(self, key, value, expire=None, record_type=records.SKIP_VALIDATION, layer_id=0):
        return self.node.set_value(key, value, record_type, expire).addCallback(record_as_dict, layer_id)

    def get_value(self, key, record_type=None, layer_id=0):
        def found(record):
            if record is None:
                raise NotFound(f"no DHT record for {key!r}")
            return record_as_dict(record, layer_id)

        return self.node.get_value(key, record_type).addCallback(found)


class RecordLifeTests(unittest.TestCase):
    def setUp(self) -> None:
        # The DHT's own upkeep every 6 h (not hourly): it is not what these tests are about, and days of it cost.
        self.c = SimCluster(8, seed=7, k=5, refresh_interval=6 * HOUR, republish_interval=6 * HOUR,
                            replicate_interval=6 * HOUR)
        self.addCleanup(self.c.stop)
        self.clock = self.c.clock
        self.roster = SimpleNamespace(positions=list(SUPPLIERS), revision=3)
        self.roster.save = self._save_roster
        self.contracts = {s: {ALICE} for s in SUPPLIERS}
        self.nodes = {s: self.c.add_node(key=generate_ed25519()) for s in SUPPLIERS}
        self.keepers = {s: self.keeper(s) for s in SUPPLIERS}
        self.customer_node = self.c.add_node(key=generate_ed25519())
        self.unreachable: set[str] = set()
        self.publisher = RecordPublisher(self.clock, self.clock.callLater, in_thread, lambda: self.roster,
                                         lambda n: f"2-of-{n}", lambda: ALICE_MASTER, lambda: ALICE_IDURL,
                                         lambda: DAY, lambda: SimDHT(self.customer_node), self.push)
        self.addCleanup(self.publisher.stop)

    def _save_roster(self, positions) -> None:
        self.roster.positions, self.roster.revision = list(positions), self.roster.revision + 1

    def keeper(self, supplier_id: str) -> RecordKeeper:
        keeper = RecordKeeper(self.clock, in_thread, self.mktemp(), lambda: SimDHT(self.nodes[supplier_id]),
                              lambda customer: defer.succeed(ALICE_MASTER.public_key()),
                              lambda customer: customer in self.contracts[supplier_id])
        self.c.run(keeper.start())
        self.addCleanup(keeper.stop)
        return keeper

    def push(self, supplier_id: str, payload: bytes) -> defer.Deferred:
        """The customer's Contacts packet, as the supplier service takes it."""
        if supplier_id in self.unreachable:
            return defer.fail(Conflict(f"{supplier_id} does not answer"))
        return self.keepers[supplier_id].receive(ALICE, parse_contacts_payload(payload))

    def run_for(self, seconds: float) -> None:
        run_for(self.clock, seconds)

    def read(self, reader=None) -> dict:
        """What a node that never saw the record finds in the DHT now."""
        reader = reader or self.c.add_node(key=generate_ed25519())
        return self.c.run(SimDHT(reader).get_value(KEY, records.SUPPLIERS))

    def publish(self) -> None:
        self.publisher.publish()
        self.run_for(60)

    def test_the_record_outlives_its_customer_for_a_week_and_more(self) -> None:
        self.publish()
        first = self.read()
        self.assertEqual(first["value"]["revision"], 3)
        self.assertEqual(first["expires"] - first["created"], DAY)
        self.assertEqual(self.publisher.status()["suppliers_holding"], sorted(SUPPLIERS))
        for keeper in self.keepers.values():
            self.assertEqual(keeper.latest(ALICE), first["value"])

        # the customer's machine is lost: nobody will ever sign or store for it again
        self.publisher.stop()
        self.c.kill(self.customer_node)
        signed_at = first["value"]["signed_at"]
        expiries = []
        for _day in range(8):
            self.run_for(DAY)
            found = self.read()
            # the customer's signature, made a week ago, is what readers trust; the entry itself is fresh
            self.assertEqual((found["value"]["signed_at"], found["value"]["revision"]), (signed_at, 3))
            bound_values.check_suppliers(KEY, found["value"])
            self.assertGreater(found["expires"], self.clock.seconds())
            expiries.append(found["expires"])
        self.assertGreater(expiries[-1], first["expires"] + 6 * DAY)
        for keeper in self.keepers.values():
            status = keeper.status()
            self.assertGreaterEqual(status["stored"], 15, status)  # every 12 h for 8 days
            self.assertEqual(status["store_failed"], 0, status)

        # every supplier lets the customer go: the record lives out its last lifetime, then it is gone
        for contracts in self.contracts.values():
            contracts.clear()
        self.run_for(DAY // 2 + HOUR)
        self.assertEqual([k.status()["records_kept"] for k in self.keepers.values()], [0, 0, 0])
        self.run_for(DAY)
        self.assertRaises(NotFound, self.read)

    def test_older_revisions_and_foreign_signatures_are_refused_while_the_suppliers_keep_it(self) -> None:
        self.publish()
        old_value = self.read()["value"]
        self.roster.positions = [SUPPLIERS[0], SUPPLIERS[1], ""]
        self.roster.revision = 4
        self.publish()
        self.publisher.stop()
        self.c.kill(self.customer_node)
        self.run_for(3 * DAY)
        self.assertEqual(self.read()["value"]["revision"], 4)

        mallory = SimDHT(self.c.add_node(key=generate_ed25519()))
        # replaying the customer's own older value: a newer one is stored, so it is refused
        self.assertRaises(RecordConflict, self.c.run, mallory.set_value(KEY, old_value, expire=DAY,
                                                                       record_type=records.SUPPLIERS))
        # a value signed by another key cannot be put under the customer's key at all
        forged = bound_values.sign_suppliers(MALLORY_MASTER, ALICE_IDURL, "1-of-1", ["http://id.local/m.xml"],
                                             99, DAY, int(self.clock.seconds()))
        self.assertRaises(InvalidRecord, self.c.run, mallory.set_value(KEY, forged, expire=DAY,
                                                                      record_type=records.SUPPLIERS))
        # nor stretched past the lifetime the customer signed
        current = self.read()["value"]
        self.assertRaises(InvalidRecord, self.c.run, mallory.set_value(KEY, current, expire=DAY + 1,
                                                                      record_type=records.SUPPLIERS))
        self.run_for(DAY)
        found = self.read()
        self.assertEqual((found["value"]["revision"], found["value"]["suppliers"][2]), (4, ""))

    def test_a_supplier_that_missed_an_update_takes_the_newer_record_from_the_dht(self) -> None:
        self.publish()
        self.unreachable.add(SUPPLIERS[2])
        self.roster.revision = 4
        self.publish()
        self.assertEqual(self.keepers[SUPPLIERS[2]].latest(ALICE)["revision"], 3)
        self.assertEqual(self.publisher.status()["hand_over_failed"], 1)
        self.publisher.stop()
        self.c.kill(self.customer_node)
        # only the one with the old value keeps the record alive from now on
        self.contracts[SUPPLIERS[0]].clear()
        self.contracts[SUPPLIERS[1]].clear()
        self.run_for(3 * DAY)
        keeper = self.keepers[SUPPLIERS[2]]
        self.assertEqual(keeper.latest(ALICE)["revision"], 4)
        self.assertEqual(keeper.status()["newer_from_dht"], 1)
        self.assertEqual(self.read()["value"]["revision"], 4)

    def test_a_failed_hand_over_or_store_is_tried_again_within_a_minute(self) -> None:
        self.unreachable.add(SUPPLIERS[0])
        self.publish()
        self.assertNotIn(SUPPLIERS[0], self.publisher.status()["suppliers_holding"])
        self.unreachable.clear()
        self.run_for(61)
        self.assertEqual(self.publisher.status()["suppliers_holding"], sorted(SUPPLIERS))

    def test_a_roster_with_nobody_hired_does_not_replace_the_record(self) -> None:
        self.publish()
        self.roster.positions, self.roster.revision = ["", "", ""], 4
        self.publish()
        self.assertEqual(self.read()["value"]["revision"], 3)
        self.assertEqual(self.publisher.status()["skipped_empty"], 1)

    def test_a_roster_behind_the_dht_goes_past_its_revision(self) -> None:
        self.roster.revision = 9
        self.publish()
        # a new machine started counting afresh (and missed the record): its revision 1 is refused, so it bumps
        self.roster.revision = 1
        self.publish()
        self.run_for(120)
        self.assertEqual(self.roster.revision, 10)
        self.assertEqual(self.read()["value"]["revision"], 10)
        self.assertEqual(self.publisher.status()["revision_bumped"], 1)


class ReceiveTests(unittest.TestCase):
    """What a supplier takes from a customer's Contacts packet, and what survives a restart."""

    def setUp(self) -> None:
        self.c = SimCluster(4, seed=3, k=4)
        self.addCleanup(self.c.stop)
        self.folder = self.mktemp()
        self.customers = {ALICE}
        self.renewed: list[tuple[str, float]] = []
        self.keeper = self.make()

    def make(self) -> RecordKeeper:
        node = self.c.nodes[1]
        keeper = RecordKeeper(self.c.clock, in_thread, self.folder, lambda: SimDHT(node),
                              lambda customer: defer.succeed(ALICE_MASTER.public_key()), self.customers.__contains__,
                              renew=lambda customer, when: self.renewed.append((customer, when)))
        self.c.run(keeper.start())
        self.addCleanup(keeper.stop)
        return keeper

    def value(self, revision=3, master=ALICE_MASTER, idurl=ALICE_IDURL, ttl=DAY):
        return bound_values.sign_suppliers(master, idurl, "1-of-1", ["http://id.local/s0.xml"], revision, ttl,
                                           int(self.c.clock.seconds()))

    def receive(self, value, customer=ALICE):
        return self.c.run(self.keeper.receive(customer, value))

    def test_only_a_customers_own_newer_record_is_kept(self) -> None:
        self.assertRaises(Forbidden, self.receive, self.value(), "bob@id.local")
        self.assertRaises(BadRequest, self.receive, self.value(master=MALLORY_MASTER))
        self.assertRaises(BadRequest, self.receive, self.value(idurl="http://id.local/bob.xml"))
        self.assertRaises(BadRequest, self.receive, dict(self.value(), revision=7))
        self.assertRaises(BadRequest, self.receive, {"junk": True})
        self.assertEqual(self.receive(self.value(revision=3))["revision"], 3)
        self.assertEqual(self.receive(self.value(revision=5))["revision"], 5)
        self.assertRaises(Conflict, self.receive, self.value(revision=4))
        self.assertEqual(self.keeper.latest(ALICE)["revision"], 5)
        self.assertEqual(self.keeper.status()["refused"],
                         {"not_a_customer": 1, "invalid": 4, "older": 1})

    def test_kept_records_come_back_after_a_restart_and_are_stored_when_due(self) -> None:
        value = self.value(ttl=HOUR)
        self.receive(value)
        self.c.run(self.keeper.stop())
        keeper = self.make()
        self.assertEqual(keeper.latest(ALICE), value)
        # the customer stored it itself when it handed it over: the first store is half its ttl after that
        self.assertAlmostEqual(keeper.status()["next_due"], self.c.clock.seconds() + HOUR / 2, delta=1)
        run_for(self.c.clock, HOUR / 2 + 60)
        self.assertEqual(keeper.status()["stored"], 1)
        found = self.c.run(SimDHT(self.c.nodes[2]).get_value(KEY, records.SUPPLIERS))
        self.assertEqual(found["value"], value)

    def test_a_newly_kept_value_renews_the_contract_as_of_when_the_customer_signed_it(self) -> None:
        value = self.value(ttl=HOUR)
        self.receive(value)
        self.assertEqual(self.renewed, [(ALICE, value["signed_at"])])
        self.receive(value)  # the same value again is no new sign of life
        self.assertEqual(len(self.renewed), 1)
        # a newer value the customer signed while this supplier missed it: found in the DHT at the next store
        run_for(self.c.clock, 60)
        newer = self.value(revision=4, ttl=HOUR)
        self.c.run(SimDHT(self.c.nodes[2]).set_value(KEY, newer, expire=HOUR, record_type=records.SUPPLIERS))
        run_for(self.c.clock, HOUR / 2)
        self.assertEqual((self.keeper.latest(ALICE), self.renewed[-1]), (newer, (ALICE, newer["signed_at"])))

    def test_unreadable_files_are_skipped(self) -> None:
        import os

        self.receive(self.value())
        with open(os.path.join(self.folder, "garbage.json"), "w") as handle:
            handle.write("{not json")
        with open(os.path.join(self.folder, "bob@id.local.json"), "w") as handle:
            handle.write('{"format": 99}')
        self.c.run(self.keeper.stop())
        keeper = self.make()
        self.assertEqual(keeper.status()["records_kept"], 1)
