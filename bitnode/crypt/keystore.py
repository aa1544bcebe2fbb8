"""The node's RSA keys: its master (identity) key, keys it created, keys shared with it.

Key ids are ``alias$user@host[_port]`` (:mod:`bitnode.globalid`); the
node's own identity key is ``master$<owner>``. On disk, in ``keys_dir`` (0700):

- ``<key_id>.private``  PKCS#8 PEM, mode 0600, for keys we hold privately;
- ``<key_id>.public``   public key PEM, for keys we only hold the public half of;
- ``<key_id>.json``     ``{"version": 1, "label": str, "created": float}``;
- ``previous/<key_id>.<n>.private``  earlier generations of a key whose material was
  replaced (:meth:`KeyStore.replace_private`: a share key rotated by its owner), ``n``
  counting from 1; kept so that data wrapped with an older generation still opens.

Every file is written atomically. Key generation runs through the injected
``run_in_thread(fn, *args) -> Deferred`` so it never blocks the reactor; the
rest of the API is synchronous (small files, called rarely).
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bitnode import globalid
from bitnode.crypt import keys
from bitnode.crypt.keys import RsaPrivateKey, RsaPublicKey
from bitnode.errors import BadRequest, Conflict, NotFound
from bitnode.main.fileutil import (
    PRIVATE_FILE_MODE,
    atomic_write,
    ensure_dir,
    read_limited,
    remove_if_exists,
)

MASTER_ALIAS = "master"
MAX_LABEL = 256
MAX_META_BYTES = 16 * 1024
_PRIVATE = ".private"
_PUBLIC = ".public"
_META = ".json"
_PREVIOUS = "previous"
#: Earlier generations kept per key; the oldest goes first beyond this.
MAX_PREVIOUS = 16

RunInThread = Callable[..., defer.Deferred]


class _WallClock:
    """Default clock: wall time, with the ``seconds()`` of ``IReactorTime``."""

    @staticmethod
    def seconds() -> float:
        return time.time()


@dataclass(frozen=True)
class KeyInfo:
    """What is known about one stored key (no key material)."""

    key_id: str
    alias: str
    creator: str
    fingerprint: str
    size: int
    label: str
    is_private: bool
    created: float


@dataclass(frozen=True)
class _Entry:
    info: KeyInfo
    public: RsaPublicKey
    private: RsaPrivateKey | None

    @classmethod
    def build(cls, parsed: globalid.KeyId, public: RsaPublicKey, private: RsaPrivateKey | None,
              label: str, created: float) -> _Entry:
        """An entry with its KeyInfo worked out from the key id and the key."""
        info = KeyInfo(
            key_id=str(parsed),
            alias=parsed.alias,
            creator=str(parsed.owner),
            fingerprint=public.fingerprint(),
            size=public.size_bits,
            label=label,
            is_private=private is not None,
            created=created,
        )
        return cls(info, public, private)

    def __repr__(self) -> str:
        return f"<_Entry {self.info.key_id}>"


def validate_label(label: str) -> str:
    """A label: text of at most 256 characters without control characters."""
    if not isinstance(label, str):
        raise BadRequest("label must be text")
    if len(label) > MAX_LABEL:
        raise BadRequest(f"label is longer than {MAX_LABEL} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in label):
        raise BadRequest("label must not contain control characters")
    return label


def validate_new_alias(alias: str) -> str:
    """An alias for :meth:`KeyStore.create`: a valid alias that is not ``master``."""
    globalid.validate_alias(alias)
    if alias == MASTER_ALIAS:
        raise BadRequest("the alias 'master' is reserved for the identity key")
    return alias


def _write_key_files(directory: str, key_id: str, pem: bytes, private: bool, meta: bytes) -> None:
    suffix, other = (_PRIVATE, _PUBLIC) if private else (_PUBLIC, _PRIVATE)
    atomic_write(os.path.join(directory, key_id + suffix), pem, mode=PRIVATE_FILE_MODE)
    atomic_write(os.path.join(directory, key_id + _META), meta, mode=PRIVATE_FILE_MODE)
    remove_if_exists(os.path.join(directory, key_id + other))


def _meta_bytes(label: str, created: float) -> bytes:
    return json.dumps({"version": 1, "label": label, "created": created}, sort_keys=True).encode("utf-8")


def _generate_and_store(
    directory: str, key_id: str, key_size: int, label: str, created: float
) -> tuple[RsaPrivateKey, KeyInfo]:
    """Thread-side half of :meth:`KeyStore.create`: touches no KeyStore state."""
    priv = keys.generate_rsa(key_size)
    parsed = globalid.KeyId.parse(key_id)
    info = KeyInfo(
        key_id=key_id,
        alias=parsed.alias,
        creator=str(parsed.owner),
        fingerprint=priv.fingerprint(),
        size=priv.size_bits,
        label=label,
        is_private=True,
        created=created,
    )
    _write_key_files(directory, key_id, priv.to_pem(), True, _meta_bytes(label, created))
    return priv, info


class KeyStore:
    """The RSA keys of one node, kept in ``keys_dir``.

    ``owner_global_id`` is the node's ``user@host[_port]``; ``run_in_thread``
    runs a blocking function and returns a Deferred of its result (production:
    ``deferToThreadPool``; tests: ``lambda f, *a: defer.succeed(f(*a))``);
    ``clock`` gives creation times (``.seconds()``).
    """

    log = Logger()

    def __init__(
        self,
        keys_dir: str,
        owner_global_id: str,
        run_in_thread: RunInThread,
        clock: Any = None,
        min_key_size: int = keys.MIN_RSA_BITS,
    ):
        self._dir = keys_dir
        self._owner = globalid.GlobalId.parse(owner_global_id)
        self._run_in_thread = run_in_thread
        self._clock = clock if clock is not None else _WallClock()
        self._min_key_size = min_key_size
        self._entries: dict[str, _Entry] = {}
        self._master_names: frozenset[str] = frozenset({str(self._owner)})
        self._pending: set[str] = set()
        self._listeners: list[Callable[[], None]] = []
        self.load_errors: list[str] = []
        ensure_dir(keys_dir)
        self._load()

    @property
    def owner(self) -> str:
        """The node's global id."""
        return str(self._owner)

    @property
    def master_key_id(self) -> str:
        """``master$<owner>``, the id of the identity key."""
        return str(globalid.KeyId(MASTER_ALIAS, self._owner))

    def set_names(self, names: list[str]) -> None:
        """Every name of the owner: ``master$<any of them>`` is the master key too.

        A user whose primary identity server moved has a new global id; the
        master key stays stored under the name it was made with, and key ids
        written with a newer (or older) name still find it.
        """
        self._master_names = frozenset({str(self._owner), *(str(globalid.GlobalId.parse(n)) for n in names)})

    def _canonical(self, key_id: str) -> str:
        """``key_id``, or the master key id when it names the master key under another of the owner's names."""
        if key_id in self._entries or not key_id.startswith(MASTER_ALIAS + "$"):
            return key_id
        owner = key_id[len(MASTER_ALIAS) + 1:]
        return self.master_key_id if owner in self._master_names else key_id

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after every change of a key (created, added, relabelled, erased); returns unsubscribe."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    def _changed(self) -> None:
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:  # noqa: BLE001 - a listener's bug must not undo a stored key
                self.log.failure("key store listener failed")

    # -- creating -------------------------------------------------------

    def create(self, alias: str, key_size: int = keys.DEFAULT_RSA_BITS, label: str = "") -> defer.Deferred:
        """Generate a new private key ``alias$<owner>``; Deferred[KeyInfo].

        Fails with BadRequest (bad alias/size/label, or ``master``) or
        Conflict (the key exists or is being created).
        """
        try:
            validate_new_alias(alias)
        except BadRequest:
            return defer.fail()
        return self._create(alias, key_size, label)

    def create_master(self, key_size: int = keys.DEFAULT_RSA_BITS, label: str = "master key") -> defer.Deferred:
        """Generate the identity key ``master$<owner>``; Deferred[KeyInfo]. Conflict if it exists."""
        return self._create(MASTER_ALIAS, key_size, label)

    def _create(self, alias: str, key_size: int, label: str) -> defer.Deferred:
        key_id = str(globalid.KeyId(alias, self._owner))
        try:
            keys.check_key_size(key_size, self._min_key_size)
            validate_label(label)
            if key_id in self._entries or key_id in self._pending:
                raise Conflict(f"key {key_id} already exists")
        except (BadRequest, Conflict):
            return defer.fail()
        self._pending.add(key_id)
        created = self._clock.seconds()
        d = self._run_in_thread(_generate_and_store, self._dir, key_id, key_size, label, created)

        def stored(result: tuple[RsaPrivateKey, KeyInfo]) -> KeyInfo:
            priv, info = result
            self._entries[key_id] = _Entry(info, priv.public_key(), priv)
            self._changed()
            return info

        def finished(result: Any) -> Any:
            self._pending.discard(key_id)
            return result

        d.addCallback(stored)
        d.addBoth(finished)
        return d

    def add_public(self, key_id: str, pub_pem: bytes | str, label: str = "") -> KeyInfo:
        """Store someone's public key. Re-adding the same key returns it unchanged;
        a different key under an existing id is a Conflict."""
        parsed = globalid.KeyId.parse(key_id)
        validate_label(label)
        public = keys.public_from_pem(pub_pem)
        existing = self._entries.get(key_id)
        if existing is not None:
            if existing.public == public:
                return existing.info
            raise Conflict(f"key {key_id} already exists with another key")
        return self._store(parsed, public, None, label)

    def add_private(self, key_id: str, priv_pem: bytes | str, label: str = "") -> KeyInfo:
        """Store a private key (imported or shared). A stored public half of the same
        key is upgraded; a different key under an existing id is a Conflict."""
        parsed = globalid.KeyId.parse(key_id)
        validate_label(label)
        private = keys.private_from_pem(priv_pem)
        public = private.public_key()
        existing = self._entries.get(key_id)
        if key_id in self._pending:
            raise Conflict(f"key {key_id} is being created")
        if existing is not None:
            if existing.public != public:
                raise Conflict(f"key {key_id} already exists with another key")
            if existing.private is not None:
                return existing.info
            label = label or existing.info.label
        return self._store(parsed, public, private, label)

    def replace_private(self, key_id: str, priv_pem: bytes | str, label: str | None = None) -> KeyInfo:
        """Store a new generation of a (non-master) private key under the same id.

        The key held until now (if different) is kept as a previous generation
        (:meth:`previous_private_keys`), so what was wrapped with it still opens.
        The same key again changes nothing; a key not held yet is simply added.
        """
        parsed = globalid.KeyId.parse(key_id)
        if parsed.alias == MASTER_ALIAS:
            raise Conflict("the master key is never replaced")
        private = keys.private_from_pem(priv_pem)
        existing = self._entries.get(key_id)
        if key_id in self._pending:
            raise Conflict(f"key {key_id} is being created")
        if existing is None or existing.public == private.public_key():
            return self.add_private(key_id, priv_pem, label or "")
        label = existing.info.label if label is None else validate_label(label)
        if existing.private is not None:
            self._keep_previous(key_id, existing.private)
        return self._store(parsed, private.public_key(), private, label)

    def previous_private_keys(self, key_id: str) -> list[RsaPrivateKey]:
        """Earlier generations of ``key_id`` held here, newest first (empty when none)."""
        found = []
        for number, path in reversed(self._previous_files(key_id)):
            try:
                found.append(keys.private_from_pem(read_limited(path, keys.MAX_PEM_BYTES)))
            except (OSError, BadRequest) as err:
                self._report(os.path.basename(path), f"previous generation {number} unreadable: {err}")
        return found

    def _previous_dir(self) -> str:
        return os.path.join(self._dir, _PREVIOUS)

    def _previous_files(self, key_id: str) -> list[tuple[int, str]]:
        """``(n, path)`` of the kept generations of ``key_id``, oldest first."""
        directory = self._previous_dir()
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            stem, _, number = name[: -len(_PRIVATE)].rpartition(".") if name.endswith(_PRIVATE) else ("", "", "")
            if stem == key_id and number.isdigit():
                found.append((int(number), os.path.join(directory, name)))
        return sorted(found)

    def _keep_previous(self, key_id: str, private: RsaPrivateKey) -> None:
        files = self._previous_files(key_id)
        number = files[-1][0] + 1 if files else 1
        ensure_dir(self._previous_dir())
        atomic_write(os.path.join(self._previous_dir(), f"{key_id}.{number}{_PRIVATE}"), private.to_pem(),
                     mode=PRIVATE_FILE_MODE)
        for _, path in files[: max(0, len(files) + 1 - MAX_PREVIOUS)]:
            remove_if_exists(path)

    def _store(
        self, parsed: globalid.KeyId, public: RsaPublicKey, private: RsaPrivateKey | None, label: str
    ) -> KeyInfo:
        entry = _Entry.build(parsed, public, private, label, self._clock.seconds())
        key_id = entry.info.key_id
        pem = private.to_pem() if private is not None else public.to_pem()
        _write_key_files(self._dir, key_id, pem, private is not None, _meta_bytes(label, entry.info.created))
        self._entries[key_id] = entry
        self._changed()
        return entry.info

    # -- reading --------------------------------------------------------

    def _entry(self, key_id: str) -> _Entry:
        if not isinstance(key_id, str):
            raise BadRequest("key id must be text")
        try:
            return self._entries[self._canonical(key_id)]
        except KeyError:
            raise NotFound(f"key {key_id} not found") from None

    def get(self, key_id: str) -> KeyInfo:
        """Information about one key; NotFound if unknown."""
        return self._entry(key_id).info

    def has(self, key_id: str) -> bool:
        """True when the key is stored."""
        return isinstance(key_id, str) and self._canonical(key_id) in self._entries

    def list(self) -> list[KeyInfo]:
        """Every stored key, master first, then by key id."""
        master = self.master_key_id
        return [
            self._entries[key_id].info
            for key_id in sorted(self._entries, key=lambda kid: (kid != master, kid))
        ]

    def private_key(self, key_id: str) -> RsaPrivateKey:
        """The private key; NotFound if unknown or only the public half is held."""
        entry = self._entry(key_id)
        if entry.private is None:
            raise NotFound(f"no private key for {key_id}")
        return entry.private

    def public_key(self, key_id: str) -> RsaPublicKey:
        """The public key; NotFound if unknown."""
        return self._entry(key_id).public

    def as_dict(self, info: KeyInfo, include_private: bool = False) -> dict:
        """The API shape of a key. The private PEM only when asked for and held."""
        entry = self._entry(info.key_id)
        result = {
            "key_id": entry.info.key_id,
            "alias": entry.info.alias,
            "creator": entry.info.creator,
            "fingerprint": entry.info.fingerprint,
            "size": entry.info.size,
            "label": entry.info.label,
            "is_private": entry.info.is_private,
            "public": entry.public.to_pem().decode("ascii"),
        }
        if include_private and entry.private is not None:
            result["private"] = entry.private.to_pem().decode("ascii")
        return result

    # -- changing -------------------------------------------------------

    def label(self, key_id: str, label: str) -> KeyInfo:
        """Set a key's label; returns the updated info."""
        entry = self._entry(key_id)
        validate_label(label)
        meta = _meta_bytes(label, entry.info.created)
        atomic_write(os.path.join(self._dir, key_id + _META), meta, mode=PRIVATE_FILE_MODE)
        info = replace(entry.info, label=label)
        self._entries[key_id] = _Entry(info, entry.public, entry.private)
        self._changed()
        return info

    def erase(self, key_id: str) -> None:
        """Delete a key and its files. The master key is a Conflict, unknown NotFound."""
        if key_id == self.master_key_id:
            raise Conflict("the master key cannot be erased")
        self._entry(key_id)
        for suffix in (_PRIVATE, _PUBLIC, _META):
            remove_if_exists(os.path.join(self._dir, key_id + suffix))
        for _, path in self._previous_files(key_id):
            remove_if_exists(path)
        del self._entries[key_id]
        self._changed()

    # -- loading --------------------------------------------------------

    def _load(self) -> None:
        names = sorted(os.listdir(self._dir))
        present = set(names)
        for filename in names:
            if filename.startswith("."):
                continue
            key_id, ext = os.path.splitext(filename)
            if ext not in (_PRIVATE, _PUBLIC):
                continue
            if ext == _PUBLIC and key_id + _PRIVATE in present:
                self._report(filename, "ignored: a private key file exists for the same id")
                continue
            try:
                entry = self._load_one(key_id, ext == _PRIVATE)
            except (OSError, BadRequest) as err:
                self._report(filename, str(err))
                continue
            self._entries[key_id] = entry

    def _load_one(self, key_id: str, private: bool) -> _Entry:
        parsed = globalid.KeyId.parse(key_id)
        path = os.path.join(self._dir, key_id + (_PRIVATE if private else _PUBLIC))
        pem = read_limited(path, keys.MAX_PEM_BYTES)
        if private:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            if mode & 0o077:
                os.chmod(path, PRIVATE_FILE_MODE)
                self._report(os.path.basename(path), f"mode was {mode:o}, set to 600")
            priv: RsaPrivateKey | None = keys.private_from_pem(pem)
            public = priv.public_key()
        else:
            priv = None
            public = keys.public_from_pem(pem)
        label, created = self._load_meta(key_id, path)
        return _Entry.build(parsed, public, priv, label, created)

    def _load_meta(self, key_id: str, key_path: str) -> tuple[str, float]:
        path = os.path.join(self._dir, key_id + _META)
        fallback = ("", os.stat(key_path).st_mtime)
        try:
            meta = json.loads(read_limited(path, MAX_META_BYTES))
        except FileNotFoundError:
            return fallback
        except (OSError, ValueError, BadRequest) as err:
            self._report(key_id + _META, f"unreadable ({err.__class__.__name__}), using defaults")
            return fallback
        if not isinstance(meta, dict):
            self._report(key_id + _META, "not a JSON object, using defaults")
            return fallback
        label = meta.get("label", "")
        created = meta.get("created")
        try:
            validate_label(label)
        except BadRequest:
            self._report(key_id + _META, "bad label, ignored")
            label = ""
        if isinstance(created, bool) or not isinstance(created, (int, float)):
            created = fallback[1]
        return label, float(created)

    def _report(self, filename: str, reason: str) -> None:
        message = f"{filename}: {reason}"
        self.load_errors.append(message)
        self.log.warn("key store: {problem}", problem=message)
