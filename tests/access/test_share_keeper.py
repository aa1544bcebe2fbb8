"""ShareKeeper on a Clock: publishes retried until a supplier takes them, writers' files looked at on schedule."""

from __future__ import annotations

import os
from types import SimpleNamespace

from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial import unittest

from bitnode.access.share_keeper import PUBLISH_RETRY, ShareKeeper
from bitnode.access.shares import ShareRegistry
from bitnode.errors import Unavailable
from bitnode.services.background import BackgroundWork

KEY = "share_0123456789abcdef0123456789abcdef$alice@h_1"


class FlakyPublisher:
    """Refuses the first ``failures`` publishes as no supplier would take them, then takes every one."""

    def __init__(self, failures: int):
        self.failures = failures
        self.calls: list[dict] = []

    async def publish(self, key_id, members, serial, digest, readers_changed, force, timeout, reshare, absorbed):
        self.calls.append({"key_id": key_id, "members": members, "force": force})
        if len(self.calls) <= self.failures:
            raise Unavailable("none of my suppliers took it")
        return {"key_id": key_id, "serial": serial + 1, "sha256": f"d{len(self.calls)}", "index_sent": True,
                "readers_sent": force}


class KeeperClockTests(unittest.TestCase):
    def setUp(self):
        self.clock = Clock()
        self.registry = ShareRegistry(os.path.join(self.mktemp() + ".json"), self.clock)
        self.registry.put(KEY, owner_id="alice@h_1", mine=True, active=True, grantees=["bob@h_1"], writers=["bob@h_1"])
        self.absorbed: list[float] = []

    def keeper(self, publisher):
        ctx = SimpleNamespace(call_later=self.clock.callLater)
        keeper = ShareKeeper(ctx, lambda: self.registry, publisher, None, None, None, lambda key_id: True,
                             {"index_delay": lambda: 2.0, "absorb_interval": lambda: 300.0, "reshare": lambda: "writers"},
                             BackgroundWork(Logger()))

        async def absorb_now(key_id):
            self.absorbed.append(self.clock.seconds())
            return {"key_id": key_id}

        keeper.absorb_now = absorb_now
        return keeper

    def test_a_publish_no_supplier_took_is_tried_again_until_one_does_then_nothing_more(self):
        publisher = FlakyPublisher(failures=3)
        keeper = self.keeper(publisher)
        keeper.start()
        self.clock.advance(2.0)  # index-delay: the first try, refused
        self.assertEqual(len(publisher.calls), 1)
        for _ in range(3):
            self.clock.advance(PUBLISH_RETRY)
            self.clock.advance(2.0)
        self.assertEqual(len(publisher.calls), 4)
        self.assertEqual((keeper.counters["publish_failed"], keeper.counters["published"]), (3, 1))
        self.assertTrue(all(call["force"] for call in publisher.calls))  # what a stop left unsent goes out whole
        self.assertEqual(self.registry.get(KEY)["index_serial"], 1)
        # a day with nothing changed: no publish, a look at the writers' files every absorb-interval
        for _ in range(24 * 12):
            self.clock.advance(300.0)
        self.assertEqual(len(publisher.calls), 4)
        looks = int(self.clock.seconds() // 300.0)
        self.assertEqual((len(self.absorbed), looks), (looks, 288))
        keeper.stop()
        self.clock.advance(86400.0)
        self.assertEqual((len(publisher.calls), len(self.absorbed)), (4, looks))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_changes_close_together_go_out_once(self):
        publisher = FlakyPublisher(failures=0)
        keeper = self.keeper(publisher)
        keeper.start()
        self.clock.advance(2.0)
        for _ in range(10):
            keeper.schedule_publish()
            self.clock.advance(0.1)
        self.clock.advance(2.0)
        self.assertEqual([call["force"] for call in publisher.calls], [True, False])
        keeper.stop()
