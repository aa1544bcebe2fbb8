"""API methods for keys (key_*) and my identity (identity_*).

Thin: each method checks its arguments and calls service_identity
(:mod:`bitnode.userid.id_service`). Private keys appear in a result only when
``include_private`` asks for them; they are never logged.

Result shapes:

- a key: ``{"key_id", "alias", "creator", "fingerprint", "size", "label",
  "is_private", "public"}`` plus ``"private"`` (PKCS#8 PEM) with include_private;
- an identity: ``{"name", "global_id", "idurl", "sources", "contacts",
  "revision", "date", "version", "publickey", "fingerprint", "signingkey",
  "signature"}`` plus ``"xml"`` with include_xml_source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from bitnode import globalid
from bitnode.errors import BadRequest
from bitnode.userid.id_service import IdentityService, RotateResult, identity_as_dict

if TYPE_CHECKING:  # pragma: no cover
    from bitnode.crypt.keystore import KeyStore



class IdentityMethods:
    """key_* and identity_* methods; mixed into :class:`bitnode.interface.api.API`."""

    def _identity_service(self) -> IdentityService:
        return self.node.service_driver.running(IdentityService)

    def _keystore(self) -> KeyStore:
        return self._identity_service().require_keystore()

    # --- keys ------------------------------------------------------------------

    def key_get(self, key_id: str, include_private: bool = False) -> dict:
        """One key; the private PEM only with include_private."""
        store = self._keystore()
        globalid.KeyId.parse(key_id)
        return store.as_dict(store.get(key_id), include_private)

    def keys_list(self, sort: bool = False, include_private: bool = False) -> list:
        """Every key (master first); ``sort`` orders by alias then key id. Empty without identity."""
        store = self._identity_service().keystore
        if store is None:
            return []
        infos = store.list()
        if sort:
            infos = sorted(infos, key=lambda info: (info.alias, info.key_id))
        return [store.as_dict(info, include_private) for info in infos]

    def key_create(self, key_alias: str, key_size: int | None = None, label: str = "",
                   include_private: bool = False) -> Deferred:
        """Generate ``key_alias$<me>`` (size from personal/private-key-size when not given)."""
        store = self._keystore()
        size = key_size if key_size is not None else self.node.settings.get("personal/private-key-size")
        d = store.create(key_alias, size, label)
        d.addCallback(lambda info: store.as_dict(info, include_private))
        return d

    def key_label(self, key_id: str, label: str) -> dict:
        """Set a key's label."""
        store = self._keystore()
        globalid.KeyId.parse(key_id)
        return store.as_dict(store.label(key_id, label))

    def key_erase(self, key_id: str) -> dict:
        """Delete a key (the master key: 409)."""
        store = self._keystore()
        globalid.KeyId.parse(key_id)
        store.erase(key_id)
        return {"key_id": key_id, "erased": True}

    # --- identity ------------------------------------------------------------------

    def identity_get(self, include_xml_source: bool = False) -> dict:
        """My identity (404 when there is none)."""
        service = self._identity_service()
        return identity_as_dict(service.require_identity(), include_xml_source)

    def identity_create(self, username: str, preferred_servers: list | None = None,
                        join_network: bool = False) -> Deferred:
        """Generate keys, publish a new identity on the identity servers, then keep it."""
        d = self._identity_service().create_identity(username, list(preferred_servers or []), join_network)
        d.addCallback(identity_as_dict)
        return d

    def identity_backup(self, destination_filepath: str) -> Deferred:
        """Write IDURLs + master key + packet key to a new file (0600); 409 if the file exists."""
        service = self._identity_service()
        d = service.backup_identity(destination_filepath)
        d.addCallback(lambda path: {"destination_filepath": path, "global_id": service.my_global_id(),
                                    "idurl": service.my_idurl()})
        return d

    def identity_recover(self, private_key_source: str, known_idurl: str | None = None,
                         join_network: bool = False) -> Deferred:
        """Restore my identity from a backup text, a backup file path, or a PEM plus known_idurl."""
        if not isinstance(private_key_source, str) or not private_key_source.strip():
            raise BadRequest("private_key_source is empty")
        d = self._identity_service().recover_identity(private_key_source, known_idurl or None, join_network)
        d.addCallback(identity_as_dict)
        return d

    def identity_erase(self, erase_private_key: bool = False) -> Deferred:
        """Delete my identity (and with erase_private_key the master and packet keys).

        The spec says network services are stopped first: the service driver
        has no "stop without disabling", so instead the services that need an
        identity react to the ``my-identity-erased`` event.
        """
        d = self._identity_service().erase_identity(erase_private_key)
        d.addCallback(lambda global_id: {"erased": True, "global_id": global_id,
                                         "private_key_erased": erase_private_key})
        return d

    def identity_rotate(self) -> Deferred:
        """Move my identity to another identity server (my next live source, else a configured one)."""
        d = self._identity_service().rotate_identity()

        def shape(result: RotateResult) -> dict:
            out = identity_as_dict(result.identity)
            out["rotation"] = {
                "moved": result.moved,
                "old_global_id": result.old_global_id,
                "added_sources": list(result.added_sources),
                "refused_sources": list(result.refused_sources),
                "published_to": list(result.published_to),
                "sources_checked": [state.as_dict() for state in result.probe],
            }
            return out

        d.addCallback(shape)
        return d

    def identity_cache_list(self) -> list:
        """Identities of other users cached on this node."""
        cache = self._identity_service().cache
        return [identity_as_dict(identity) for identity in cache.list()]
