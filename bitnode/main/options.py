"""Typed option kinds for the settings schema: parsing, validation and display.

Each kind turns user input (JSON values from the API, or text from the CLI
and query strings) into one canonical Python value, or raises BadRequest with
a reason that names what was expected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from bitnode.errors import BadRequest

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}

_SPACE_UNITS = {
    "": 1, "B": 1, "BYTES": 1,
    "KB": 1024, "KIB": 1024,
    "MB": 1024 ** 2, "MIB": 1024 ** 2,
    "GB": 1024 ** 3, "GIB": 1024 ** 3,
    "TB": 1024 ** 4, "TIB": 1024 ** 4,
}
_SPACE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_bool(value: Any) -> bool:
    """Accept JSON booleans, 0/1, and the usual words (true/false, yes/no, on/off)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
    raise BadRequest(f"expected a boolean, got {value!r}")


def parse_int(value: Any) -> int:
    """Accept integers and integer text; reject booleans and fractions."""
    if isinstance(value, bool):
        raise BadRequest(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise BadRequest(f"expected an integer, got {value!r}")


def parse_float(value: Any) -> float:
    """Accept finite numbers and numeric text (NaN would slip past every minimum/maximum check)."""
    if isinstance(value, bool):
        raise BadRequest(f"expected a finite number, got {value!r}")
    number = None
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            pass
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            pass
    if number is None or not math.isfinite(number):
        raise BadRequest(f"expected a finite number, got {value!r}")
    return number


def parse_disk_space(value: Any) -> int:
    """Parse "2 GB", "512MB", "1.5 GiB" or a byte count into bytes (binary units)."""
    if isinstance(value, bool):
        raise BadRequest(f"expected a disk space like '2 GB', got {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if value < 0:
            raise BadRequest("disk space cannot be negative")
        return value
    if isinstance(value, str):
        match = _SPACE_RE.match(value)
        if match:
            number, unit = match.groups()
            mult = _SPACE_UNITS.get(unit.upper())
            if mult is not None:
                try:
                    return int(number) * mult if "." not in number else int(float(number) * mult)
                except (OverflowError, ValueError):
                    pass  # a fraction too long for a float ("1e400" worth of digits)
    raise BadRequest(f"expected a disk space like '2 GB', got {value!r}")


def format_disk_space(num_bytes: int) -> str:
    """Render bytes the way users write them: '2 GB', '512 MB', '1.5 KB', '17 bytes'."""
    for unit, mult in (("TB", 1024 ** 4), ("GB", 1024 ** 3), ("MB", 1024 ** 2), ("KB", 1024)):
        if num_bytes >= mult:
            amount = num_bytes / mult
            text = f"{amount:.2f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
    return f"{num_bytes} bytes"


def parse_string_list(value: Any) -> list[str]:
    """Accept a JSON list of strings or comma-separated text."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    raise BadRequest(f"expected a list of strings, got {value!r}")


@dataclass(frozen=True)
class Kind:
    """A value type of the settings schema."""

    name: str
    parse: Callable[[Any], Any]
    render: Callable[[Any], Any] = lambda value: value


BOOLEAN = Kind("boolean", parse_bool)
INTEGER = Kind("integer", parse_int)
FLOAT = Kind("float", parse_float)
STRING = Kind("string", lambda v: v if isinstance(v, str) else _bad("a string", v))
DISK_SPACE = Kind("disk space", parse_disk_space, format_disk_space)
STRING_LIST = Kind("list of strings", parse_string_list)


def _bad(expected: str, value: Any):
    raise BadRequest(f"expected {expected}, got {value!r}")


@dataclass(frozen=True)
class Option:
    """One setting: its key path, kind, default, description and extra checks.

    ``minimum``/``maximum`` bound numbers; ``choices`` limits strings;
    ``pattern`` is a regular expression a string must match fully.
    """

    key: str
    kind: Kind
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple = ()
    pattern: str | None = None
    restart_needed: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    def coerce(self, value: Any) -> Any:
        """Parse and validate ``value``; raise BadRequest naming this key on failure."""
        try:
            parsed = self.kind.parse(value)
        except BadRequest as err:
            raise BadRequest(f"bad value for {self.key}: {err}") from None
        if self.minimum is not None and parsed < self.minimum:
            raise BadRequest(f"bad value for {self.key}: must be at least {self._bound(self.minimum)}")
        if self.maximum is not None and parsed > self.maximum:
            raise BadRequest(f"bad value for {self.key}: must be at most {self._bound(self.maximum)}")
        # A list option checks choices and pattern on each of its items.
        items = parsed if isinstance(parsed, list) else [parsed]
        for item in items:
            if self.choices and item not in self.choices:
                raise BadRequest(f"bad value for {self.key}: must be one of {', '.join(map(str, self.choices))}")
            if self.pattern is not None and not re.fullmatch(self.pattern, item):
                raise BadRequest(f"bad value for {self.key}: {item!r} does not match {self.pattern}")
        return parsed

    def _bound(self, bound: float) -> str:
        # Disk space bounds read as "64 KB", not "65536".
        if self.kind is DISK_SPACE:
            return format_disk_space(int(bound))
        return f"{bound:g}"

    def render(self, value: Any) -> Any:
        """The value as shown to users (disk space as text, others unchanged)."""
        return self.kind.render(value)
