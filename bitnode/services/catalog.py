"""The list of services a node has, in one place."""

from __future__ import annotations

from bitnode.chat.nickname_service import NicknameService
from bitnode.dht.dht_service import DHTService
from bitnode.interface.webhooks import WebhooksService
from bitnode.p2p.network_service import NetworkService
from bitnode.storage.storage_service import StorageService
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_server import IdentityServerService
from bitnode.userid.id_service import IdentityService

SERVICES = (
    WebhooksService,
    IdentityServerService,
    IdentityService,
    GatewayService,
    NetworkService,
    DHTService,
    NicknameService,
    StorageService,
)
