"""API methods for the DHT (dht_*).

Thin: each method checks that service_entangled_dht runs and calls it
(:mod:`bitnode.dht.dht_service`), which validates and answers.

Result shapes:

- a contact: ``{"id": <64 hex>, "host", "port", "user": <IDURL or "">, "layers": [..]}``;
- dht_node_find: ``{"my_dht_id", "lookup", "layer_id", "closest_nodes": [contact, ...]}``;
- dht_user_random: ``[contact, ...]`` (members of the layer, never this node);
- a record (dht_value_get / dht_value_set): ``{"key", "value", "record_type",
  "layer_id", "writer_pubkey", "created", "expires", "seq"}``; dht_value_get
  answers 404 when no valid record exists;
- dht_local_db_dump: ``[{"layer", "key", "record": <signed envelope>, "expires",
  "own", "stored_at", "replicated_at"}, ...]``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from bitnode.dht.dht_service import DHTService


class DHTMethods:
    """dht_* methods; mixed into :class:`bitnode.interface.api.API`."""

    def _dht_service(self) -> DHTService:
        return self.node.service_driver.running(DHTService)

    def dht_node_find(self, node_id_64: str | None = None, layer_id: int = 0) -> Deferred:
        """The k DHT nodes closest to ``node_id_64`` (a random id when not given)."""
        return self._dht_service().find_node(node_id_64, layer_id)

    def dht_user_random(self, layer_id: int = 0, count: int = 1) -> Deferred:
        """Up to ``count`` random live nodes of ``layer_id``."""
        return self._dht_service().random_nodes(layer_id, count)

    def dht_value_get(self, key: str, record_type: str = "skip_validation", layer_id: int = 0,
                      use_cache_ttl: int | None = None) -> Deferred:
        """The best valid record stored under ``key``."""
        return self._dht_service().get_value(key, record_type, layer_id, use_cache_ttl)

    def dht_value_set(self, key: str, value: Any, expire: int | None = None, record_type: str = "skip_validation",
                      layer_id: int = 0) -> Deferred:
        """Sign ``value`` with my key and store it under ``key`` for ``expire`` seconds."""
        return self._dht_service().set_value(key, value, expire, record_type, layer_id)

    def dht_local_db_dump(self) -> list:
        """Every record held by this DHT node."""
        return self._dht_service().local_dump()
