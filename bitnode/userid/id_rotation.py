"""Moving my identity between identity servers: probe my sources, plan the new order.

:func:`probe_sources` asks every source of my identity for my document, at
once, and says what each one holds (:class:`SourceState`):

- ``current``: my document at my revision;
- ``stale``:   an older revision of my document (same key);
- ``missing``: the server answers but has no document for my name;
- ``taken``:   the name there belongs to another key;
- ``dead``:    no answer (connection refused, timeout, 5xx).

A source that answers (``current``, ``stale``, ``missing``) can hold my
identity; :func:`plan_rotation` turns a probe into the source orders to try,
best first, each with a new primary (the first source, which gives my global
id):

- the live sources other than the primary, in their order;
- then identity servers from the configuration not yet among my sources.

Every other source keeps its place after the new primary: old IDURLs stay
listed (dead or not), so a peer that knows me by an old name can check, from
my signed document, that the name is mine. Past :data:`MAX_SOURCES` the
oldest dead names go, never the ``keep`` one (the name my keys are stored
under).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from twisted.internet import defer

from bitnode.errors import BitnodeError, NotFound, Unavailable
from bitnode.userid.identity import MAX_SOURCES, Identity

CURRENT, STALE, MISSING, TAKEN, DEAD = "current", "stale", "missing", "taken", "dead"
#: States of a source that answers and may hold my identity.
LIVE = frozenset({CURRENT, STALE, MISSING})


@dataclass(frozen=True)
class SourceState:
    """What one of my sources holds: ``state`` (see the module docstring), its revision, the error text."""

    source: str
    state: str
    revision: int | None = None
    error: str = ""

    def as_dict(self) -> dict:
        """The API shape."""
        return {"source": self.source, "state": self.state, "revision": self.revision, "error": self.error}


@dataclass(frozen=True)
class RotateResult:
    """What a rotation did: the new identity, the name it had before, and where it was published."""

    identity: Identity
    old_global_id: str
    added_sources: tuple[str, ...]
    refused_sources: tuple[str, ...]
    published_to: tuple[str, ...]
    probe: tuple[SourceState, ...] = ()

    @property
    def moved(self) -> bool:
        """True when the primary (and so the global id) changed."""
        return self.identity.global_id != self.old_global_id


def probe_sources(client: Any, me: Identity) -> defer.Deferred:
    """Deferred[list[SourceState]]: what each of my sources holds now, in my sources' order.

    ``client`` fetches one IDURL (``fetch(idurl) -> Deferred[Identity]``,
    the identity client: verified, served from one of its own sources).
    """
    async def one(source: str) -> SourceState:
        try:
            found = await client.fetch(source)
        except NotFound as err:
            return SourceState(source, MISSING, None, str(err))
        except Unavailable as err:
            return SourceState(source, DEAD, None, str(err))
        except BitnodeError as err:
            # a document that does not verify or is not served from its own sources: not mine
            return SourceState(source, TAKEN, None, str(err))
        if found.rsa_public_key() != me.rsa_public_key():
            return SourceState(source, TAKEN, found.revision, "the name is held by another key")
        return SourceState(source, CURRENT if found.revision >= me.revision else STALE, found.revision)

    d = defer.gatherResults([defer.Deferred.fromCoroutine(one(source)) for source in me.sources],
                            consumeErrors=True)
    return d


def primary_state(probe: Iterable[SourceState], me: Identity) -> SourceState | None:
    """The probe's entry for my primary source."""
    return next((state for state in probe if state.source == me.idurl), None)


def plan_rotation(me: Identity, probe: list[SourceState], configured: list[str], keep: str = "",
                  wanted: str = "") -> list[tuple[str, ...]]:
    """Source orders to try, best first; each starts with another primary (see the module docstring).

    ``configured``: IDURLs of my name on the configured identity servers;
    ``keep``: a source never dropped; ``wanted``: only this new primary
    (empty: any). An empty list means there is nowhere to move to.
    """
    states = {state.source: state.state for state in probe}
    targets = [source for source in me.sources[1:] if states.get(source) in LIVE]
    targets += [url for url in configured if url not in me.sources and url not in targets]
    if wanted:
        targets = [url for url in targets if url == wanted]
    # a new server joins as primary too: every old source stays one of my names
    return [_capped((target, *[s for s in me.sources if s != target]), states, keep) for target in targets]


def _capped(sources: tuple[str, ...], states: dict[str, str], keep: str) -> tuple[str, ...]:
    """At most MAX_SOURCES: drop dead old names first (oldest last in the list), never the primary or ``keep``."""
    result = list(sources)
    while len(result) > MAX_SOURCES:
        droppable = [s for s in result[1:] if s != keep and states.get(s) not in LIVE]
        victim = droppable[-1] if droppable else next(s for s in reversed(result[1:]) if s != keep)
        result.remove(victim)
    return tuple(result)


class NowhereToMove(Unavailable):
    """No identity server other than my primary answers, and none is configured that I do not use yet."""


async def rotate(client: Any, current: Identity, sign: Callable[[Identity], defer.Deferred], configured: list[str],
                 now: float, keep: str = "", wanted: str = "") -> tuple[Identity, list[str], list[str], list[SourceState]]:
    """Probe my sources, then publish the first planned order whose new primary accepts it.

    ``sign(candidate) -> Deferred[Identity]`` signs with my master key.
    Nothing is stored here: the caller keeps the published revision. Fires
    with ``(signed, accepted sources, refused new primaries, probe)``;
    :class:`NowhereToMove` when there is no other server to try, else the
    last publish error when no new primary accepted.
    """
    probe = await probe_sources(client, current)
    plans = plan_rotation(current, probe, configured, keep=keep, wanted=wanted)
    states = {state.source: state.state for state in probe}
    if not plans:
        raise NowhereToMove("no identity server other than my primary answers")
    refused: list[str] = []
    last_error: BaseException | None = None
    for order in plans:
        signed = await sign(current.updated(now=now, sources=order))
        try:
            # the new primary first, alone: nobody else may serve a document naming a primary that refused it
            accepted = list(await client.publish_to(signed, [signed.idurl]))
        except BitnodeError as err:
            last_error = err
            refused.append(signed.idurl)
            continue
        others = [s for s in signed.sources[1:] if states.get(s) != DEAD]
        try:
            accepted += await client.publish_to(signed, others) if others else []
        except BitnodeError:
            pass  # the others are told later (id_rotator republishes to stale sources)
        return signed, accepted, refused, list(probe)
    assert last_error is not None
    raise last_error
