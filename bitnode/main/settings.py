"""One node's settings: typed options from the schema, persisted atomically.

Values that differ from the default are stored as JSON in
``basedir/config/settings.json`` (written with temp + fsync + rename before a
change is acknowledged). Listeners hear every change so subsystems can react
(a new nickname, a changed supplier count...).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable

from twisted.logger import Logger

from bitnode.errors import BadRequest, NotFound
from bitnode.main.fileutil import atomic_write
from bitnode.main.options import Option

SETTINGS_FORMAT = 1

Listener = Callable[[str, Any, Any], None]


class Settings:
    """Typed, validated, persisted key/value settings of one node."""

    log = Logger()

    def __init__(self, path: str, options: Iterable[Option], overrides: dict | None = None,
                 defaults: dict | None = None):
        """Load ``path`` (if it exists) over the defaults of ``options``.

        ``overrides`` are applied on top without being validated twice; they
        are used by tests and by ``localnet`` to start nodes on free ports.
        ``defaults`` replace the schema's defaults of some keys (the network
        file's servers, see :mod:`bitnode.main.network_file`): a value set
        explicitly still wins, and setting a key back to it forgets the value.
        """
        self._path = path
        self._options: dict[str, Option] = {}
        self._values: dict[str, Any] = {}
        self._defaults: dict[str, Any] = dict(defaults or {})
        self._listeners: list[tuple[str, Listener]] = []
        for option in options:
            self.register(option)
        for key, value in list(self._defaults.items()):
            if key in self._options:
                self._defaults[key] = self._options[key].coerce(value)
        self._load()
        for key, value in (overrides or {}).items():
            option = self._options.get(key)
            # An override of a service's option is validated when the service registers it.
            self._values[key] = option.coerce(value) if option is not None else value
        if overrides:
            self._save()

    # --- schema --------------------------------------------------------------

    def register(self, option: Option) -> None:
        """Add an option to this node's schema (services add their ``enabled`` switches)."""
        if option.key in self._options:
            if self._options[option.key] != option:
                raise ValueError(f"option {option.key} registered twice with different definitions")
            return
        self._options[option.key] = option
        if option.key in self._values:
            # A value loaded before its option was known: validate it now.
            try:
                self._values[option.key] = option.coerce(self._values[option.key])
            except BadRequest as err:
                self.log.warn("ignoring stored value of {key}: {err}", key=option.key, err=err)
                del self._values[option.key]

    def option(self, key: str) -> Option:
        """The schema entry of ``key``; NotFound if there is none."""
        key = key.strip().strip("/") if isinstance(key, str) else key
        try:
            return self._options[key]
        except (KeyError, TypeError):
            raise NotFound(f"unknown setting {key!r}") from None

    def keys(self) -> list[str]:
        """All option keys in schema order."""
        return list(self._options)

    # --- values --------------------------------------------------------------

    def get(self, key: str) -> Any:
        """Current value of ``key`` (the default unless it was set)."""
        option = self.option(key)
        value = self._values.get(option.key, self.default(option.key))
        # A list handed out must not be the stored value or the schema's shared default.
        return list(value) if isinstance(value, list) else value

    def set(self, key: str, value: Any) -> tuple[Any, Any]:
        """Validate, persist, then notify listeners. Returns (old, new) values."""
        option = self.option(key)
        new = option.coerce(value)
        old = self.get(option.key)
        values = dict(self._values)
        if new == self.default(option.key):
            values.pop(option.key, None)
        else:
            values[option.key] = new
        # Written first: if the disk refuses, the node keeps running on the old value.
        self._save(values)
        self._values = values
        if new != old:
            for prefix, listener in list(self._listeners):
                if option.key.startswith(prefix):
                    try:
                        listener(option.key, old, new)
                    except Exception:
                        self.log.failure("settings listener for {key} failed", key=option.key)
        return old, new

    def default(self, key: str) -> Any:
        """The value ``key`` has when it is not set: the network file's, else the schema's."""
        option = self.option(key)
        return self._defaults.get(option.key, option.default)

    def add_listener(self, prefix: str, listener: Listener) -> None:
        """Call ``listener(key, old, new)`` after any change of a key starting with ``prefix``."""
        self._listeners.append((prefix, listener))

    def remove_listener(self, prefix: str, listener: Listener) -> None:
        """Undo :meth:`add_listener`."""
        self._listeners.remove((prefix, listener))

    # --- views for the API --------------------------------------------------

    def describe(self, key: str, include_info: bool = False) -> dict:
        """The API shape of one option: key, value, type (+ default, description)."""
        option = self.option(key)
        value = self.get(option.key)
        item = {"key": option.key, "value": option.render(value), "type": option.kind.name}
        if include_info:
            item["default"] = option.render(self.default(option.key))
            item["description"] = option.description
            item["restart_needed"] = option.restart_needed
            if option.choices:
                item["choices"] = list(option.choices)
            if option.minimum is not None:
                item["minimum"] = option.minimum
            if option.maximum is not None:
                item["maximum"] = option.maximum
        return item

    def as_list(self, sort: bool = False, include_info: bool = False) -> list[dict]:
        """Every option as :meth:`describe` gives it, in schema or key order."""
        keys = sorted(self._options) if sort else list(self._options)
        return [self.describe(key, include_info) for key in keys]

    def as_tree(self, include_info: bool = False) -> dict:
        """Options nested by their key path: {"services": {"supplier": {"enabled": {...}}}}."""
        tree: dict = {}
        for key in self._options:
            parts = key.split("/")
            branch = tree
            for part in parts[:-1]:
                branch = branch.setdefault(part, {})
            branch[parts[-1]] = self.describe(key, include_info)
        return tree

    # --- persistence -----------------------------------------------------------

    def _load(self) -> None:
        if not os.path.exists(self._path):
            return
        try:
            with open(self._path, "rb") as handle:
                stored = json.loads(handle.read().decode("utf-8"))
            values = stored["values"]
            if stored.get("format") != SETTINGS_FORMAT or not isinstance(values, dict):
                raise ValueError("unknown settings format")
        except (OSError, ValueError, KeyError, TypeError) as err:
            # A broken file must not stop the node: keep it aside and run on defaults.
            aside = self._path + ".broken"
            os.replace(self._path, aside)
            self.log.error("settings file {path} unreadable ({err}); moved to {aside}", path=self._path,
                           err=err, aside=aside)
            return
        for key, value in values.items():
            option = self._options.get(key)
            if option is None:
                # Kept as-is: an option of a service that is not registered yet.
                self._values[key] = value
                continue
            try:
                self._values[key] = option.coerce(value)
            except BadRequest as err:
                self.log.warn("ignoring stored value of {key}: {err}", key=key, err=err)

    def _save(self, values: dict | None = None) -> None:
        values = self._values if values is None else values
        data = json.dumps({"format": SETTINGS_FORMAT, "values": values}, indent=1, sort_keys=True)
        atomic_write(self._path, data.encode("utf-8"), mode=0o600)
