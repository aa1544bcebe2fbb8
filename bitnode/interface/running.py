"""The one way an API method gets the service it works through: running, or a 503 that says why not."""

from __future__ import annotations

from typing import Any

from bitnode.errors import Unavailable


def running_service(node: Any, name: str) -> Any:
    """The service ``name`` of ``node`` if it is running.

    Otherwise Unavailable (503): ``"<name> is not installed"`` when the node
    has no such service, else ``"<name> is not running (<STATE>[: reason])"``
    with the state and the reason the service driver reports.
    """
    driver = node.service_driver
    if driver.is_on(name):
        return driver.get(name)
    if name not in driver.names():
        raise Unavailable(f"{name} is not installed")
    info = driver.info(name)
    reason = f": {info['reason']}" if info.get("reason") else ""
    raise Unavailable(f"{name} is not running ({info['state']}{reason})")
