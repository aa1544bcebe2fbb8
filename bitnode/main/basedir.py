"""Where one node keeps its files, and the default location."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_BASEDIR = "~/.bitnode"


def default_basedir() -> str:
    """``$BITNODE_HOME`` if set, else ``~/.bitnode``."""
    return os.path.abspath(os.path.expanduser(os.environ.get("BITNODE_HOME") or DEFAULT_BASEDIR))


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

    @property
    def config(self) -> str:
        """Settings live here."""
        return self.path("config")

    @property
    def metadata(self) -> str:
        """Secrets and identity: API secret, keys, identity document (mode 0700)."""
        return self.path("metadata")

    @property
    def logs(self) -> str:
        """twistd log and pid files."""
        return self.path("logs")

    @property
    def settings_file(self) -> str:
        """The settings JSON."""
        return os.path.join(self.config, "settings.json")

    @property
    def api_secret_file(self) -> str:
        """The API token (mode 0600)."""
        return os.path.join(self.metadata, "apisecret")

    @property
    def endpoints_file(self) -> str:
        """Where a running node writes its API URLs (read by the CLI and localnet)."""
        return os.path.join(self.metadata, "endpoints.json")

    @property
    def pid_file(self) -> str:
        """twistd's pid file when daemonised."""
        return os.path.join(self.logs, "twistd.pid")

    @property
    def log_file(self) -> str:
        """twistd's log file when daemonised."""
        return os.path.join(self.logs, "twistd.log")

    def create(self) -> None:
        """Make the folders, with private ones readable by the owner only."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        for folder in (self.config, self.logs):
            os.makedirs(folder, mode=0o700, exist_ok=True)
        os.makedirs(self.metadata, mode=0o700, exist_ok=True)
        os.chmod(self.metadata, 0o700)
