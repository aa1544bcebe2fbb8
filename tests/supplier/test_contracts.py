"""Tests for bitnode.supplier.contracts: the contracts file, and silent customers' data over weeks of Clock time.

The sweeper runs with the real book, desk and disk store; only time (a
``Clock``), the connectivity check and the last "is it alive?" question are
fakes. A round every hour, as by default.
"""

from __future__ import annotations

import json
import os

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.storage import wire
from bitnode.supplier.contracts import DAY, ContractBook, ContractSweeper, ContractTerms
from bitnode.supplier.desk import SupplierDesk
from bitnode.supplier.disk_store import DiskStore
from bitnode.transport.commands import Command
from tests.support import clock_at

ALICE = "alice@127.0.0.1_8084"
BOB = "bob@127.0.0.1_8084"
HOUR = 3600.0
TERMS = ContractTerms(period=30 * DAY, grace=30 * DAY, check_interval=HOUR)


class ContractBookTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp(), "customers.json")
        os.makedirs(os.path.dirname(self.path))
        self.clock = clock_at(1_000_000)

    def book(self, run=None) -> ContractBook:
        return ContractBook(self.path, run or (lambda fn, *a: defer.maybeDeferred(fn, *a)), self.clock)

    def test_a_format_1_file_is_read_and_written_back_as_format_2(self) -> None:
        with open(self.path, "w") as handle:
            json.dump({"format": 1, "customers": {ALICE: {"quota_bytes": 500, "since": 10.0}}, "rejected": [BOB]},
                      handle)
        book = self.book()
        self.assertEqual((book.customers[ALICE].quota_bytes, book.customers[ALICE].since), (500, 10.0))
        self.assertEqual(book.customers[ALICE].last_seen, self.clock.seconds())  # silence counts from the upgrade
        self.assertEqual(book.rejected, {BOB})
        self.successResultOf(book.save())
        with open(self.path) as handle:
            saved = json.load(handle)
        self.assertEqual(saved["format"], 2)
        self.assertEqual(saved["customers"][ALICE], {"quota_bytes": 500, "since": 10.0,
                                                     "last_seen": self.clock.seconds(), "silent_for": 0.0})

    def test_saves_made_while_one_is_written_share_the_next_write(self) -> None:
        queued = []

        def later(fn, *args):
            d = defer.Deferred()
            queued.append((d, fn, args))
            return d

        book = self.book(later)
        book.set_quota(ALICE, 100)
        first = book.save()
        book.set_quota(BOB, 200)
        second, third = book.save(), book.save()
        self.assertEqual(len(queued), 1)
        d, fn, args = queued.pop()
        d.callback(fn(*args))
        self.successResultOf(first)
        self.assertNoResult(second)
        self.assertEqual(len(queued), 1)  # one more write holds both later changes
        d, fn, args = queued.pop()
        d.callback(fn(*args))
        self.successResultOf(second)
        self.successResultOf(third)
        self.assertEqual(book.writes, 2)
        self.assertEqual(sorted(self.book().customers), [ALICE, BOB])

    def test_a_sign_of_life_is_never_dated_in_the_future_or_backwards(self) -> None:
        book = self.book()
        book.set_quota(ALICE, 100)
        contract = book.customers[ALICE]
        contract.last_seen, contract.silent_for = self.clock.seconds() - 10 * DAY, 10 * DAY
        self.assertTrue(book.renew(ALICE, self.clock.seconds() - DAY))  # a record signed a day ago
        self.assertEqual(contract.silent_for, DAY)
        self.assertTrue(book.renew(ALICE, self.clock.seconds() + 10 * DAY))  # clamped to now
        self.assertEqual((contract.last_seen, contract.silent_for), (self.clock.seconds(), 0.0))
        self.assertTrue(book.renew(ALICE, 5.0))  # older than what we know: changes nothing
        self.assertEqual(contract.last_seen, self.clock.seconds())
        self.assertFalse(book.renew(BOB))

    def test_terms_show_when_the_contract_expires_and_the_data_goes(self) -> None:
        book = self.book()
        book.set_quota(ALICE, 100)
        book.customers[ALICE].silent_for = 31 * DAY
        terms = book.terms(ALICE, TERMS)
        now = self.clock.seconds()
        self.assertEqual((terms["contract_expires"], terms["contract_expired"], terms["data_removed_after"]),
                         (now, True, now + 29 * DAY))


class SweeperOverWeeksTests(unittest.TestCase):
    def setUp(self) -> None:
        root = self.mktemp()
        os.makedirs(root)
        self.clock = clock_at(1_700_000_000)
        self.connected = True
        self.alive: set[str] = set()
        self.asked: list[str] = []
        self.ended: list[tuple[str, str]] = []
        self.desk = SupplierDesk(DiskStore(os.path.join(root, "customers")), os.path.join(root, "customers.json"),
                                 lambda: 10 ** 9, self.clock, on_ended=lambda c, r: self.ended.append((c, r)))
        for customer in (ALICE, BOB):
            self.successResultOf(self.desk.handle(customer, Command.REQUEST_SERVICE,
                                                  wire.encode_json({"version": 1, "needed_bytes": 10 ** 6})))
            self.successResultOf(self.desk.handle(customer, Command.DATA,
                                                  wire.encode_data("F1-aa/0/0", b"data of " + customer.encode())))
        self.sweeper = ContractSweeper(self.clock, self.desk.book, lambda: TERMS, lambda: self.connected,
                                       self.is_alive, lambda c: self.desk.cancel(c, reason="expired"))
        self.sweeper.start()
        self.addCleanup(self.sweeper.stop)

    def is_alive(self, customer_id: str) -> defer.Deferred:
        self.asked.append(customer_id)
        return defer.succeed(customer_id in self.alive)

    def days(self, n: float, every=None) -> None:
        """Let ``n`` days pass an hour at a time, calling ``every(day)`` at the start of each day."""
        for hour in range(int(n * 24)):
            if every is not None and hour % 24 == 0:
                every(hour // 24)
            self.clock.advance(HOUR)

    def has_data(self, customer_id: str) -> bool:
        return os.path.isdir(os.path.join(self.desk.store.root, customer_id))

    def test_a_silent_customer_is_removed_after_the_contract_and_the_grace(self) -> None:
        self.days(59.9)
        self.assertEqual(self.ended, [])
        self.assertTrue(self.has_data(ALICE))
        self.assertTrue(self.desk.book.terms(ALICE, TERMS)["contract_expired"])
        self.days(0.2)
        self.assertEqual(sorted(self.ended), [(ALICE, "expired"), (BOB, "expired")])
        self.assertEqual(self.asked, [ALICE, BOB])  # each was asked once, right before
        self.assertFalse(self.has_data(ALICE))
        self.assertEqual(self.desk.customers, {})
        self.assertEqual(self.sweeper.counters["removed"], 2)
        with open(self.desk.book.path) as handle:
            self.assertEqual(json.load(handle)["customers"], {})

    def test_a_customer_that_keeps_talking_is_kept_for_months(self) -> None:
        self.days(120, every=lambda day: day % 7 == 0 and self.desk.handle(ALICE, Command.LIST_FILES, b""))
        self.assertEqual(self.ended, [(BOB, "expired")])
        self.assertTrue(self.has_data(ALICE))
        self.assertLess(self.desk.book.customers[ALICE].silent_for, 8 * DAY)

    def test_a_silent_customer_whose_record_is_alive_is_kept(self) -> None:
        self.alive.add(ALICE)  # the record keeper (or a ping) says the customer lives
        self.days(90)
        self.assertEqual(self.ended, [(BOB, "expired")])
        self.assertTrue(self.has_data(ALICE))
        self.assertGreaterEqual(self.sweeper.counters["kept_alive"], 1)
        # the answer renewed the contract: the next question comes only after another 60 days
        self.assertEqual(self.asked.count(ALICE), 1)
        self.alive.clear()
        self.days(61)
        self.assertIn((ALICE, "expired"), self.ended)

    def test_time_this_supplier_was_offline_is_not_silence(self) -> None:
        self.connected = False
        self.days(90)
        self.assertEqual(self.ended, [])
        self.assertEqual(self.sweeper.counters["rounds_not_judged"], 90 * 24)
        self.connected = True
        self.days(59)
        self.assertEqual(self.ended, [])
        self.days(1.1)
        self.assertEqual(len(self.ended), 2)

    def test_a_pause_of_the_process_counts_as_two_rounds_at_most(self) -> None:
        self.sweeper.stop()
        self.clock.advance(100 * DAY)  # the machine slept: no round ran
        self.sweeper.start()
        self.sweeper._last -= 100 * DAY  # as if the last round was before the sleep
        self.days(1)
        self.assertEqual(self.ended, [])
        self.assertLess(self.desk.book.customers[ALICE].silent_for, 1.2 * DAY)

    def test_a_check_that_fails_keeps_the_data(self) -> None:
        self.is_alive = lambda customer_id: defer.fail(RuntimeError("record keeper broke"))
        self.sweeper.alive = self.is_alive
        self.days(61)
        self.assertEqual(self.ended, [])
        self.assertTrue(self.has_data(ALICE))
        self.assertGreater(self.sweeper.counters["check_errors"], 0)

    def test_data_left_without_a_contract_is_taken_on_and_expires(self) -> None:
        os.remove(self.desk.book.path)  # the contracts file was lost; bob's and alice's blocks are still there
        desk = SupplierDesk(self.desk.store, self.desk.book.path, lambda: 10 ** 9, self.clock,
                            on_ended=lambda c, r: self.ended.append((c, r)))
        self.assertEqual(sorted(desk.orphans_adopted), [ALICE, BOB])
        self.assertEqual((desk.customers[ALICE].quota_bytes, desk.customers[ALICE].last_seen), (0, self.clock.seconds()))
        self.sweeper.stop()
        sweeper = ContractSweeper(self.clock, desk.book, lambda: TERMS, lambda: True, self.is_alive,
                                  lambda c: desk.cancel(c, reason="expired"))
        sweeper.start()
        self.addCleanup(sweeper.stop)
        self.successResultOf(desk.handle(ALICE, Command.REQUEST_SERVICE,  # alice comes back: her quota again
                                         wire.encode_json({"version": 1, "needed_bytes": 10 ** 6})))
        self.days(60.1, every=lambda day: desk.handle(ALICE, Command.LIST_FILES, b""))
        self.assertEqual(self.ended, [(BOB, "expired")])
        self.assertEqual(desk.customers[ALICE].quota_bytes, 10 ** 6)

    def test_a_shorter_round_interval_applies_from_now(self) -> None:
        terms = [TERMS]
        self.sweeper.terms = lambda: terms[0]
        self.clock.advance(60.0)
        terms[0] = ContractTerms(period=TERMS.period, grace=TERMS.grace, check_interval=10.0)
        self.sweeper.reschedule()
        self.clock.advance(10.0)
        self.assertEqual(self.sweeper.counters["rounds"], 1)  # not an hour later

    def test_the_counted_silence_survives_a_restart(self) -> None:
        self.days(40)
        again = ContractBook(self.desk.book.path, lambda fn, *a: defer.maybeDeferred(fn, *a), self.clock)
        self.assertGreaterEqual(again.customers[ALICE].silent_for, 39 * DAY)  # saved once a day
