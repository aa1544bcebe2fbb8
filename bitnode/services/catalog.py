"""The list of services a node has, in one place."""

from __future__ import annotations

from bitnode.interface.webhooks import WebhooksService

SERVICES = (
    WebhooksService,
)
