"""The list of services a node has, in one place."""

from __future__ import annotations

from bitnode.access.friends_service import FriendsService
from bitnode.access.groups_service import GroupsService
from bitnode.access.key_exchange_service import KeyExchangeService
from bitnode.access.shares_service import SharesService
from bitnode.chat.messages_service import PrivateMessagesService
from bitnode.chat.nickname_service import NicknameService
from bitnode.customer.customer_service import CustomerService
from bitnode.dht.dht_service import DHTService
from bitnode.interface.webhooks import WebhooksService
from bitnode.p2p.network_service import NetworkService
from bitnode.p2p.stun_service import StunServerService
from bitnode.storage.backups_service import BackupsService
from bitnode.supplier.supplier_service import SupplierService
from bitnode.transport.gateway_service import GatewayService
from bitnode.userid.id_server import IdentityServerService
from bitnode.userid.id_service import IdentityService

SERVICES = (
    WebhooksService,
    IdentityServerService,
    IdentityService,
    GatewayService,
    NetworkService,
    KeyExchangeService,
    FriendsService,
    StunServerService,
    DHTService,
    NicknameService,
    PrivateMessagesService,
    GroupsService,
    SupplierService,
    CustomerService,
    BackupsService,
    SharesService,
)
