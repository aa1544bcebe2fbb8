"""Packet counters for one node: traffic in and out, and why packets were dropped.

One :class:`PacketStats` per transport (never module-level).  Only packets
that passed validation are counted per command and per peer, so a forger
cannot grow the per-peer table with made-up ids; the table is also capped.
"""

from __future__ import annotations

from collections import Counter

#: Drop reasons always present in :meth:`PacketStats.as_dict` (others may appear).
DROP_REASONS: tuple[str, ...] = (
    "bad_signature",
    "wrong_recipient",
    "replay",
    "too_old",
    "too_new",
    "unknown_command",
    "oversize",
    "malformed",
    "flood",
    "unknown_sender",
    "no_handler",
    "handler_error",
    "before_start",
    "replay_full",
    "rate_limited",
    "stranger_oversize",
    "bad_identity",
    "bad_introduction",
    "introductions_busy",
)

#: Per-peer rows beyond this limit are summed under this name.
OTHER_PEERS = "*other*"


class _Direction:
    """Counters for one direction (in or out)."""

    def __init__(self) -> None:
        self.packets = 0
        self.bytes = 0
        self.by_command: Counter[str] = Counter()
        self.peers: dict[str, list[int]] = {}  # peer -> [packets, bytes]

    def add(self, command: str, peer: str, nbytes: int, max_peers: int) -> None:
        self.packets += 1
        self.bytes += nbytes
        self.by_command[command] += 1
        if peer not in self.peers and len(self.peers) >= max_peers:
            peer = OTHER_PEERS
        row = self.peers.setdefault(peer, [0, 0])
        row[0] += 1
        row[1] += nbytes

    def as_dict(self) -> dict:
        return {
            "packets": self.packets,
            "bytes": self.bytes,
            "by_command": dict(sorted(self.by_command.items())),
            "by_peer": {
                peer: {"packets": row[0], "bytes": row[1]} for peer, row in sorted(self.peers.items())
            },
        }


class PacketStats:
    """Counters for the ``packets_stats`` API.

    :param max_peers: per-peer rows kept per direction before the rest are
        summed under ``"*other*"``.
    """

    def __init__(self, max_peers: int = 1000) -> None:
        self._max_peers = max_peers
        self._in = _Direction()
        self._out = _Direction()
        self._drops: Counter[str] = Counter()
        self._frames_in = 0
        self._frame_bytes_in = 0

    def record_frame_in(self, nbytes: int) -> None:
        """A complete frame arrived (before validation)."""
        self._frames_in += 1
        self._frame_bytes_in += nbytes

    def record_in(self, command: str, peer: str, nbytes: int) -> None:
        """A packet passed validation and was dispatched."""
        self._in.add(command, peer, nbytes, self._max_peers)

    def record_out(self, command: str, peer: str, nbytes: int) -> None:
        """A packet was handed to a connection for sending."""
        self._out.add(command, peer, nbytes, self._max_peers)

    def record_drop(self, reason: str) -> None:
        """A packet or frame was dropped for ``reason``."""
        self._drops[reason] += 1

    def dropped(self, reason: str) -> int:
        """How many were dropped for ``reason``."""
        return self._drops[reason]

    @property
    def packets_in(self) -> int:
        """Packets accepted."""
        return self._in.packets

    @property
    def packets_out(self) -> int:
        """Packets sent."""
        return self._out.packets

    def as_dict(self) -> dict:
        """A JSON-safe snapshot (plain dicts, str keys, ints)."""
        drops = {reason: 0 for reason in DROP_REASONS}
        drops.update(self._drops)
        return {
            "in": self._in.as_dict(),
            "out": self._out.as_dict(),
            "frames_in": self._frames_in,
            "frame_bytes_in": self._frame_bytes_in,
            "dropped": dict(sorted(drops.items())),
            "dropped_total": sum(drops.values()),
        }
