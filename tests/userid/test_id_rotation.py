"""Tests for bitnode.userid.id_rotation: probing my sources and planning where my identity moves."""

from __future__ import annotations

from twisted.internet import defer
from twisted.trial import unittest

from bitnode import globalid
from bitnode.errors import Conflict
from bitnode.userid import id_rotation
from bitnode.userid.id_rotation import CURRENT, DEAD, MISSING, STALE, TAKEN, SourceState
from bitnode.userid.identity import MAX_SOURCES
from tests.userid.fakes import FakeClient, FakeServers, make_identity, rsa_key


def url(n: int, name: str = "alice") -> str:
    return str(globalid.IdUrl(name, f"id{n}.example.net", 8084))


def servers(*numbers: int) -> tuple[str, ...]:
    return tuple(f"id{n}.example.net:8084" for n in numbers)


class ProbeTests(unittest.TestCase):
    def test_each_source_says_what_it_holds(self) -> None:
        fake = FakeServers()
        me = make_identity("alice", rsa_key(0), servers=servers(1, 2, 3, 4, 5), revision=3)
        fake.docs[url(1)] = me.to_xml()
        fake.docs[url(2)] = make_identity("alice", rsa_key(0), servers=servers(2), revision=2).to_xml()
        fake.docs[url(4)] = make_identity("alice", rsa_key(1), servers=servers(4)).to_xml()
        fake.down.add("id5.example.net:8084")
        probe = self.successResultOf(id_rotation.probe_sources(FakeClient(fake), me))
        self.assertEqual([(p.source, p.state, p.revision) for p in probe],
                         [(url(1), CURRENT, 3), (url(2), STALE, 2), (url(3), MISSING, None),
                          (url(4), TAKEN, 1), (url(5), DEAD, None)])
        self.assertEqual(id_rotation.primary_state(probe, me).state, CURRENT)


class PlanTests(unittest.TestCase):
    def setUp(self) -> None:
        self.me = make_identity("alice", rsa_key(0), servers=servers(1, 2, 3))

    def test_the_first_live_secondary_becomes_primary_and_every_old_name_stays(self) -> None:
        probe = [SourceState(url(1), DEAD), SourceState(url(2), DEAD), SourceState(url(3), STALE)]
        plans = id_rotation.plan_rotation(self.me, probe, [url(9)])
        self.assertEqual(plans, [(url(3), url(1), url(2)), (url(9), url(1), url(2), url(3))])

    def test_taken_and_dead_sources_are_never_a_primary(self) -> None:
        probe = [SourceState(url(1), DEAD), SourceState(url(2), TAKEN), SourceState(url(3), DEAD)]
        self.assertEqual(id_rotation.plan_rotation(self.me, probe, []), [])
        self.assertEqual(id_rotation.plan_rotation(self.me, probe, [url(1)]), [])  # configured, but mine already

    def test_a_wanted_primary_only(self) -> None:
        probe = [SourceState(url(1), CURRENT), SourceState(url(2), CURRENT), SourceState(url(3), MISSING)]
        self.assertEqual(id_rotation.plan_rotation(self.me, probe, [], wanted=url(3)),
                         [(url(3), url(1), url(2))])

    def test_past_the_limit_the_oldest_dead_names_go_but_never_the_kept_one(self) -> None:
        me = make_identity("alice", rsa_key(0), servers=servers(*range(1, MAX_SOURCES + 1)))
        probe = [SourceState(s, DEAD) for s in me.sources]
        plans = id_rotation.plan_rotation(me, probe, [url(50)], keep=url(MAX_SOURCES))
        self.assertEqual(len(plans[0]), MAX_SOURCES)
        self.assertEqual(plans[0][0], url(50))
        self.assertIn(url(MAX_SOURCES), plans[0])
        self.assertNotIn(url(MAX_SOURCES - 1), plans[0])


class RotateTests(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakeServers()
        self.me = make_identity("alice", rsa_key(0), servers=servers(1, 2))
        for source in self.me.sources:
            self.fake.docs[source] = self.me.to_xml()

    def rotate(self, **kwargs):
        def sign(candidate):
            return defer.succeed(candidate.sign(rsa_key(0)))

        return defer.Deferred.fromCoroutine(id_rotation.rotate(
            FakeClient(self.fake), self.me, sign, [url(3)], 1_700_000_500, **kwargs))

    def test_the_new_primary_is_asked_first_and_alone(self) -> None:
        self.fake.down.add("id1.example.net:8084")
        signed, accepted, refused, probe = self.successResultOf(self.rotate())
        self.assertEqual(signed.sources, (url(2), url(1)))
        self.assertEqual(signed.revision, 2)
        self.assertEqual(accepted, [url(2)])
        self.assertEqual(refused, [])
        self.assertEqual([post for post in self.fake.posts if post[1] == 2], [(url(2), 2)])  # the dead one not tried

    def test_a_new_primary_that_refuses_is_skipped_and_nobody_else_was_told(self) -> None:
        self.fake.down.add("id1.example.net:8084")
        self.fake.docs[url(2)] = make_identity("alice", rsa_key(1), servers=servers(2)).to_xml()
        self.fake.docs[url(3)] = make_identity("alice", rsa_key(1), servers=servers(3)).to_xml()
        failure = self.failureResultOf(self.rotate(), Conflict)
        self.assertIn("taken", str(failure.value))
        self.assertNotIn((url(1), 2), self.fake.posts)

    def test_nowhere_to_move(self) -> None:
        self.fake.down.update({"id1.example.net:8084", "id2.example.net:8084"})
        self.failureResultOf(self.rotate(wanted=url(2)), id_rotation.NowhereToMove)
