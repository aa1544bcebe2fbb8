"""Tests for bitnode.interface.running: the running service, or a 503 saying why not."""

from __future__ import annotations

from types import SimpleNamespace

from twisted.trial import unittest

from bitnode.errors import Unavailable
from bitnode.interface.running import running_service


class Driver:
    """The part of the service driver running_service reads."""

    def __init__(self, slots: dict[str, dict]) -> None:
        self.slots = slots

    def names(self) -> list[str]:
        return list(self.slots)

    def is_on(self, name: str) -> bool:
        return self.slots.get(name, {}).get("state") == "ON"

    def get(self, name: str) -> object:
        return self.slots[name]["service"]

    def info(self, name: str) -> dict:
        return {key: value for key, value in self.slots[name].items() if key != "service"}


def node_with(**slots: dict) -> SimpleNamespace:
    return SimpleNamespace(service_driver=Driver(slots))


class RunningServiceTests(unittest.TestCase):
    def test_a_running_service_is_returned(self) -> None:
        service = object()
        node = node_with(service_x={"state": "ON", "service": service})
        self.assertIs(running_service(node, "service_x"), service)

    def test_a_stopped_service_is_503_with_its_state(self) -> None:
        node = node_with(service_x={"state": "OFF", "service": object()})
        err = self.assertRaises(Unavailable, running_service, node, "service_x")
        self.assertEqual((err.http_code, str(err)), (503, "service_x is not running (OFF)"))

    def test_a_failed_service_is_503_with_its_reason(self) -> None:
        node = node_with(service_x={"state": "FAILED", "reason": "port in use", "service": object()})
        err = self.assertRaises(Unavailable, running_service, node, "service_x")
        self.assertEqual(str(err), "service_x is not running (FAILED: port in use)")

    def test_a_service_the_node_does_not_have_is_503_not_installed(self) -> None:
        err = self.assertRaises(Unavailable, running_service, node_with(), "service_x")
        self.assertEqual(str(err), "service_x is not installed")
