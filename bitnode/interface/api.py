"""The API methods: validate, call a subsystem, return a result (or a Deferred of one).

Thin on purpose: arguments arrive already typed by the route table
(:mod:`bitnode.interface.routes`); anything more than checking and calling
belongs to the subsystem. A method of the route table that is not defined
here answers 501 until its subsystem is built.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

import bitnode
from bitnode.errors import BadRequest, Conflict, NotFound
from bitnode.interface.api_access import AccessMethods
from bitnode.interface.api_dht import DHTMethods
from bitnode.interface.api_files import FilesMethods
from bitnode.interface.api_groups import GroupsMethods
from bitnode.interface.api_identity import IdentityMethods
from bitnode.interface.api_market import MarketMethods
from bitnode.interface.api_messages import MessageMethods
from bitnode.interface.api_network import NetworkMethods
from bitnode.interface.api_nicknames import NicknameMethods
from bitnode.interface.api_shares import SharesMethods
from bitnode.interface.api_stun import StunMethods
from bitnode.main.process import debug_snapshot, system_stats

if TYPE_CHECKING:  # pragma: no cover
    from bitnode.interface.api_server import ApiServer
    from bitnode.node import Node

STOP_DELAY = 0.2


class API(IdentityMethods, AccessMethods, NetworkMethods, DHTMethods, FilesMethods, NicknameMethods, StunMethods,
          MessageMethods, MarketMethods, GroupsMethods, SharesMethods):
    """Every implemented API method of one node."""

    def __init__(self, node: Node, server: ApiServer | None = None):
        self.node = node
        #: The listeners answering through this API (their addresses and refusal counters).
        self.server = server

    # --- process -------------------------------------------------------------

    def process_stop(self) -> dict:
        """Stop the node shortly after answering; once a stop or restart is under way, a no-op that says so."""
        return _end_answer("stopping", self.node.request_stop(STOP_DELAY))

    def process_restart(self) -> dict:
        """Stop the node and start it again with the same arguments, after answering (once, like process_stop)."""
        return _end_answer("restarting", self.node.request_restart(STOP_DELAY))

    def process_health(self) -> dict:
        """Alive, and whether start-up (services) has finished."""
        return {"alive": True, "ready": self.node.ready}

    def process_info(self) -> dict:
        """Version, pid, uptime, basedir, API addresses, services and system statistics."""
        node = self.node
        services = node.service_driver.list()
        return {
            "version": bitnode.__version__,
            "pid": os.getpid(),
            "started": node.started_at,
            "uptime": node.clock.seconds() - node.started_at if node.started_at else 0.0,
            "basedir": node.basedir.root,
            "ready": node.ready,
            "api": node.endpoints(),
            "api_limits": self.server.dispatcher.limits.status() if self.server is not None else {},
            "services": {"total": len(services), "on": sum(1 for s in services if s["state"] == "ON")},
            "automats": len(node.automats.list()),
            "events": {"last_seq": node.events.last_seq},
            "system": system_stats(node.basedir.root),
        }

    def process_debug(self) -> dict:
        """A diagnostic snapshot; opens pdb only in a foreground node on a terminal when allowed."""
        snapshot = debug_snapshot(self.node.clock)
        allowed = self.node.settings.get("interface/api/allow-debugger")
        if allowed and sys.stdin is not None and sys.stdin.isatty():
            import pdb

            self.node.call_later(STOP_DELAY, pdb.set_trace)
            snapshot["debugger"] = "pdb opens on the node's terminal; the node is paused until you continue"
        else:
            snapshot["debugger"] = ("not opened: needs interface/api/allow-debugger=true and a node running "
                                    "in the foreground on a terminal")
        return snapshot

    # --- settings --------------------------------------------------------------

    def config_get(self, key: str, include_info: bool = False, default: Any = None) -> dict:
        """One option; with the legacy ``default``, an unknown key answers that value instead of 404."""
        try:
            return self.node.settings.describe(key, include_info)
        except NotFound:
            if default is None:
                raise
            return {"key": key, "value": default, "type": "unknown"}

    def config_set(self, key: str, value: Any) -> dict:
        """Validate and store a new value; answers old and new values."""
        old, _ = self.node.settings.set(key, value)
        item = self.node.settings.describe(key)
        item["old_value"] = self.node.settings.option(key).render(old)
        return item

    def configs_list(self, sort: bool = False, include_info: bool = False) -> list:
        """All options."""
        return self.node.settings.as_list(sort, include_info)

    def configs_tree(self, include_info: bool = False) -> dict:
        """All options nested by key path."""
        return self.node.settings.as_tree(include_info)

    # --- services ----------------------------------------------------------------

    def services_list(self, with_configs: bool = False) -> list:
        """Every service with state, dependencies and switch."""
        return self.node.service_driver.list(with_configs)

    def service_info(self, service_name: str) -> dict:
        """One service."""
        return self.node.service_driver.info(service_name, with_configs=True)

    def service_start(self, service_name: str) -> defer.Deferred:
        """Enable and start a service (409 if a dependency is off or the start fails)."""
        return self.node.service_driver.start(service_name).addCallback(_service_outcome, "start")

    def service_stop(self, service_name: str) -> defer.Deferred:
        """Disable and stop a service and its dependents."""
        return self.node.service_driver.stop(service_name).addCallback(_service_outcome, "stop")

    def service_restart(self, service_name: str, wait_timeout: float = 10.0) -> defer.Deferred:
        """Stop and start an enabled service and its dependents (409 if the start fails)."""
        return self.node.service_driver.restart(service_name, wait_timeout).addCallback(_service_outcome, "restart")

    # --- events and automats -------------------------------------------------------

    def event_send(self, event_id: str, data: Any = None) -> dict:
        """Publish an event to every listener; answers its sequence id."""
        event = self.node.events.publish(event_id, data)
        return {"event_id": event.event_id, "seq": event.seq}

    def event_listen(self, consumer_callback_id: str, since: int | None = None,
                     polling_timeout: float = 60.0) -> defer.Deferred:
        """Long-poll for events after the consumer's cursor (or ``since``)."""
        if not consumer_callback_id or len(consumer_callback_id) > 128:
            raise BadRequest("consumer_callback_id must be 1..128 characters")
        if polling_timeout < 0 or polling_timeout > 3600:
            raise BadRequest("polling_timeout must be between 0 and 3600 seconds")
        if since is not None and since > self.node.events.last_seq:
            raise Conflict(f"event {since} has not happened yet (last is {self.node.events.last_seq})")
        return self.node.events.listen(consumer_callback_id, since, polling_timeout)

    def automats_list(self) -> list:
        """Every state machine of this node with state, timers and recent transitions."""
        return self.node.automats.list()


def _end_answer(key: str, under_way: str | None) -> dict:
    """process_stop/process_restart's answer; ``under_way`` is the stop or restart asked for before, if any."""
    if under_way is None:
        return {key: True, "pid": os.getpid()}
    return {key: key == ("stopping" if under_way == "stop" else "restarting"), "pid": os.getpid(),
            "ignored": f"a {under_way} is already under way"}


def _service_outcome(info: dict, action: str) -> dict:
    """The driver reports a failed start or stop in the service's state; the API answers it as an error."""
    if info.get("state") == "FAILED":
        raise Conflict(f"{info['name']} could not {action}: {info.get('reason') or 'see the log'}")
    return info
