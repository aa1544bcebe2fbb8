"""In-process grid: the real fire_hire and the real service_backups replace a supplier without dropping a copy.

A node runs service_backups over in-memory suppliers; its supplier provider is the
real :class:`FireHire` (the contracts are answered by the in-memory suppliers, and
CancelService makes one delete everything of ours). A replaced supplier must keep
its blocks, and be read from, until its successor holds them; only then does it
get the CancelService. After that, two more of the original suppliers may die and
the file still comes back.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest
from zope.interface import implementer

from bitnode.customer.fire_hire import FireHire
from bitnode.customer.roster import SupplierRoster
from bitnode.customer.supplier_connector import SupplierConnector
from bitnode.customer.supplier_finder import SupplierFinder
from bitnode.errors import Unavailable
from bitnode.storage.memory_grid import MemoryStorageServer
from bitnode.storage.ports import IStorageServer
from tests.interface.support import wait_until
from tests.storage.test_backups_service import MASTER, ME, StorageNodeTestCase

DEAD_AFTER = 0.5
REMOTE = MASTER + ":docs/a.bin"


@implementer(IStorageServer)
class Supplier:
    """One in-memory supplier that can die, or hold the blocks sent to it until told to let go."""

    def __init__(self):
        self.store = MemoryStorageServer()
        self.dead = False
        self.holding = False
        self.held: list[tuple[defer.Deferred, tuple]] = []

    def _alive(self):
        if self.dead:
            raise Unavailable("supplier is dead")

    def store_block(self, customer_id, path, data, data_payload=None):
        if self.dead:
            return defer.fail(Unavailable("supplier is dead"))
        if self.holding:
            d = defer.Deferred()
            self.held.append((d, (customer_id, path, data)))
            return d
        return self.store.store_block(customer_id, path, data)

    def let_go(self):
        self.holding = False
        held, self.held = self.held, []
        for d, args in held:
            self.store.store_block(*args).chainDeferred(d)

    def fetch_block(self, customer_id, path, expected_sha256=None):
        return defer.maybeDeferred(self._alive).addCallback(lambda _: self.store.fetch_block(customer_id, path))

    def list_blocks(self, customer_id, prefix):
        return defer.maybeDeferred(self._alive).addCallback(lambda _: self.store.list_blocks(customer_id, prefix))

    def delete(self, customer_id, path):
        return defer.maybeDeferred(self._alive).addCallback(lambda _: self.store.delete(customer_id, path))

    def blocks(self) -> int:
        return sum(len(space) for space in self.store._spaces.values())


class MarketGrid:
    """The supplier provider of service_backups, made of the real fire_hire over in-memory suppliers."""

    def __init__(self, case: unittest.TestCase, originals: int = 4, spares: int = 2):
        self.ids = [f"s{i}@id.example.net_8084" for i in range(originals + spares)]
        self.suppliers = {s: Supplier() for s in self.ids}
        self.spares = self.ids[originals:]
        self.cancelled: list[str] = []
        self.listeners: list = []
        directory = case.mktemp()
        os.makedirs(directory)
        roster = SupplierRoster(os.path.join(directory, "suppliers.json"))
        roster.save(self.ids[:originals])
        self.finder = SupplierFinder(reactor, self.random_suppliers, self.make_connector)
        self.wanted = originals
        self.fire_hire = FireHire(reactor, roster, self.finder, self.make_connector, lambda: self.wanted,
                                  lambda: DEAD_AFTER, self.changed, intervals={"timer-1min": 0.1, "timer-probe": 2.0},
                                  cancel_service=self.cancel_service, pause_tolerance=lambda: 5.0)
        case.addCleanup(lambda: self.fire_hire.event("shutdown") if not self.fire_hire.destroyed else None)
        self.fire_hire.event("init")

    # --- the market's neighbours ---------------------------------------------------------

    def make_connector(self, supplier_id):
        return SupplierConnector(reactor, supplier_id, self, 10**9, intervals={"timer-ping": 0.1,
                                                                               "timer-retry": 0.1})

    def random_suppliers(self, count):
        return defer.succeed(list(self.spares))

    def _answer(self, supplier_id, value):
        if self.suppliers[supplier_id].dead:
            return defer.fail(Unavailable(f"{supplier_id} does not answer"))
        return defer.succeed(value)

    def request_service(self, supplier_id, needed):
        return self._answer(supplier_id, {"accepted": True})

    def ping(self, supplier_id):
        return self._answer(supplier_id, None)

    def cancel_service(self, supplier_id):
        """CancelService: the supplier deletes everything of ours (if it answers)."""
        d = self._answer(supplier_id, None)
        d.addCallback(lambda _: self.suppliers[supplier_id].store._spaces.clear())
        return d.addCallback(lambda _: self.cancelled.append(supplier_id))

    def changed(self, positions, reason):
        for callback in list(self.listeners):
            callback()

    # --- the supplier provider -----------------------------------------------------------------

    def positions(self):
        return list(self.fire_hire.roster.positions)

    def server(self, supplier_id):
        return self.suppliers[supplier_id]

    def subscribe(self, callback):
        self.listeners.append(callback)
        return lambda: self.listeners.remove(callback)

    def settled(self):
        return None

    def retiring(self):
        return self.fire_hire.retiring()

    def rebuild_progress(self, report):
        self.fire_hire.rebuild_progress(report)

    def release(self, supplier_id):
        return self.fire_hire.release(supplier_id)


class SafeReplacementTests(StorageNodeTestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self):
        yield super().setUp()
        self.grid = MarketGrid(self)
        self.node, self.service = yield self.start(provider=self.grid)
        _, _, self.data = yield self.upload(self.service, remote=REMOTE)
        self.first = list(self.grid.positions())

    @defer.inlineCallbacks
    def test_a_supplier_replaced_on_request_is_read_until_rebuilt_then_released(self):
        old, successor = self.first[0], self.grid.spares[0]
        self.grid.suppliers[successor].holding = True  # the rebuild's stores wait
        self.grid.fire_hire.replace(0)
        self.assertEqual(self.grid.positions()[0], successor)
        yield wait_until(lambda: self.grid.suppliers[successor].held, "the rebuild to send blocks")
        # not rebuilt yet: the old supplier keeps its blocks, is read from, and is told nothing
        self.assertEqual(self.grid.cancelled, [])
        self.assertEqual([r["supplier_id"] for r in self.grid.fire_hire.retiring()], [old])
        self.assertGreater(self.grid.suppliers[old].blocks(), 0)
        self.grid.suppliers[self.first[1]].dead = True
        self.grid.suppliers[self.first[2]].dead = True
        self.assertEqual((yield self.download(self.service, REMOTE)), self.data)  # read from the retiring one
        self.grid.suppliers[self.first[1]].dead = False
        self.grid.suppliers[self.first[2]].dead = False
        # the rebuild lands: only now is the old supplier released, and it deletes our data
        held_by_old = {p: b for p, b in self.grid.suppliers[old].store._spaces[ME].items() if p.startswith("F")}
        self.grid.suppliers[successor].let_go()
        yield wait_until(lambda: self.grid.cancelled == [old], f"{old} to get its CancelService", timeout=20)
        self.assertEqual(self.grid.suppliers[old].blocks(), 0)
        self.assertEqual((self.grid.fire_hire.retiring(), self.grid.fire_hire.releasing()), ([], []))
        on_successor = self.grid.suppliers[successor].store._spaces[ME]
        self.assertEqual({p: on_successor.get(p) for p in held_by_old}, held_by_old)  # byte-identical copies
        # two more of the original suppliers die: the file still comes back
        self.grid.suppliers[self.first[1]].dead = True
        self.grid.suppliers[self.first[2]].dead = True
        self.assertEqual((yield self.download(self.service, REMOTE)), self.data)

    @defer.inlineCallbacks
    def test_a_dead_supplier_is_replaced_rebuilt_from_the_others_and_released(self):
        dead, successor = self.first[3], self.grid.spares[0]
        self.grid.suppliers[dead].dead = True
        yield wait_until(lambda: self.grid.positions()[3] == successor, f"{dead} to be replaced", timeout=20)
        self.assertEqual(self.grid.cancelled, [])
        yield wait_until(lambda: self.grid.fire_hire.releasing(), f"{dead} to be released", timeout=20)
        self.assertGreater(self.grid.suppliers[successor].blocks(), 0)
        version = self.service.catalog.latest_complete(MASTER, "docs/a.bin")["version_id"]
        self.assertEqual({holder for _, pos, _, holder in self.service.catalog.blocks(version) if pos == 3},
                         {successor})  # every block of its position is on the successor
        self.assertEqual(self.grid.cancelled, [])  # it is dead: the CancelService waits to be delivered
        for position in (0, 1):
            self.grid.suppliers[self.first[position]].dead = True
        self.assertEqual((yield self.download(self.service, REMOTE)), self.data)
        self.grid.suppliers[dead].dead = False  # it comes back: now it hears it may delete
        yield wait_until(lambda: self.grid.cancelled == [dead], f"{dead} to get its CancelService", timeout=20)

    @defer.inlineCallbacks
    def test_fewer_suppliers_re_lay_out_the_files_before_the_positions_that_went_away_are_released(self):
        old = self.service.catalog.latest_complete(MASTER, "docs/a.bin")
        self.assertEqual((old["k"], old["n"]), (2, 4))
        self.grid.wanted = 2
        self.grid.fire_hire.event("restart")
        self.assertEqual(self.grid.positions(), self.first[:2])
        self.assertEqual(sorted(r["supplier_id"] for r in self.grid.fire_hire.retiring()), self.first[2:])

        def relaid():
            version = self.service.catalog.latest_complete(MASTER, "docs/a.bin")
            return (version["k"], version["n"]) == (1, 2) and version

        new = yield wait_until(relaid, "the file to be re-laid out 1-of-2", timeout=20)
        self.assertEqual(new["created"], old["created"])
        yield wait_until(lambda: sorted(self.grid.cancelled) == self.first[2:], "positions 2 and 3 to be released",
                         timeout=20)
        self.assertEqual(self.service.status()["relayout"]["versions_done"], 1)
        # 1-of-2: either remaining supplier alone gives the file back
        self.grid.suppliers[self.first[0]].dead = True
        self.assertEqual((yield self.download(self.service, REMOTE)), self.data)

    @defer.inlineCallbacks
    def test_a_new_data_blocks_setting_re_lays_out_the_files(self):
        self.node.settings.set("services/backups/data-blocks", 3)

        def relaid():
            version = self.service.catalog.latest_complete(MASTER, "docs/a.bin")
            return (version["k"], version["n"]) == (3, 4)

        yield wait_until(relaid, "the file to be re-laid out 3-of-4", timeout=20)
        self.assertEqual(self.grid.fire_hire.retiring(), [])  # nobody leaves: the same four positions
        self.grid.suppliers[self.first[0]].dead = True
        self.assertEqual((yield self.download(self.service, REMOTE)), self.data)
