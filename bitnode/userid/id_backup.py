"""The identity backup file: what identity_backup writes and identity_recover reads.

Format 1 is plain UTF-8 text, so a user can print it or paste it into
``identity_recover(private_key_source=...)``::

    # bitnode identity backup, format 1
    # Keep this file secret: it holds your private keys.
    http://id.example.net:8084/alice.xml        <- every source, primary first
    http://id2.example.net:8084/alice.xml
    -----BEGIN PRIVATE KEY-----                  <- the master RSA key (PKCS#8 PEM)
    ...
    -----END PRIVATE KEY-----
    -----BEGIN PRIVATE KEY-----                  <- the Ed25519 packet key (PKCS#8 PEM), optional
    ...
    -----END PRIVATE KEY-----

Reading is lenient in the ways a user needs: lines starting with ``#`` and
blank lines are ignored; IDURL lines and PEM blocks may come in any order;
the RSA key may also be PKCS#1 (``BEGIN RSA PRIVATE KEY``); the packet key
and the IDURLs may be missing (a bare PEM plus ``known_idurl`` is enough; the
spec's ``"<idurl>\\n<PEM>"`` form is the same format without comments). Each
PEM block is told apart by parsing it: exactly one RSA private key is
required, at most one Ed25519 key is allowed.

No error message quotes the input: it may hold private keys, and error texts
reach API clients and logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bitnode import globalid
from bitnode.crypt import fastsign, keys
from bitnode.crypt.fastsign import Ed25519PrivateKey
from bitnode.crypt.keys import InvalidKey, RsaPrivateKey
from bitnode.errors import BadRequest, Conflict, NotFound
from bitnode.main.fileutil import (
    PRIVATE_FILE_MODE,
    fsync_dir,
    read_limited,
    remove_if_exists,
    write_temp_file,
)

HEADER = "# bitnode identity backup, format 1"
MAX_BACKUP_BYTES = 64 * 1024
MAX_PATH_LENGTH = 4096
_PEM_BEGIN = "-----BEGIN "
_PEM_END = "-----END "


@dataclass(frozen=True, repr=False)
class BackupContents:
    """What a backup holds: IDURLs (primary first), the master key, maybe the packet key."""

    idurls: tuple[str, ...]
    master_key: RsaPrivateKey
    packet_key: Ed25519PrivateKey | None = None

    def __repr__(self) -> str:
        # Never the key material: only which keys are there.
        return (f"<BackupContents idurls={list(self.idurls)} master={self.master_key!r} "
                f"packet_key={'yes' if self.packet_key is not None else 'no'}>")


def render_backup(idurls: tuple[str, ...] | list[str], master_key: RsaPrivateKey,
                  packet_key: Ed25519PrivateKey | None) -> bytes:
    """The backup file content (format 1). Secret: holds private keys."""
    if not idurls:
        raise BadRequest("a backup needs at least one IDURL")
    lines = [HEADER, "# Keep this file secret: it holds your private keys."]
    lines.extend(str(globalid.IdUrl.parse(idurl)) for idurl in idurls)
    text = "\n".join(lines) + "\n"
    text += master_key.to_pem().decode("ascii").strip() + "\n"
    if packet_key is not None:
        text += packet_key.to_pem().decode("ascii").strip() + "\n"
    return text.encode("utf-8")


def _split(text: str) -> tuple[list[str], list[str]]:
    """IDURL lines and PEM blocks of a backup text."""
    idurls: list[str] = []
    blocks: list[str] = []
    current: list[str] | None = None
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if current is not None:
            current.append(line)
            if line.startswith(_PEM_END):
                blocks.append("\n".join(current) + "\n")
                current = None
            continue
        if not line or line.startswith("#"):
            continue
        if line.startswith(_PEM_BEGIN):
            current = [line]
            continue
        try:
            idurl = str(globalid.IdUrl.parse(line))
        except BadRequest:
            raise BadRequest(f"line {number} of the key source is neither an IDURL nor part of a PEM key") from None
        if idurl not in idurls:
            idurls.append(idurl)
    if current is not None:
        raise BadRequest("the key source ends inside a PEM block")
    return idurls, blocks


def parse_backup(data: str | bytes) -> BackupContents:
    """Parse a backup (or a bare PEM key); :class:`BadRequest` with a reason that never quotes it."""
    if isinstance(data, (bytes, bytearray)):
        if len(data) > MAX_BACKUP_BYTES:
            raise BadRequest("the key source is too large")
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the key source is not UTF-8 text") from None
    if not isinstance(data, str):
        raise BadRequest("the key source must be text")
    if len(data) > MAX_BACKUP_BYTES:
        raise BadRequest("the key source is too large")
    idurls, blocks = _split(data)
    master: RsaPrivateKey | None = None
    packet: Ed25519PrivateKey | None = None
    for index, block in enumerate(blocks, start=1):
        try:
            rsa = keys.private_from_pem(block)
        except InvalidKey:
            rsa = None
        if rsa is not None:
            if master is not None:
                raise BadRequest("the key source holds more than one RSA private key")
            master = rsa
            continue
        try:
            ed = fastsign.private_from_pem(block)
        except InvalidKey:
            raise BadRequest(f"PEM block {index} is neither an RSA nor an Ed25519 private key") from None
        if packet is not None:
            raise BadRequest("the key source holds more than one Ed25519 key")
        packet = ed
    if master is None:
        raise BadRequest("the key source holds no RSA private key")
    return BackupContents(tuple(idurls), master, packet)


def read_source(private_key_source: str) -> str:
    """The backup text given ``private_key_source``: the text itself, or an absolute path to a file.

    Text containing a PEM header is taken as the content; anything else must
    be an absolute path (``~`` allowed) to a readable file. Blocking: call it
    off the reactor.
    """
    if not isinstance(private_key_source, str) or not private_key_source.strip():
        raise BadRequest("private_key_source is empty")
    if _PEM_BEGIN in private_key_source:
        return private_key_source
    path = private_key_source.strip()
    if "\n" in path or len(path) > MAX_PATH_LENGTH:
        raise BadRequest("private_key_source holds no PEM key and is not a file path")
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        raise BadRequest("private_key_source must be the backup text, a PEM key, or an absolute path to a backup file")
    try:
        data = read_limited(path, MAX_BACKUP_BYTES)
    except FileNotFoundError:
        raise NotFound("the backup file does not exist") from None
    except IsADirectoryError:
        raise BadRequest("private_key_source names a folder, not a backup file") from None
    except PermissionError:
        raise BadRequest("the backup file cannot be read (permission denied)") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("the backup file is not UTF-8 text") from None


def write_new_file(path: str, data: bytes) -> str:
    """Write ``data`` to a new file at ``path`` (mode 0600), atomically; never overwrite.

    The content goes to a temporary file in the same folder, is fsynced, then
    hard-linked to ``path`` (which fails if ``path`` exists, with no race) and
    the folder fsynced. Returns the absolute path. Conflict if the file exists,
    BadRequest for a relative path or a missing folder. Blocking.
    """
    if not isinstance(path, str) or not path.strip() or len(path) > MAX_PATH_LENGTH:
        raise BadRequest("destination_filepath is empty or too long")
    path = os.path.expanduser(path.strip())
    if not os.path.isabs(path):
        raise BadRequest("destination_filepath must be an absolute path")
    path = os.path.normpath(path)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise BadRequest(f"folder {directory} does not exist")
    if os.path.lexists(path):
        raise Conflict(f"{path} already exists; choose another file name")
    tmp_path = write_temp_file(directory, ".bitnode-backup.", data, PRIVATE_FILE_MODE)
    try:
        os.link(tmp_path, path)
    except FileExistsError:
        raise Conflict(f"{path} already exists; choose another file name") from None
    except OSError:
        # No hard links on this filesystem: fall back to check-then-rename.
        if os.path.lexists(path):
            raise Conflict(f"{path} already exists; choose another file name") from None
        os.replace(tmp_path, path)
    finally:
        remove_if_exists(tmp_path)
    fsync_dir(directory)
    return path
