"""A per-node :class:`Registry` of live machines.

Each node owns one registry (there is no global one).  Machines register
themselves when built with ``registry=...``; the registry numbers them,
finds them by id or kind, lists their :meth:`~automats.Automat.describe`
summaries, and relays every registered machine's state changes to its own
listeners (the node turns those into ``automat-state-changed`` events).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from twisted.logger import Logger

from automats.machine import Automat, StateListener

__all__ = ["Registry"]


class Registry:
    """The live machines of one node, numbered in registration order."""

    def __init__(self, log: Logger | None = None) -> None:
        """Create an empty registry.

        :param log: where failing listeners are logged; by default a
            ``twisted.logger.Logger``.
        """
        self.log = log if log is not None else Logger(namespace="automats.registry", source=self)
        self._next_index = 1
        self._machines: dict[str, Automat] = {}
        self._listeners: list[StateListener] = []

    def __len__(self) -> int:
        return len(self._machines)

    def __iter__(self) -> Iterator[Automat]:
        """Iterate over the registered machines in index order."""
        return iter(self._ordered())

    def __contains__(self, machine: object) -> bool:
        return any(m is machine for m in self._machines.values())

    def register(self, machine: Automat) -> int:
        """Add ``machine`` and return its index (1, 2, 3, ... never reused).

        A machine without an id gets ``f"{name}{index}"``.  Registering the
        same machine twice returns its index again.  Raises ``ValueError`` if
        another machine has the same id or the machine is in another registry
        or destroyed, ``TypeError`` if it is not an :class:`Automat`.
        """
        if not isinstance(machine, Automat):
            raise TypeError(f"only Automat instances can be registered, not {machine!r}")
        if machine in self:
            assert machine.index is not None
            return machine.index
        if machine.destroyed:
            raise ValueError(f"{machine!r} is destroyed")
        if machine._registry is not None:
            raise ValueError(f"{machine!r} is already in another registry")
        if machine.id and machine.id in self._machines:
            raise ValueError(f"a machine with id {machine.id!r} is already registered")
        index = self._next_index
        candidate_id = machine.id or f"{type(machine).name}{index}"
        if candidate_id in self._machines:
            raise ValueError(f"a machine with id {candidate_id!r} is already registered")
        self._next_index += 1
        machine._attach(self, index)
        self._machines[machine.id] = machine
        machine.add_state_listener(self._relay)
        return index

    def unregister(self, machine: Automat) -> None:
        """Remove ``machine``; do nothing if it is not registered here."""
        if self._machines.get(machine.id) is not machine:
            return
        del self._machines[machine.id]
        machine.remove_state_listener(self._relay)
        machine._detach()

    def get(self, machine_id: str) -> Automat | None:
        """Return the machine with this id, or ``None``."""
        return self._machines.get(machine_id)

    def find(self, name: str) -> list[Automat]:
        """Return the machines of kind ``name`` (their class's ``name``), in index order."""
        return [m for m in self._ordered() if type(m).name == name]

    def list(self) -> list[dict[str, Any]]:
        """Return every machine's :meth:`~automats.Automat.describe`, in index order."""
        return [m.describe() for m in self._ordered()]

    def add_listener(self, listener: StateListener) -> None:
        """Call ``listener(machine, old_state, new_state, event)`` on any registered machine's state change.

        A listener that raises is logged, and the other listeners still run.
        """
        if not callable(listener):
            raise TypeError(f"listener must be callable, not {listener!r}")
        self._listeners.append(listener)

    def remove_listener(self, listener: StateListener) -> None:
        """Stop calling ``listener``; raise ``ValueError`` if it was not added."""
        self._listeners.remove(listener)

    def _ordered(self) -> list[Automat]:
        return sorted(self._machines.values(), key=lambda m: m.index or 0)

    def _relay(self, machine: Automat, old_state: str, new_state: str, event: str) -> None:
        """The state listener installed on every registered machine."""
        for listener in list(self._listeners):
            try:
                listener(machine, old_state, new_state, event)
            except Exception:
                self.log.failure(
                    "registry listener {listener!r} failed on {machine_id}: {old} -> {new}",
                    listener=listener, machine_id=machine.id, old=old_state, new=new_state,
                )
