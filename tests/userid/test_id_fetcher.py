"""Tests for bitnode.userid.id_fetcher: strangers cannot make the node fetch what and as much as they like (14.2)."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial import unittest

from bitnode.errors import NotFound, TooManyRequests, Unavailable
from bitnode.userid.id_fetcher import HostNotAllowed, IdentityFetcher

A = "http://id.example.net:8084/a.xml"
B = "http://id.example.net:8084/b.xml"
C = "http://id.example.net:8084/c.xml"
ELSEWHERE = "http://10.0.0.9:8084/x.xml"


class Server:
    """A fetch that records what it was asked and answers when the test says."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.pending: dict[str, list[Deferred]] = {}

    def __call__(self, url: str) -> Deferred:
        self.asked.append(url)
        d: Deferred = Deferred()
        self.pending.setdefault(url, []).append(d)
        return d

    def answer(self, url: str, value=None, error: Exception | None = None) -> None:
        d = self.pending[url].pop(0)
        if error is not None:
            d.errback(error)
        else:
            d.callback(value if value is not None else f"identity at {url}")


class FetcherTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.server = Server()

    def fetcher(self, **kw) -> IdentityFetcher:
        return IdentityFetcher(self.server, self.clock, **kw)

    def test_one_fetch_in_flight_per_idurl(self) -> None:
        fetcher = self.fetcher()
        first, second = fetcher.fetch(A), fetcher.fetch(A, stranger=True)
        self.assertEqual(self.server.asked, [A])
        self.server.answer(A)
        self.assertEqual(self.successResultOf(first), f"identity at {A}")
        self.assertEqual(self.successResultOf(second), f"identity at {A}")
        self.assertEqual((fetcher.stats()["coalesced"], fetcher.stats()["fetched"]), (1, 1))

    def test_our_fetches_queue_behind_the_global_cap(self) -> None:
        fetcher = self.fetcher(max_concurrent=2)
        a, b, c = fetcher.fetch(A), fetcher.fetch(B), fetcher.fetch(C)
        self.assertEqual(self.server.asked, [A, B])
        self.assertEqual((fetcher.stats()["running"], fetcher.stats()["queued"]), (2, 1))
        self.server.answer(A)
        self.assertEqual(self.server.asked, [A, B, C])
        self.server.answer(B)
        self.server.answer(C)
        for d in (a, b, c):
            self.successResultOf(d)
        self.assertEqual((fetcher.stats()["running"], fetcher.stats()["queued"]), (0, 0))

    def test_strangers_never_queue_and_have_their_own_cap(self) -> None:
        D, E = "http://id.example.net:8084/d.xml", "http://id.example.net:8084/e.xml"
        fetcher = self.fetcher(max_concurrent=3, max_stranger_concurrent=1, max_queued=5)
        fetcher.fetch(A, stranger=True)
        self.failureResultOf(fetcher.fetch(B, stranger=True), TooManyRequests)  # the strangers' cap
        fetcher.fetch(B)  # our own fetches still go
        fetcher.fetch(C)
        self.assertEqual(self.server.asked, [A, B, C])
        self.server.answer(A)
        fetcher.fetch(D)  # ours: the third slot
        self.failureResultOf(fetcher.fetch(E, stranger=True), TooManyRequests)  # all full: a stranger never waits
        waiting = fetcher.fetch(E)  # ours waits
        self.assertEqual(self.server.asked, [A, B, C, D])
        self.server.answer(B)
        self.assertEqual(self.server.asked, [A, B, C, D, E])
        self.assertNoResult(waiting)
        self.assertEqual(fetcher.stats()["busy"], 2)

    def test_the_queue_is_bounded(self) -> None:
        fetcher = self.fetcher(max_concurrent=1, max_queued=1)
        fetcher.fetch(A)
        fetcher.fetch(B)
        self.failureResultOf(fetcher.fetch(C), TooManyRequests)

    def test_a_failed_idurl_is_answered_from_the_negative_cache_for_strangers(self) -> None:
        fetcher = self.fetcher(negative_ttl=60)
        d = fetcher.fetch(A, stranger=True)
        self.server.answer(A, error=NotFound("no such identity"))
        self.failureResultOf(d, NotFound)
        for _ in range(5):
            self.failureResultOf(fetcher.fetch(A, stranger=True), NotFound)
        self.assertEqual(self.server.asked, [A])
        self.assertEqual(fetcher.stats()["negative_cached"], 5)
        # our own fetch asks again (a peer we need may be back), and a success clears the entry
        d = fetcher.fetch(A)
        self.server.answer(A)
        self.successResultOf(d)
        d = fetcher.fetch(A, stranger=True)
        self.assertEqual(self.server.asked, [A, A, A])
        self.server.answer(A)

    def test_the_negative_cache_expires(self) -> None:
        fetcher = self.fetcher(negative_ttl=60)
        d = fetcher.fetch(A, stranger=True)
        self.server.answer(A, error=Unavailable("down"))
        self.failureResultOf(d)
        self.clock.advance(60)
        fetcher.fetch(A, stranger=True)
        self.assertEqual(self.server.asked, [A, A])

    def test_the_negative_cache_is_bounded(self) -> None:
        fetcher = self.fetcher(negative_entries=2)
        for url in (A, B, C):
            d = fetcher.fetch(url)
            self.server.answer(url, error=NotFound("x"))
            self.failureResultOf(d)
        self.assertEqual(fetcher.stats()["negative_entries"], 2)

    def test_hosts_outside_the_allow_list_are_never_asked(self) -> None:
        fetcher = self.fetcher(allowed_hosts=["id.example.net", "10.0.0.9:8085"])
        self.failureResultOf(fetcher.fetch(ELSEWHERE, stranger=True), HostNotAllowed)
        self.failureResultOf(fetcher.fetch(ELSEWHERE), HostNotAllowed)
        fetcher.fetch(A)
        allowed_port = self.fetcher(allowed_hosts=["10.0.0.9:8084"])
        allowed_port.fetch(ELSEWHERE)
        self.assertEqual(self.server.asked, [A, ELSEWHERE])
        self.assertEqual(fetcher.stats()["refused_host"], 2)

    def test_a_bad_idurl_is_a_bad_request_without_a_request(self) -> None:
        from bitnode.errors import BadRequest

        self.failureResultOf(self.fetcher().fetch("not a url", stranger=True), BadRequest)
        self.assertEqual(self.server.asked, [])

    def test_a_fetch_that_raises_is_a_failure_not_a_crash(self) -> None:
        def broken(url):
            raise RuntimeError("bug")

        fetcher = IdentityFetcher(broken, self.clock)
        self.failureResultOf(fetcher.fetch(A), RuntimeError)
        self.assertEqual(fetcher.stats()["running"], 0)
