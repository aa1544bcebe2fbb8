"""Where one node keeps its files, and the default location."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_BASEDIR = "~/.bitnode"


def default_basedir() -> str:
    """``$BITNODE_HOME`` if set, else ``~/.bitnode``."""
    return os.path.abspath(os.path.expanduser(os.environ.get("BITNODE_HOME") or DEFAULT_BASEDIR))


class _Place:
    """A fixed path inside the basedir, read as an attribute of a :class:`Basedir`; one row of its layout."""

    def __init__(self, doc: str, *parts: str) -> None:
        self.parts = parts
        self.__doc__ = doc

    def __get__(self, basedir: Basedir | None, owner: type | None = None):
        if basedir is None:
            return self
        return basedir.path(*self.parts)


@dataclass(frozen=True)
class Basedir:
    """The layout of a node's base directory."""

    root: str

    @classmethod
    def at(cls, path: str | None) -> Basedir:
        """The basedir at ``path`` (or the default one)."""
        return cls(os.path.abspath(os.path.expanduser(path)) if path else default_basedir())

    def path(self, *parts: str) -> str:
        """A path inside the basedir."""
        return os.path.join(self.root, *parts)

    config = _Place("Settings live here.", "config")
    metadata = _Place("Secrets and identity: API secret, keys, identity document (mode 0700).", "metadata")
    logs = _Place("twistd log and pid files.", "logs")
    settings_file = _Place("The settings JSON.", "config", "settings.json")
    api_secret_file = _Place("The API token (mode 0600).", "metadata", "apisecret")
    endpoints_file = _Place("Where a running node writes its API URLs (read by the CLI and localnet).",
                            "metadata", "endpoints.json")
    pid_file = _Place("twistd's pid file when daemonised.", "logs", "twistd.pid")
    log_file = _Place("twistd's log file when daemonised.", "logs", "twistd.log")

    def create(self) -> None:
        """Make the folders, with private ones readable by the owner only."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        for folder in (self.config, self.logs):
            os.makedirs(folder, mode=0o700, exist_ok=True)
        os.makedirs(self.metadata, mode=0o700, exist_ok=True)
        os.chmod(self.metadata, 0o700)
