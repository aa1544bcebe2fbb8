"""The encrypted backup of the catalog on the suppliers, and restoring it from the private key alone.

A backup is a special version ``catalog-<serial>`` (the serial grows by one
per backup and is kept in the catalog's meta table):

1. the catalog export is compressed (zlib) and written to a temporary file;
2. the :class:`~bitnode.storage.uploader.Uploader` stores it like any file:
   AES-256-GCM under a fresh key, k-of-n blocks at ``catalog-<serial>/<seg>/<pos>``;
3. a *manifest* is stored whole on every supplier at ``catalog-<serial>/manifest``:
   JSON with the serial, owner, k, n, the supplier of each position, each
   segment's length, block hashes and stored positions, the SHA-256 of the
   export, and the version key wrapped with the master key (RSA-OAEP) — the
   whole signed with the master key (RSA-PSS), so a supplier cannot slip us
   a catalog of its own making. From manifest format 2 on it also carries
   ``secrets``: my other keys and the records services registered, sealed to
   the master key (:mod:`bitnode.storage.key_backup`); format 1 manifests
   (no secrets) stay readable.

Restoring needs nothing but the master private key and the suppliers: list
what they hold, take the newest manifest whose signature verifies, unwrap the
key, download and check the blocks with the tested Downloader, decompress,
check the export's hash, hand the secrets to ``restore_secrets`` (my keys
are back before the catalog that needs them), and import it. After a new
backup is stored, the one before the previous is deleted (two always remain).
A backup is skipped when neither the catalog export nor the secrets changed
since the last one (their digests are kept in the catalog's meta table).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from bitnode import boundedjson
from bitnode.crypt import keys
from bitnode.crypt.keys import RsaPrivateKey
from bitnode.errors import BadRequest, Conflict, NotFound, Unavailable
from bitnode.storage import key_backup, segment_crypto
from bitnode.storage.catalog import Catalog
from bitnode.storage.downloader import Downloader
from bitnode.storage.job_context import Placement
from bitnode.storage.patience import GraceWait, Patience
from bitnode.storage.ports import SegmentMeta, version_prefix
from bitnode.storage.uploader import Uploader

MANIFEST_FORMAT = 2
#: Manifest formats this code reads: 1 has no ``secrets``.
READABLE_FORMATS = (1, 2)
PREFIX = "catalog-"
MANIFEST = "manifest"
SERIAL_META = "catalog-backup-serial"
DIGEST_META = "catalog-backup-sha256"
SECRETS_DIGEST_META = "catalog-backup-secrets-sha256"
_MANIFEST_RE = re.compile(r"^catalog-(\d{1,18})/manifest$")
MAX_MANIFEST = 16 * 1024 * 1024
# Least wait for suppliers still silent once enough have answered a listing or a manifest store.
GRACE_FLOOR = 5.0

RunInThread = Callable[..., defer.Deferred]


def backup_version_id(serial: int) -> str:
    """The version id of backup number ``serial``."""
    return f"{PREFIX}{serial}"


def export_digest(catalog: Catalog) -> str:
    """SHA-256 of the catalog's export, read as it streams (memory flat in the catalog's size). Worker thread."""
    digest = hashlib.sha256()
    for chunk in catalog.export_chunks():
        digest.update(chunk)
    return digest.hexdigest()


def write_compressed_export(catalog: Catalog, path: str, level: int = 6) -> str:
    """The catalog's export, zlib-compressed as it streams, into ``path`` (fsynced); returns the export's SHA-256.

    Worker thread. Memory stays flat in the catalog's size.
    """
    digest = hashlib.sha256()
    packer = zlib.compressobj(level)
    with open(path, "wb") as handle:
        for chunk in catalog.export_chunks():
            digest.update(chunk)
            handle.write(packer.compress(chunk))
        handle.write(packer.flush())
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest()


def _read_and_remove(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    finally:
        _remove(path)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _unpack_export(path: str, serial: int, expected_sha256: str) -> bytes:
    """Read, remove, decompress and check a downloaded backup. Worker thread."""
    try:
        export = zlib.decompress(_read_and_remove(path))
    except zlib.error as err:
        raise BadRequest(f"catalog backup {serial} does not decompress: {err}") from None
    if hashlib.sha256(export).hexdigest() != expected_sha256:
        raise BadRequest(f"catalog backup {serial} does not match its manifest")
    return export


def sign_manifest(master: RsaPrivateKey, manifest: dict) -> bytes:
    """The stored form: ``{"manifest": <canonical JSON text>, "signature": <base64>}``. Worker thread."""
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    signature = keys.sign(master, body.encode("utf-8"))
    return json.dumps({"manifest": body, "signature": base64.b64encode(signature).decode("ascii")}).encode("utf-8")


def open_manifest(master: RsaPrivateKey, data: bytes, serial: int, owner: str) -> dict:
    """Verify a stored manifest against my key and what it should be; return it. Worker thread."""
    try:
        outer = boundedjson.loads(data, "catalog manifest")
        body = outer["manifest"]
        signature = base64.b64decode(outer["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as err:
        raise BadRequest(f"catalog manifest {serial} is not readable: {err}") from None
    if not keys.verify(master.public_key(), body.encode("utf-8"), signature):
        raise BadRequest(f"catalog manifest {serial} is not signed by my key")
    manifest = json.loads(body)
    if manifest.get("format") not in READABLE_FORMATS or (manifest.get("serial"), manifest.get("owner")) != (
            serial, owner):
        raise BadRequest(f"catalog manifest {serial} is for another backup or owner, or of an unknown format")
    return manifest


def open_secrets(master: RsaPrivateKey, manifest: dict, owner: str) -> dict | None:
    """The secrets document a verified manifest carries, or None (format 1, or stored without). Worker thread."""
    sealed = manifest.get("secrets") if manifest.get("format", 1) >= 2 else None
    if sealed is None:
        return None
    try:
        data = base64.b64decode(sealed, validate=True)
    except (ValueError, TypeError) as err:
        raise BadRequest(f"catalog manifest {manifest.get('serial')} has unreadable secrets: {err}") from None
    return key_backup.open_sealed(master, data, owner)


@dataclass(eq=False, repr=False)
class CatalogBackup:
    """Backs the catalog up to the suppliers and restores it from them.

    ``secrets()`` (optional; may return a Deferred) gives the plaintext
    document of :mod:`bitnode.storage.key_backup` to seal into each manifest;
    ``restore_secrets(document)`` (optional; may return a Deferred of a
    summary) takes it back on a restore, before the catalog is imported.
    """

    clock: IReactorTime
    run_in_thread: RunInThread
    catalog: Catalog
    customer_id: str
    placement: Callable[[], Placement]
    data_blocks: Callable[[int], int]
    master: Callable[[], RsaPrivateKey]
    temp_dir: str
    segment_size: Callable[[], int] = lambda: 4 * 1024 * 1024
    timeout: Callable[[], float] = lambda: 60.0
    secrets: Callable[[], Any] | None = None
    restore_secrets: Callable[[dict], Any] | None = None
    _uploader: Uploader | None = field(init=False, default=None)
    _downloader: Downloader | None = field(init=False, default=None)

    def cancel(self) -> None:
        """Stop a backup or restore in progress (it fails with TransferCancelled)."""
        for worker in (self._uploader, self._downloader):
            if worker is not None:
                worker.cancel()

    # --- backup ------------------------------------------------------------------------------

    async def backup(self, force: bool = False) -> dict:
        """Store the catalog as the next ``catalog-<serial>``; skipped when nothing changed since the last one."""
        digest = await self.run_in_thread(export_digest, self.catalog)
        secrets = await defer.maybeDeferred(self.secrets) if self.secrets is not None else None
        secrets_digest = key_backup.digest(secrets) if secrets is not None else ""
        last = await self.run_in_thread(self.catalog.get_meta, DIGEST_META)
        last_secrets = await self.run_in_thread(self.catalog.get_meta, SECRETS_DIGEST_META, "")
        serial_text = await self.run_in_thread(self.catalog.get_meta, SERIAL_META, "0")
        if digest == last and secrets_digest == last_secrets and not force:
            return {"skipped": True, "serial": int(serial_text), "sha256": digest,
                    "keys": len(secrets["keys"]) if secrets is not None else 0}
        serial = int(serial_text) + 1
        version_id = backup_version_id(serial)
        placement = self.placement()
        ids, servers = list(placement.positions), list(placement.servers)
        n = len(ids)
        k = self.data_blocks(n)
        master = self.master()
        key = segment_crypto.new_version_key()
        temp = os.path.join(self.temp_dir, f"{version_id}.upload")
        # The catalog may have changed since its digest was taken: the manifest names what was written.
        digest = await self.run_in_thread(write_compressed_export, self.catalog, temp)
        try:
            self._uploader = Uploader(self.run_in_thread, self.clock, servers, k, n, segment_size=self.segment_size(),
                                      store_timeout=self.timeout())
            result = await self._uploader.upload(temp, version_id, key, self.customer_id)
        finally:
            self._uploader = None
            await self.run_in_thread(_remove, temp)
        wrapped = await self.run_in_thread(keys.wrap_key, master.public_key(), key)
        manifest = {
            "format": MANIFEST_FORMAT, "serial": serial, "owner": self.customer_id, "created": self.clock.seconds(),
            "k": k, "n": n, "suppliers": ids, "size": result.file_size, "sha256": digest,
            "wrapped_key": base64.b64encode(wrapped).decode("ascii"),
            "segments": [[m.plaintext_length, list(m.block_sha256), list(m.stored)] for m in result.segments],
        }
        if secrets is not None:
            sealed = await self.run_in_thread(key_backup.seal, master, secrets)
            manifest["secrets"] = base64.b64encode(sealed).decode("ascii")
        stored = await self.run_in_thread(sign_manifest, master, manifest)
        path = f"{version_id}/{MANIFEST}"
        acked = await self._to_all(servers, k, lambda server: server.store_block(self.customer_id, path, stored))
        if acked < k:
            raise Unavailable(f"catalog backup {serial}: only {acked} suppliers took its manifest, {k} needed")
        await self.run_in_thread(self.catalog.set_meta, SERIAL_META, str(serial))
        await self.run_in_thread(self.catalog.set_meta, DIGEST_META, digest)
        await self.run_in_thread(self.catalog.set_meta, SECRETS_DIGEST_META, secrets_digest)
        if serial > 2:
            # Two backups always remain: this one and the previous.
            old = version_prefix(backup_version_id(serial - 2))
            await self._to_all(servers, k, lambda server: server.delete(self.customer_id, old))
        return {"skipped": False, "serial": serial, "sha256": digest, "bytes": result.file_size,
                "suppliers": acked, "keys": len(secrets["keys"]) if secrets is not None else 0}

    # --- restore -----------------------------------------------------------------------------

    async def newest_serials(self) -> tuple[list[int], dict[int, list[str]]]:
        """Backup serials found on the suppliers, newest first, and who holds each manifest.

        None found is an answer only when at least n-k+1 of the current
        suppliers listed my files (a backup counts once k of them hold its
        manifest, so it cannot hide among the rest); with fewer, Unavailable:
        the restore is tried again rather than concluding there is nothing.
        """
        placement = self.placement()
        n = len(placement.positions)
        holders: dict[int, list[str]] = {}
        calls = {}
        for supplier_id, server in placement.holders().items():  # retiring holders may have newer ones
            # A prefix needs a trailing "/": there is no way to ask for "catalog-*" only.
            d = defer.maybeDeferred(server.list_blocks, self.customer_id, "")
            d.addTimeout(self.timeout(), self.clock)
            calls[supplier_id] = d
        # A backup counts once k suppliers hold its manifest, so any n-k+1 listings show the newest:
        # after those, a silent supplier only gets a grace.
        outcomes = await self._gather(calls, n - self.data_blocks(n) + 1)
        answered = 0
        for supplier_id, (ok, listing) in outcomes.items():
            if not ok:
                continue
            answered += 1
            for path in listing:
                found = _MANIFEST_RE.match(path)
                if found:
                    holders.setdefault(int(found.group(1)), []).append(supplier_id)
        if not answered:
            raise Unavailable("no supplier answered: cannot look for catalog backups")
        needed = n - self.data_blocks(n) + 1
        listed = sum(1 for supplier_id in set(placement.positions) if supplier_id and outcomes.get(
            supplier_id, (False, None))[0])
        if not holders and listed < needed:
            raise Unavailable(f"only {listed} of my {n} suppliers listed my files: {needed} must, to know that "
                              "there is no catalog backup")
        return sorted(holders, reverse=True), holders

    async def restore(self, replace: bool = False) -> dict:
        """Import the newest catalog backup that verifies. NotFound if there is none.

        Refuses (Conflict) to replace a catalog that has files unless ``replace``.
        """
        serials, holders = await self.newest_serials()
        if not serials:
            raise NotFound("no catalog backup on the suppliers")
        # Whatever happens next, my next backup must be newer than any found.
        current = int(await self.run_in_thread(self.catalog.get_meta, SERIAL_META, "0"))
        await self.run_in_thread(self.catalog.set_meta, SERIAL_META, str(max(current, serials[0])))
        by_id = self.placement().holders()
        master = self.master()
        problems = []
        for serial in serials:
            try:
                manifest = await self._fetch_manifest(serial, holders[serial], by_id, master)
                secrets = await self.run_in_thread(open_secrets, master, manifest, self.customer_id)
                export = await self._download(serial, manifest, by_id, master)
            except (BadRequest, Unavailable, NotFound) as err:
                problems.append(f"backup {serial}: {err}")
                continue
            empty = await self.run_in_thread(self.catalog.is_empty)
            if not empty and not replace:
                raise Conflict("the catalog already has files; not replacing it with the backup")
            restored_secrets = None
            if secrets is not None and self.restore_secrets is not None:
                # The keys first: files under a share or group key are useless without them.
                restored_secrets = await defer.maybeDeferred(self.restore_secrets, secrets)
            await self.run_in_thread(self.catalog.import_, export)
            await self.run_in_thread(self.catalog.set_meta, DIGEST_META, manifest["sha256"])
            items = await self.run_in_thread(self.catalog.list)
            return {"serial": serial, "items": len(items), "sha256": manifest["sha256"], "skipped": problems,
                    "secrets": restored_secrets}
        raise Unavailable("no catalog backup could be restored: " + "; ".join(problems))

    async def _fetch_manifest(self, serial: int, holders: list[str], by_id: dict, master: RsaPrivateKey) -> dict:
        path = f"{backup_version_id(serial)}/{MANIFEST}"
        last_error: Exception = NotFound(f"manifest {serial} not found")
        for supplier_id in holders:
            try:
                d = defer.maybeDeferred(by_id[supplier_id].fetch_block, self.customer_id, path)
                d.addTimeout(self.timeout(), self.clock)
                data = await d
                if len(data) > MAX_MANIFEST:
                    raise BadRequest(f"manifest {serial} is too large")
                return await self.run_in_thread(open_manifest, master, data, serial, self.customer_id)
            except Exception as err:  # noqa: BLE001 - try the next copy
                last_error = err
        raise last_error if isinstance(last_error, (BadRequest, NotFound)) else Unavailable(str(last_error))

    async def _download(self, serial: int, manifest: dict, by_id: dict, master: RsaPrivateKey) -> bytes:
        version_id = backup_version_id(serial)
        try:
            key = await self.run_in_thread(keys.unwrap_key, master, base64.b64decode(manifest["wrapped_key"]))
            k, n = int(manifest["k"]), int(manifest["n"])
            segments = [SegmentMeta(i, int(length), tuple(shas), tuple(stored))
                        for i, (length, shas, stored) in enumerate(manifest["segments"])]
            servers = [by_id.get(sid) if sid else None for sid in manifest["suppliers"]]
        except (KeyError, TypeError, ValueError) as err:
            raise BadRequest(f"catalog manifest {serial} is incomplete: {err}") from None
        temp = os.path.join(self.temp_dir, f"{version_id}.restore")
        self._downloader = Downloader(self.run_in_thread, self.clock, servers, k, n, fetch_timeout=self.timeout())
        try:
            await self._downloader.download(segments, version_id, key, self.customer_id, temp)
        finally:
            self._downloader = None
        return await self.run_in_thread(_unpack_export, temp, serial, manifest.get("sha256"))

    # --- helpers --------------------------------------------------------------------------------

    async def _to_all(self, servers: list, enough: int, call) -> int:
        """``call(server)`` on every server; how many succeeded (stragglers get a grace after ``enough``)."""
        calls = {}
        for pos, server in enumerate(servers):
            if server is not None:
                d = defer.maybeDeferred(call, server)
                d.addTimeout(self.timeout(), self.clock)
                calls[pos] = d
        outcomes = await self._gather(calls, enough)
        return sum(1 for ok, _ in outcomes.values() if ok)

    def _gather(self, calls: dict, enough: int) -> defer.Deferred:
        return GraceWait(self.clock, Patience(GRACE_FLOOR, self.timeout()), calls, enough).done
