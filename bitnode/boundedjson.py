"""JSON from strangers: parsed with a nesting limit, refused with ``BadRequest`` and never anything else.

``json.loads`` recurses once per level of nesting, so ``[[[[...]]]]`` a few
thousand levels deep raises ``RecursionError`` (not a ``ValueError``), and a
few hundred levels parse into a value that crashes whatever walks it
recursively next (``json.dumps``, ``repr``, a validator).  :func:`loads`
turns both into a clean :class:`~bitnode.errors.BadRequest`.

Cost: a document with at most ``max_depth`` brackets in all (counted in C)
cannot nest deeper and is returned as parsed; only a bigger one is walked
once more, iteratively, to measure its depth.
"""

from __future__ import annotations

import json
from typing import Any

from bitnode.errors import BadRequest

#: Deepest nesting a peer's JSON document may have (ours are 3 or 4 levels deep).
MAX_DEPTH = 32


class BadJson(BadRequest, ValueError):
    """A document that is not JSON, not UTF-8, too large or nested too deeply.

    Also a ``ValueError``, so a caller's ``except ValueError`` around a
    ``json.loads`` it replaces still catches it.
    """


class TooDeep(BadJson):
    """A JSON document whose lists and objects nest deeper than allowed."""


def loads(data: bytes | bytearray | memoryview | str, what: str = "payload", max_depth: int = MAX_DEPTH,
          max_bytes: int | None = None) -> Any:
    """Parse JSON ``data``; :class:`BadJson` for anything malformed, oversize or deeper than ``max_depth``.

    ``what`` names the document in the error text.  Never raises anything else.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise BadJson(f"{what} is over {max_bytes} bytes")
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        raise BadJson(f"{what} is not UTF-8") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise TooDeep(f"{what} is nested too deeply") from None
    except ValueError as err:
        raise BadJson(f"{what} is not JSON: {err}") from None
    if text.count("[") + text.count("{") > max_depth and depth(value, max_depth) > max_depth:
        raise TooDeep(f"{what} is nested deeper than {max_depth} levels")
    return value


def depth(value: Any, stop_after: int | None = None) -> int:
    """How deeply lists and dicts nest in ``value`` (a scalar is 0); iterative, no recursion.

    With ``stop_after``, returns as soon as the depth is known to exceed it.
    """
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > deepest:
            deepest = level
            if stop_after is not None and deepest > stop_after:
                return deepest
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest
