"""Fetching a user's identity from any of its sources: one dead identity server does not hide anyone.

An identity lists several sources (IDURLs on different identity servers).
:class:`SourceFetcher` asks, in this order, until one answers:

1. the source that answered last time for this user (remembered, bounded LRU);
2. the IDURL asked for;
3. the other sources of the copy we hold (our cache), in their order;
4. the same name on the network's identity servers (``personal/identity-servers``,
   from the network file), at most ``max_network_servers`` of them.

Every request goes through the :class:`~bitnode.userid.id_fetcher.IdentityFetcher`
(its caps, its allow-list, its negative cache for strangers), so a stranger
can make us ask at most ``1 + max_network_servers`` URLs, on our own
network's servers beyond its first one, and only a few at once.

An answer is accepted only if it is the same user:

- with a copy held, the answer must carry the held key (a source listed by
  the user may be taken over by someone else: that answer is skipped);
- without one, the answer must list the asked IDURL among its sources (the
  key holder claims that name; step 2 always satisfies it, the identity
  client checks a document is served from one of its own sources);
- without one, a *moved* document (its primary is not the name asked: the
  user rotated to another server) is taken only from the asked IDURL itself:
  that server, which holds the name, vouches that the name moved.  Another
  server serving such a document for a name nobody here holds would bind
  the name to whatever key that server has for it: refused, counted as
  ``unconfirmed_moves``.  (A name's new server may be its registrant's or a
  thief's; only the old name's own server, or a copy we hold, can tell.)

Counters (:meth:`SourceFetcher.stats`): ``answered_by_other_source``,
``answered_by_network_server``, ``wrong_user`` (skipped answers),
``unconfirmed_moves`` (skipped too), ``exhausted``.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Callable

from bitnode import globalid
from bitnode.errors import BitnodeError, NotFound
from bitnode.userid.id_fetcher import IdentityFetcher
from bitnode.userid.idcache import KeyMismatch
from bitnode.userid.identity import Identity

#: Users whose last good source is remembered.
REMEMBERED_SOURCES = 10_000


class WrongUser(KeyMismatch):
    """An identity server answered with somebody else's identity for the name asked."""


class SourceFetcher:
    """Finds a user's identity through any source that answers (see the module docstring).

    :param fetcher: fetches one IDURL (with its limits).
    :param network_servers: ``() -> [(host, port)]``, the network's identity servers now.
    :param max_network_servers: how many of those are asked for a user none of whose sources answered.
    """

    def __init__(self, fetcher: IdentityFetcher, network_servers: Callable[[], list[tuple[str, int]]],
                 max_network_servers: int = 8, remembered: int = REMEMBERED_SOURCES) -> None:
        self.fetcher = fetcher
        self.network_servers = network_servers
        self.max_network_servers = max_network_servers
        self._remembered = remembered
        self._good: OrderedDict[str, str] = OrderedDict()  # a user's name -> the source that answered last
        self.counts: Counter[str] = Counter()

    async def fetch(self, idurl: str, held: Identity | None = None, stranger: bool = False) -> Identity:
        """The identity for ``idurl`` from the first source that answers with the same user.

        ``held``: our copy of that user (its key decides who the same user
        is; its sources are asked too). ``stranger``: asked because of a
        stranger's packet (the fetcher's stricter limits apply). Fails with
        the first error (the asked IDURL's own, usually) when nothing
        answered, or :class:`WrongUser` when only other users answered.
        """
        asked = str(globalid.IdUrl.parse(idurl))
        own, network = self._candidates(asked, held)
        first_error: BaseException | None = None
        wrong: WrongUser | None = None
        for url in own + network:
            try:
                answer = await self.fetcher.fetch(url, stranger=stranger)
            except BitnodeError as err:
                if first_error is None:
                    first_error = err
                continue
            problem = self._not_the_user(answer, asked, held)
            if problem is None and held is None and url != asked and answer.idurl != asked:
                self.counts["unconfirmed_moves"] += 1
                problem = (f"served {answer.global_id}, moved from {asked}; only {asked}'s own server or a copy "
                           "held here can confirm that move")
            elif problem is not None:
                self.counts["wrong_user"] += 1
            if problem is not None:
                wrong = WrongUser(f"{url}: {problem}")
                continue
            self._remember(asked, answer, url)
            if url != asked:
                self.counts["answered_by_network_server" if url in network else "answered_by_other_source"] += 1
            return answer
        self.counts["exhausted"] += 1
        if first_error is not None:
            raise first_error  # what the asked name's own server said comes first
        raise wrong if wrong is not None else NotFound(f"no source to ask for {asked}")

    def forget(self, name: str) -> None:
        """Forget the remembered source of one user name (a global id or an IDURL)."""
        self._good.pop(str(globalid.to_global_id(name)), None)

    def stats(self) -> dict:
        """The counters and how many users' good sources are remembered."""
        return {"remembered_sources": len(self._good), "max_network_servers": self.max_network_servers,
                **{key: self.counts[key] for key in ("answered_by_other_source", "answered_by_network_server",
                                                    "wrong_user", "unconfirmed_moves", "exhausted")}}

    # -- internals ----------------------------------------------------------------

    def _candidates(self, asked: str, held: Identity | None) -> tuple[list[str], list[str]]:
        name = globalid.IdUrl.parse(asked)
        own: list[str] = []
        remembered = self._good.get(str(name.global_id))
        if remembered is None and held is not None:
            remembered = self._good.get(held.global_id)
        for url in [remembered, asked, *(held.sources if held is not None else ())]:
            if url and url not in own:
                own.append(url)
        network: list[str] = []
        for host, port in self.network_servers():
            if len(network) >= self.max_network_servers:
                break
            try:
                url = str(globalid.IdUrl(name.name, host, port))
            except BitnodeError:
                continue
            if url not in own and url not in network:
                network.append(url)
        return own, network

    @staticmethod
    def _not_the_user(answer: Identity, asked: str, held: Identity | None) -> str | None:
        if held is not None:
            if answer.rsa_public_key() != held.rsa_public_key():
                return f"served another key than the one held for {held.global_id}"
            return None
        if asked not in answer.sources:
            return f"served {answer.global_id}, which does not list {asked}"
        return None

    def _remember(self, asked: str, answer: Identity, url: str) -> None:
        for name in {str(globalid.IdUrl.parse(asked).global_id), answer.global_id}:
            self._good.pop(name, None)
            self._good[name] = url
        while len(self._good) > self._remembered:
            self._good.popitem(last=False)
