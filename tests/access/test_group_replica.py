"""One group's log on several brokers: appends, backups that go away, takeovers (bitnode.access.group_replica).

Replicas talk through tests/access/group_net.py (frames encoded and decoded,
brokers down, links cut); time is a Clock.
"""

from __future__ import annotations

import random

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.access.group_log import CONTROL, MESSAGE
from bitnode.access.group_protocol import Redirected
from bitnode.access.group_replica import BACKUP, PRIMARY
from bitnode.errors import Unavailable
from tests.access.group_net import GROUP, ReplicaNet

B0, B1, B2 = "b0@id.net", "b1@id.net", "b2@id.net"


class ReplicaTests(unittest.TestCase):
    @inlineCallbacks
    def setUp(self):
        self.clock = Clock()
        self.net = ReplicaNet(self.clock, [B0, B1, B2])
        yield self.net.start_all()
        self.sent = 0

    def replica(self, broker):
        return self.net.replicas[broker]

    @inlineCallbacks
    def send(self, broker, sender="bob@x", message_id=None):
        self.sent += 1
        message_id = message_id or f"m{self.sent}"
        seq, new = yield self.replica(broker).append(MESSAGE, sender, message_id, 1.0, message_id.encode())
        return seq

    def assertSameCommitted(self, *brokers):
        logs = [self.net.committed_log(b) for b in brokers]
        shortest = min(len(log) for log in logs)
        for log in logs:
            self.assertEqual(log[:shortest], logs[0][:shortest])

    @inlineCallbacks
    def test_position_zero_leads_term_zero_and_an_entry_is_answered_once_a_majority_holds_it(self):
        self.assertEqual([self.replica(b).role for b in (B0, B1, B2)], [PRIMARY, BACKUP, BACKUP])
        for n in range(5):
            self.assertEqual((yield self.send(B0)), n + 1)
        self.assertEqual(self.net.committed_log(B0), [(n, 0, f"m{n}") for n in range(1, 6)])
        # the backups hold every entry and, from the commit notices, know they are committed
        for broker in (B1, B2):
            self.assertEqual(self.net.committed_log(broker), self.net.committed_log(B0))
        self.assertEqual(self.net.committed[B0], [(n, n) for n in range(1, 6)])
        self.assertEqual(self.net.committed[B1], [])  # only the primary pushes

    @inlineCallbacks
    def test_a_repeated_publish_gets_its_first_number_back(self):
        first = yield self.send(B0, message_id="same")
        yield self.send(B0)
        again = yield self.send(B0, message_id="same")
        self.assertEqual((first, again, self.replica(B0).head), (1, 1, 2))

    @inlineCallbacks
    def test_a_backup_away_does_not_stop_the_group_and_catches_up_when_back(self):
        self.net.down.add(B2)
        for _ in range(4):
            yield self.send(B0)
        self.assertEqual(self.replica(B2).head, 0)
        self.net.down.discard(B2)
        yield self.replica(B0).upkeep()
        self.assertEqual(self.net.committed_log(B2), self.net.committed_log(B0))
        self.assertEqual(len(self.net.committed_log(B2)), 4)

    @inlineCallbacks
    def test_without_a_majority_nothing_is_acknowledged_and_it_commits_when_one_is_back(self):
        self.net.down.update({B1, B2})
        failure = yield self.assertFailure(self.replica(B0).append(MESSAGE, "bob@x", "lonely", 1.0, b"x"), Unavailable)
        self.assertIn("fewer than 2", str(failure))
        self.assertEqual((self.replica(B0).head, self.replica(B0).commit), (1, 0))
        self.assertEqual(self.net.committed[B0], [])
        self.net.down.discard(B1)
        yield self.replica(B0).upkeep()
        self.assertEqual((self.replica(B0).commit, self.net.committed[B0]), (1, [(1, 1)]))
        # the sender's retry finds its entry: one copy
        self.assertEqual((yield self.send(B0, message_id="lonely")), 1)

    @inlineCallbacks
    def test_the_next_broker_takes_over_when_the_primary_dies_and_nothing_committed_is_lost(self):
        for _ in range(3):
            yield self.send(B0)
        self.net.down.add(B0)
        self.assertTrue((yield self.replica(B1).take_over()))
        self.assertEqual((self.replica(B1).role, self.replica(B1).term), (PRIMARY, 1))
        self.assertEqual(self.net.leading, [(B1, 1)])
        for _ in range(2):
            yield self.send(B1)
        self.assertEqual([m for _, _, m in self.net.committed_log(B1)], ["m1", "m2", "m3", "term-1", "m4", "m5"])
        self.assertSameCommitted(B1, B2)
        # the old primary comes back: a sync of term 1 makes it a backup of B1
        self.net.down.discard(B0)
        yield self.replica(B1).upkeep()
        self.assertEqual((self.replica(B0).role, self.replica(B0).leader, self.replica(B0).term), (BACKUP, B1, 1))
        self.assertEqual(self.net.committed_log(B0), self.net.committed_log(B1))

    @inlineCallbacks
    def test_an_entry_only_the_dead_primary_held_is_dropped_and_never_doubled(self):
        yield self.send(B0)
        self.net.down.update({B1, B2})
        yield self.assertFailure(self.replica(B0).append(MESSAGE, "bob@x", "orphan", 1.0, b"o"), Unavailable)
        self.net.down = {B0}
        yield self.replica(B1).take_over()
        yield self.send(B1, message_id="orphan")  # bob sends it again, to the new primary
        self.net.down = set()
        yield self.replica(B1).upkeep()
        for broker in (B0, B1, B2):
            ids = [m for _, _, m in self.net.committed_log(broker)]
            self.assertEqual(ids, ["m1", "term-1", "orphan"])
        self.assertEqual(self.replica(B0).head, 3)  # its own copy at 2 was replaced

    @inlineCallbacks
    def test_an_old_primary_cut_off_from_the_others_cannot_commit_and_steps_down(self):
        yield self.send(B0)
        self.net.cut.update({frozenset((B0, B1)), frozenset((B0, B2))})
        yield self.replica(B1).take_over()
        self.assertEqual(self.replica(B0).role, PRIMARY)  # nobody told it yet
        yield self.assertFailure(self.replica(B0).append(MESSAGE, "carol@x", "split", 1.0, b"s"), Unavailable)
        yield self.send(B1)
        self.net.cut.clear()
        yield self.replica(B0).upkeep()  # its own round meets a majority in term 1
        self.assertEqual((self.replica(B0).role, self.replica(B0).term), (BACKUP, 1))
        yield self.assertFailure(self.replica(B0).append(MESSAGE, "carol@x", "late", 1.0, b"l"), Redirected)
        yield self.replica(B1).upkeep()
        self.assertEqual([m for _, _, m in self.net.committed_log(B0)], ["m1", "term-1", "m2"])

    @inlineCallbacks
    def test_a_candidate_without_a_majority_does_not_lead(self):
        self.net.down.update({B0, B2})
        self.assertFalse((yield self.replica(B1).take_over()))
        self.assertEqual(self.replica(B1).role, BACKUP)
        self.assertIn("2 needed", self.replica(B1).last_error)
        yield self.assertFailure(self.replica(B1).append(MESSAGE, "bob@x", "m", 1.0, b""), Redirected)
        # its next try is its next term (4): B2 is back and promises
        self.net.down.discard(B2)
        self.assertTrue((yield self.replica(B1).take_over()))
        self.assertEqual(self.replica(B1).term, 4)

    @inlineCallbacks
    def test_the_candidate_adopts_the_longest_log_of_the_newest_term(self):
        for _ in range(2):
            yield self.send(B0)
        self.net.down.add(B1)  # B1 misses m3 (B2 has it: committed)
        yield self.send(B0)
        self.net.down = {B0}
        yield self.replica(B1).take_over()
        self.assertEqual([m for _, _, m in self.net.committed_log(B1)], ["m1", "m2", "m3", "term-1"])

    @inlineCallbacks
    def test_a_restarted_broker_is_a_backup_and_leads_again_only_through_an_election(self):
        for _ in range(2):
            yield self.send(B0)
        yield self.net.start(B0, fresh=False)
        self.assertEqual((self.replica(B0).role, self.replica(B0).head), (BACKUP, 2))
        self.assertTrue((yield self.replica(B0).take_over()))
        self.assertEqual(self.replica(B0).term, 3)  # B0 leads terms 0, 3, 6 ...
        yield self.send(B0)
        self.assertEqual([m for _, _, m in self.net.committed_log(B2)], ["m1", "m2", "term-3", "m3"])

    @inlineCallbacks
    def test_a_backup_that_never_got_the_group_is_given_its_config(self):
        self.net.replicas.pop(B2)
        original = self.net._answer

        def answer(source, peer, request):
            if peer == B2 and request.op == "host":
                return self.net.start(B2).addCallback(lambda _: ({"head": 0, "term": 0}, ()))
            return original(source, peer, request)

        self.net._answer = answer
        self.net.down.add(B1)
        self.assertEqual((yield self.send(B0)), 1)
        self.assertEqual([m for _, _, m in self.net.committed_log(B2)], ["m1"])

    @inlineCallbacks
    def test_control_entries_change_the_roster_on_every_broker(self):
        from bitnode.access import group_roster
        from bitnode.crypt import keys
        alice_key = keys.generate_rsa(1024) if False else None  # a term entry is unsigned: no key needed
        del alice_key
        blob = group_roster.encode("term", "group_0123456789abcdef0123456789abcdef$alice@id.net", B0, 1.0, term=0)
        yield self.replica(B0).append(CONTROL, B0, "t", 1.0, blob)
        self.assertEqual(self.replica(B1).roster.seq, 1)
        self.assertEqual(self.replica(B2).roster.members, {"alice@id.net": True})


class ReplicaChaosTests(unittest.TestCase):
    """Hours of simulated time: brokers die, restart and lose links at random, senders retry; the invariants
    hold: every broker commits the same log, an acknowledged entry keeps its number, nothing is doubled."""

    @inlineCallbacks
    def test_random_failures_never_lose_duplicate_or_reorder_an_acknowledged_entry(self):
        for seed in range(12):
            yield self.run_chaos(seed)

    @inlineCallbacks
    def run_chaos(self, seed):
        rng = random.Random(seed)
        clock = Clock()
        brokers = [B0, B1, B2]
        net = ReplicaNet(clock, brokers)
        yield net.start_all()
        acked: dict[str, int] = {}
        pending: list[str] = []
        for step in range(150):
            clock.advance(60)  # a minute per step: two and a half hours per run
            roll = rng.random()
            if roll < 0.08:
                net.down = {rng.choice(brokers)}
            elif roll < 0.12:
                net.down = set(rng.sample(brokers, 2))
            elif roll < 0.25:
                net.down, net.cut = set(), set()
            elif roll < 0.28:
                net.cut = {frozenset(rng.sample(brokers, 2))}  # two brokers cannot reach each other
            elif roll < 0.32:
                restarted = rng.choice(brokers)
                yield net.start(restarted, fresh=False)
            message_id = pending.pop(0) if pending and rng.random() < 0.7 else f"s{seed}-{step}"
            leader = next((b for b in brokers if net.replicas[b].role == PRIMARY and b not in net.down), None)
            if leader is None:
                alive = [b for b in brokers if b not in net.down]
                if alive:
                    yield net.replicas[rng.choice(alive)].take_over()
                pending.append(message_id)
                continue
            try:
                seq, _ = yield net.replicas[leader].append(MESSAGE, "bob@x", message_id, 1.0, message_id.encode())
            except (Unavailable, Redirected):
                pending.append(message_id)
                continue
            if message_id in acked:
                self.assertEqual(acked[message_id], seq, f"seed {seed}: {message_id} got a second number")
            acked[message_id] = seq
            for broker in brokers:
                if broker not in net.down and net.replicas[broker].role == PRIMARY:
                    yield net.replicas[broker].upkeep()
        # everyone back; a leader finishes the job
        net.down = set()
        net.cut = set()
        # a failed candidate's newer term may depose the leader on the first contact: a few rounds settle it
        for _ in range(5):
            leader = next((b for b in brokers if net.replicas[b].role == PRIMARY), None)
            if leader is None:
                yield net.replicas[rng.choice(brokers)].take_over()
                continue
            yield net.replicas[leader].replicate(net.replicas[leader].head)
            yield net.replicas[leader].upkeep()
            if net.replicas[leader].role == PRIMARY and len({net.logs[b].state(GROUP).commit for b in brokers}) == 1:
                break
        else:
            self.fail(f"seed {seed}: the brokers did not settle")
        logs = [net.committed_log(b) for b in brokers]
        self.assertEqual(logs[0], logs[1], f"seed {seed}")
        self.assertEqual(logs[0], logs[2], f"seed {seed}")
        messages = [(seq, m) for seq, _, m in logs[0] if not m.startswith("term-")]
        self.assertEqual(len({m for _, m in messages}), len(messages), f"seed {seed}: a message twice")
        for message_id, seq in acked.items():
            self.assertIn((seq, message_id), messages, f"seed {seed}: acknowledged {message_id} lost")
