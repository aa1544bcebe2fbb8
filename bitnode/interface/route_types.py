"""The building blocks of the route table: parameter types, :class:`Param` and :class:`Route`.

:mod:`bitnode.interface.routes` holds the table itself (``ROUTES``) and
:mod:`bitnode.interface.routes_legacy` the legacy names (``LEGACY``); both
are made of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from bitnode import boundedjson
from bitnode.errors import BadRequest
from bitnode.main.options import parse_bool, parse_float, parse_int, parse_string_list


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def _parse_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise BadRequest(f"expected a string, got {type(value).__name__}")


def _parse_json(value: Any, max_depth: int = boundedjson.MAX_DEPTH) -> Any:
    """JSON bodies arrive parsed; text (a query string's) is parsed when it is JSON, else kept as text.

    Text that is JSON nested deeper than ``max_depth`` is refused (TooDeep), not kept.
    """
    if isinstance(value, str):
        try:
            return boundedjson.loads(value, "the value", max_depth)
        except boundedjson.TooDeep:
            raise
        except boundedjson.BadJson:
            return value
    return value


def _parse_list(value: Any, max_depth: int = boundedjson.MAX_DEPTH) -> list:
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = boundedjson.loads(value, "the list", max_depth)
        except boundedjson.TooDeep:
            raise
        except boundedjson.BadJson:
            raise BadRequest("expected a list") from None
    return parse_string_list(value)


@dataclass(frozen=True)
class ParamType:
    """How a parameter value is read from JSON or from query-string text."""

    name: str
    parse: Callable[..., Any]
    #: True when ``parse`` may read JSON text and takes the nesting limit as its second argument.
    reads_json: bool = False


STR = ParamType("string", _parse_str)
INT = ParamType("integer", parse_int)
FLOAT = ParamType("number", parse_float)
BOOL = ParamType("boolean", parse_bool)
LIST = ParamType("list of strings", _parse_list, reads_json=True)
JSON = ParamType("JSON value", _parse_json, reads_json=True)


@dataclass(frozen=True)
class Param:
    """One parameter: name, type, default (REQUIRED if none) and older names it also answers to."""

    name: str
    type: ParamType
    default: Any = REQUIRED
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def required(self) -> bool:
        """True when the caller must give this parameter."""
        return self.default is REQUIRED

    def default_value(self) -> Any:
        """The default as a handler receives it: list parameters get a fresh list, also from comma text."""
        if self.default is None or self.default is REQUIRED:
            return self.default
        if self.type is LIST:
            return self.type.parse(list(self.default) if isinstance(self.default, tuple) else self.default)
        return list(self.default) if isinstance(self.default, tuple) else self.default

    def coerce(self, value: Any, max_json_depth: int = boundedjson.MAX_DEPTH) -> Any:
        """Parse ``value``; None is accepted where the default is None. BadRequest names the parameter.

        JSON text in ``value`` may nest ``max_json_depth`` levels at most (a TooDeep otherwise).
        """
        if value is None and self.default is None:
            return None
        try:
            if self.type.reads_json:
                return self.type.parse(value, max_json_depth)
            return self.type.parse(value)
        except boundedjson.BadJson as err:  # keeps its kind: the API counts refused JSON by kind
            raise type(err)(f"parameter '{self.name}': {err}") from None
        except BadRequest as err:
            raise BadRequest(f"parameter '{self.name}': {err}") from None


@dataclass(frozen=True)
class Route:
    """One API method."""

    name: str
    verb: str
    path: str
    description: str
    params: tuple[Param, ...] = ()
    mutating: bool = False
    #: A method bitnode offers that the spec has not (documented as going further than the spec).
    beyond_spec: bool = False
    #: The module that implements the method (``bitnode.interface.api_files`` ...): one hop from the table.
    impl: str = ""

    @property
    def verbs(self) -> tuple[str, ...]:
        """HTTP verbs accepted: the spec's, plus POST for state-changing methods the spec made GET."""
        if self.mutating and self.verb == "GET":
            return ("GET", "POST")
        return (self.verb,)

    @property
    def path_params(self) -> tuple[str, ...]:
        """Names of the ``{placeholders}`` in the path."""
        return tuple(part[1:-1] for part in self.path.split("/") if part.startswith("{") and part.endswith("}"))

    @property
    def handler(self) -> str:
        """Name of the API method that serves this route."""
        return self.name
