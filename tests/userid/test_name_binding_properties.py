"""Property tests (hypothesis): a name stays bound to its key across identity servers (issue 16.3's trust rule).

Bob's name was first seen (cached, or served by the name's own server) with
bob's key.  Whatever documents other identity servers then serve for his
names — mutated copies of his own and of a thief's: another key or the
same, rotated to any server or not, any other sources, any revision, a
flipped signature byte — and whichever servers are down, a peer that fetches
bob by any of his names gets a document with bob's key or an error, never
the thief's; the cache never binds one of bob's names to another key; and a
*moved* document for a name nobody here holds is taken only from that name's
own server.
"""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode import globalid
from bitnode.errors import BitnodeError
from bitnode.userid.id_fetcher import IdentityFetcher
from bitnode.userid.id_sources import SourceFetcher
from bitnode.userid.idcache import IdentityCache
from bitnode.userid.identity import Identity
from tests.userid.fakes import FakeServers, make_identity, rsa_key

SERVERS = ("id1.example.net:8084", "id2.example.net:8084", "id3.example.net:8084")
BOB_KEY, THIEF_KEY = 1, 2


def idurl(name: str, server: str) -> str:
    host, _, port = server.partition(":")
    return str(globalid.IdUrl(name, host, int(port)))


@st.composite
def served_documents(draw):
    """A document some server serves for bob: bob's or a thief's, moved anywhere, maybe corrupted."""
    key = draw(st.sampled_from([BOB_KEY, THIEF_KEY]))
    order = draw(st.permutations(SERVERS))
    count = draw(st.integers(min_value=1, max_value=len(SERVERS)))
    revision = draw(st.integers(min_value=1, max_value=5))
    document = make_identity("bob", rsa_key(key), servers=tuple(order[:count]), revision=revision)
    if draw(st.booleans()) and draw(st.booleans()):
        xml = bytearray(document.to_xml())
        where = draw(st.integers(min_value=0, max_value=len(xml) - 1))
        xml[where] = draw(st.integers(min_value=0, max_value=255))
        try:
            document = Identity.from_xml(bytes(xml))
        except BitnodeError:
            pass
    return document


scenarios = st.tuples(
    st.booleans(),  # bob's document is in our cache before
    st.lists(st.tuples(st.sampled_from(SERVERS), served_documents()), max_size=4),  # what servers serve now
    st.sets(st.sampled_from(SERVERS)),  # which servers are down
    st.lists(st.sampled_from(SERVERS), min_size=1, max_size=3),  # the names of bob we fetch, in turn
)


class NameBindingPropertyTests(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(scenarios)
    def test_a_name_once_bound_to_a_key_is_never_answered_with_another(self, scenario) -> None:
        held_before, served, down, asked = scenario
        bob = make_identity("bob", rsa_key(BOB_KEY), servers=SERVERS[:2])
        servers = FakeServers()
        for source in bob.sources:
            servers.docs[source] = bob.to_xml()
        cache = IdentityCache(tempfile.mkdtemp(dir=self.tmp))
        if held_before:
            cache.put(bob)
        for server, document in served:
            servers.docs[idurl("bob", server)] = document.to_xml()
        servers.down = set(down)
        fetcher = IdentityFetcher(lambda url: defer.maybeDeferred(servers.get, url), Clock())
        sources = SourceFetcher(fetcher, lambda: [(s.split(":")[0], int(s.split(":")[1])) for s in SERVERS])
        bound = {bob.idurl: bob.rsa_public_key()} if held_before else {}
        for server in asked:
            name = idurl("bob", server)
            held = cache.get(name) if cache.has(name) else None
            servers.gets.clear()
            answers: list = []
            d = defer.Deferred.fromCoroutine(sources.fetch(name, held))
            d.addCallbacks(answers.append, lambda failure: failure.trap(BitnodeError))
            if not answers:
                continue
            answer = answers[0]
            if name in bound:
                self.assertEqual(answer.rsa_public_key(), bound[name], (name, answer.sources))
            if answer.idurl != name and held is None:
                # a moved document for a name nobody here holds: only that name's own server vouches for it
                self.assertEqual(servers.gets[-1], name, (name, answer.sources))
            try:
                cache.put(answer, also_known_as=name)
            except BitnodeError:
                continue
            for known in [name, *answer.sources]:
                if cache.has(known):
                    bound.setdefault(known, cache.get(known).rsa_public_key())
        for name, key in bound.items():
            if cache.has(name):
                self.assertEqual(cache.get(name).rsa_public_key(), key, name)

    def test_a_moved_document_for_a_name_nobody_holds_is_not_taken_from_another_server(self) -> None:
        thief = make_identity("bob", rsa_key(THIEF_KEY), servers=(SERVERS[1], SERVERS[0]), revision=2)
        servers = FakeServers()
        servers.docs[idurl("bob", SERVERS[1])] = thief.to_xml()
        servers.down = {SERVERS[0]}
        fetcher = IdentityFetcher(lambda url: defer.maybeDeferred(servers.get, url), Clock())
        sources = SourceFetcher(fetcher, lambda: [(s.split(":")[0], int(s.split(":")[1])) for s in SERVERS])
        d = defer.Deferred.fromCoroutine(sources.fetch(idurl("bob", SERVERS[0])))
        self.failureResultOf(d, BitnodeError)
        self.assertEqual(sources.stats()["unconfirmed_moves"], 1)
