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
from bitnode.main.options import DISK_SPACE, FLOAT, INTEGER, Option

PREFIX = "services/entangled-dht/"


@dataclass(frozen=True)
class DHTLimits:
    """The limits of one DHT node (defaults are the settings' defaults)."""

    #: seconds ``created`` of a first-come (nickname) record may lie in the past when a node first stores it
    first_come_max_age: float = FIRST_COME_MAX_AGE
    #: datagrams per second (and burst) accepted from one source IP, whatever its ports; 0 = no limit
    rate_per_ip: float = 200.0
    burst_per_ip: float = 400.0
    #: datagrams per second (and burst) accepted from all sources together; 0 = no limit
    rate_total: float = 2000.0
    burst_total: float = 4000.0
    #: an answer to an address without a valid token is at most this many times the request's size
    unverified_reply_factor: float = 3.0
    #: seconds per token period (a token is good for one to two periods)
    token_lifetime: float = 600.0
    #: STOREs per second (and burst) accepted from one source IP; 0 = no limit
    store_rate_per_ip: float = 20.0
    store_burst_per_ip: float = 200.0
    #: records and bytes this node holds for one writer key
    writer_max_records: int = 1000
    writer_max_bytes: int = 2 * 1024 * 1024
    #: records and bytes this node holds for others in all
    store_max_records: int = 50_000
    store_max_bytes: int = 64 * 1024 * 1024
    #: contacts a lookup takes from one answer per host other than the answering node's (reflection guard)
    lookup_contacts_per_host: int = 2
    #: republish/replication: every ``replicate_tick`` seconds at most ``replicate_batch`` records are pushed,
    #: ``replicate_concurrency`` at a time
    replicate_tick: float = 60.0
    replicate_batch: int = 100
    replicate_concurrency: int = 8


#: (setting name under ``services/entangled-dht/``, DHTLimits field, Option arguments)
_SETTINGS: tuple[tuple[str, str, Any, str, dict[str, Any]], ...] = (
    ("first-come-max-age", "first_come_max_age", FLOAT,
     "Seconds a nickname record's creation time may lie in the past when a DHT node first stores it "
     "(older claims are refused: a backdated record cannot take a name).", {"minimum": 60.0, "maximum": 86400.0}),
    ("rate-limit-per-ip", "rate_per_ip", FLOAT,
     "DHT datagrams per second accepted from one IP address, whatever its ports (0 turns the limit off).",
     {"minimum": 0.0}),
    ("rate-burst-per-ip", "burst_per_ip", FLOAT, "How many DHT datagrams one IP address may send at once.",
     {"minimum": 1.0}),
    ("rate-limit-total", "rate_total", FLOAT,
     "DHT datagrams per second accepted from all addresses together (0 turns the limit off).", {"minimum": 0.0}),
    ("rate-burst-total", "burst_total", FLOAT, "How many DHT datagrams all addresses together may send at once.",
     {"minimum": 1.0}),
    ("unverified-reply-factor", "unverified_reply_factor", FLOAT,
     "An answer to a DHT peer that has not proven its address (no token yet) is at most this many times the "
     "size of its request: no traffic amplification towards forged addresses.", {"minimum": 1.0, "maximum": 20.0}),
    ("token-lifetime", "token_lifetime", FLOAT,
     "Seconds a DHT address token stays valid (one to two of these periods).", {"minimum": 30.0,
                                                                                 "maximum": 86400.0}),
    ("store-rate-per-ip", "store_rate_per_ip", FLOAT,
     "DHT records per second one IP address may store here (0 turns the limit off).", {"minimum": 0.0}),
    ("store-burst-per-ip", "store_burst_per_ip", FLOAT, "How many DHT records one IP address may store at once.",
     {"minimum": 1.0}),
    ("writer-max-records", "writer_max_records", INTEGER,
     "DHT records this node holds for one writer key (others' records; 0 refuses them all).", {"minimum": 0}),
    ("writer-max-bytes", "writer_max_bytes", DISK_SPACE, "Bytes of DHT records this node holds for one writer key.",
     {"minimum": 0}),
    ("store-max-records", "store_max_records", INTEGER, "DHT records this node holds for others in all.",
     {"minimum": 0}),
    ("store-max-bytes", "store_max_bytes", DISK_SPACE, "Bytes of DHT records this node holds for others in all.",
     {"minimum": 0}),
    ("lookup-contacts-per-host", "lookup_contacts_per_host", INTEGER,
     "A DHT lookup takes at most this many contacts per host from one answer, unless they share the answering "
     "node's host (an answer cannot aim our lookups at one victim address).", {"minimum": 1, "maximum": 64}),
    ("replicate-tick", "replicate_tick", FLOAT,
     "Seconds between two batches of DHT records pushed to the nodes closest to them (republish, replication).",
     {"minimum": 1.0, "maximum": 3600.0}),
    ("replicate-batch", "replicate_batch", INTEGER, "At most this many DHT records are pushed per batch.",
     {"minimum": 1, "maximum": 10000}),
    ("replicate-concurrency", "replicate_concurrency", INTEGER,
     "At most this many DHT record pushes (a lookup and its STOREs) run at once.", {"minimum": 1, "maximum": 64}),
)

LIMIT_OPTIONS: tuple[Option, ...] = tuple(
    Option(PREFIX + name, kind, getattr(DHTLimits, field), text, restart_needed=True, **extra)
    for name, field, kind, text, extra in _SETTINGS
)


def limits_from_settings(settings: Any) -> DHTLimits:
    """The limits the node's settings ask for (``settings.get(key)`` for each option)."""
    return DHTLimits(**{field: settings.get(PREFIX + name) for name, field, *_ in _SETTINGS})
