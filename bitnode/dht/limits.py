"""What a DHT node allows its peers: every limit in one frozen value, and the settings that fill it.

:class:`DHTLimits` is passed to :class:`bitnode.dht.kademlia_node.DHTNode`; each field is a
setting of ``service_entangled_dht`` (:data:`LIMIT_OPTIONS`, read by
:func:`limits_from_settings`), and each limit has a counter in the node's
``stats()`` (shown by ``service_info service_entangled_dht`` and
``network_status dht=true``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bitnode.dht.records import FIRST_COME_MAX_AGE
from bitnode.main.options import FLOAT, Option

PREFIX = "services/entangled-dht/"


@dataclass(frozen=True)
class DHTLimits:
    """The limits of one DHT node (defaults are the settings' defaults)."""

    #: seconds ``created`` of a first-come (nickname) record may lie in the past when a node first stores it
    first_come_max_age: float = FIRST_COME_MAX_AGE


#: (setting name under ``services/entangled-dht/``, DHTLimits field, Option arguments)
_SETTINGS: tuple[tuple[str, str, Any, str, dict[str, Any]], ...] = (
    ("first-come-max-age", "first_come_max_age", FLOAT,
     "Seconds a nickname record's creation time may lie in the past when a DHT node first stores it "
     "(older claims are refused: a backdated record cannot take a name).", {"minimum": 60.0, "maximum": 86400.0}),
)

LIMIT_OPTIONS: tuple[Option, ...] = tuple(
    Option(PREFIX + name, kind, getattr(DHTLimits, field), text, restart_needed=True, **extra)
    for name, field, kind, text, extra in _SETTINGS
)


def limits_from_settings(settings: Any) -> DHTLimits:
    """The limits the node's settings ask for (``settings.get(key)`` for each option)."""
    return DHTLimits(**{field: settings.get(PREFIX + name) for name, field, *_ in _SETTINGS})
