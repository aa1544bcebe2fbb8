"""A small, standalone framework for explicit finite-state machines on Twisted.

A machine is an :class:`Automat` subclass with a declarative transition table
of ``(state, event, guard, next_state, actions)`` rows and per-state timers
driven by an injected clock.  Events are handled run-to-completion.  A node
keeps its machines in a :class:`Registry`.  ``python -m automats.diagram``
renders a table as Graphviz DOT.

This package imports nothing from bitnode.
"""

from automats.machine import ANY, Automat, Row, StateListener, TransitionRecord, UnexpectedEvent
from automats.registry import Registry

__all__ = ["ANY", "Automat", "Registry", "Row", "StateListener", "TransitionRecord", "UnexpectedEvent"]
