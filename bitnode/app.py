"""The composition root: what one bitnode node is made of, built in one place.

:func:`build_node` makes the basedir layout and the settings, the
:class:`~bitnode.node.Node` (state and lifecycle), its services and the local
API server (:class:`~bitnode.interface.api_server.ApiServer`, a child service
of the node). Nothing else wires these parts together: twistd
(:mod:`bitnode.runner`), ``bitnode run``, localnet, the benchmarks and the
tests all call :func:`build_node`.

:data:`SERVICES` is every service a node has. Their order here does not
matter: the service driver orders start-up from what each service class
declares (``requires`` / ``optional``, :mod:`bitnode.services.deps`); the
generated map of that graph is ``docs/architecture.md``.
"""

from __future__ import annotations

from typing import Any, Iterable

from bitnode.access.friends_service import FriendsService
from bitnode.access.groups_service import GroupsService
from bitnode.access.key_exchange_service import KeyExchangeService
from bitnode.access.shares_service import SharesService
from bitnode.chat.messages_service import PrivateMessagesService
from bitnode.chat.nickname_service import NicknameService
from bitnode.customer.customer_service import CustomerService
from bitnode.dht.dht_service import DHTService
from bitnode.interface.api_server import ApiServer
from bitnode.interface.webhooks import WebhooksService
from bitnode.main import network_file
from bitnode.main.basedir import Basedir
from bitnode.main.schema import SCHEMA
from bitnode.main.settings import Settings
from bitnode.node import Node
from bitnode.p2p.id_rotator_service import IdentityPropagateService
from bitnode.p2p.network_service import NetworkService
from bitnode.p2p.proxy_server_service import ProxyServerService
from bitnode.p2p.proxy_transport_service import ProxyTransportService
from bitnode.p2p.stun_service import StunServerService
from bitnode.services.base import Service
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
    IdentityPropagateService,
    KeyExchangeService,
    FriendsService,
    StunServerService,
    DHTService,
    ProxyServerService,
    ProxyTransportService,
    NicknameService,
    PrivateMessagesService,
    GroupsService,
    SupplierService,
    CustomerService,
    BackupsService,
    SharesService,
)


def default_services() -> list[type[Service]]:
    """The services every node has."""
    return list(SERVICES)


def build_node(basedir: str | None = None, reactor: Any = None, overrides: dict | None = None,
               service_classes: Iterable[type[Service]] | None = None) -> Node:
    """Wire a Node: basedir layout, settings (with ``overrides``), services, and its API server.

    The node's network file (``config/network.json``, else the shipped one)
    gives the defaults of its server settings; an unusable one raises
    :class:`~bitnode.main.network_file.BadNetworkFile`.

    ``reactor`` defaults to the global reactor; tests may pass overrides such
    as ``{"interface/api/http-port": 0, "interface/api/ws-port": 0}`` to get
    free ports.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    where = Basedir.at(basedir)
    where.create()
    network = network_file.for_node(where.config)
    settings = Settings(where.settings_file, SCHEMA, overrides, defaults=network.setting_defaults())
    classes = list(service_classes) if service_classes is not None else default_services()
    node = Node(where, reactor, settings, classes)
    node.network = network
    ApiServer(node).setServiceParent(node)
    return node


def api_server(node: Node) -> ApiServer:
    """The API server of a node built by :func:`build_node` (its dispatcher, secret, API methods)."""
    return node.getServiceNamed(ApiServer.name)
