"""The owner's side of its shares, kept current: what my suppliers hold of each share, and my writers' files.

For every share of mine that has members, a :class:`ShareKeeper`:

- **publishes** its lists and index to my suppliers
  (:class:`~bitnode.access.share_publisher.SharePublisher`): at once when a
  member is granted or removed, ``services/shares/index-delay`` seconds after
  files under the share changed (changes close together go out once), to
  every supplier after my suppliers changed, again after
  :data:`PUBLISH_RETRY` seconds when no supplier took it, and once at start
  (what a stop or a crash left unsent);
- **takes in my writers' files** (:mod:`bitnode.access.share_absorb`) every
  ``services/shares/absorb-interval`` seconds, when I open my share
  (``share_open``), and before a revoke rotates the key; what it took goes
  into my catalog and, through the next publish, into my index.

Publishes and absorptions of all shares run one at a time (one lock): a
share being deleted is skipped from the moment its deletion begins.
Counters (``service_info service_shares``): ``published``,
``publish_failed``, ``absorb_rounds``, ``absorbed_versions``,
``forgotten_versions``, ``absorb_failed``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.internet import defer
from twisted.logger import Logger

from bitnode.access import share_absorb
from bitnode.access.share_publisher import SharePublisher
from bitnode.access.share_reader import ShareReader
from bitnode.errors import BitnodeError

#: Seconds before a publish that reached no supplier is tried again (suppliers changing also retries it).
PUBLISH_RETRY = 60.0


@dataclass(eq=False, repr=False)
class ShareKeeper:
    """Publishes my shares and takes in my writers' files; see the module docstring.

    :param registry: returns the ShareRegistry (None once the service stopped).
    :param reader_for: ``reader_for(key_id)`` → a ShareReader of my own share.
    :param holds: ``holds(key_id)`` → whether I still hold that share's private key.
    :param settings: ``{"index_delay", "absorb_interval", "reshare"}`` callables.
    :param note: ``note(event, key_id, detail)`` adds to the share history.
    """

    log = Logger()

    ctx: Any
    registry: Callable[[], Any]
    publisher: SharePublisher
    storage: Callable[[], Any]
    keystore: Callable[[], Any]
    reader_for: Callable[[str], ShareReader]
    holds: Callable[[str], bool]
    settings: dict
    background: Any
    note: Callable[[str, str, str], Any] = lambda event, key_id, detail: None
    lock: defer.DeferredLock = field(init=False, default_factory=defer.DeferredLock)
    deleting: set[str] = field(init=False, default_factory=set)
    counters: dict[str, int] = field(init=False, default_factory=lambda: dict.fromkeys(
        ("published", "publish_failed", "absorb_rounds", "absorbed_versions", "forgotten_versions", "absorb_failed"),
        0))
    _publish_call: Any = field(init=False, default=None)
    _publish_force: bool = field(init=False, default=False)
    _absorb_call: Any = field(init=False, default=None)
    _stopped: bool = field(init=False, default=False)

    def start(self) -> None:
        """Publish what a stop or a crash may have left unsent; take in writers' files from now on."""
        self._stopped = False
        self.schedule_publish(force=True)
        self._absorb_call = self.ctx.call_later(self.settings["absorb_interval"](), self._absorb_all)

    def stop(self) -> None:
        """No new publish or absorption from now on (one running finishes)."""
        self._stopped = True
        for call in (self._publish_call, self._absorb_call):
            if call is not None and call.active():
                call.cancel()
        self._publish_call = self._absorb_call = None

    def _mine_with_members(self) -> list[dict]:
        registry = self.registry()
        if registry is None:
            return []
        return [r for r in registry.shares() if r["mine"] and r["grantees"] and self.holds(r["key_id"])]

    # --- publishing ---------------------------------------------------------------------------------

    async def publish_now(self, key_id: str, readers_changed: bool = False, force: bool = False,
                          timeout: float | None = None) -> dict:
        """Publish one share now (after any publish running); a failure is reported, not raised."""
        try:
            return await self.lock.run(
                lambda: defer.Deferred.fromCoroutine(self._publish(key_id, readers_changed, force, timeout)))
        except BitnodeError as err:
            self.counters["publish_failed"] += 1
            self.log.info("publishing share {key_id} failed: {err}", key_id=key_id, err=err)
            return {"key_id": key_id, "error": str(err)}

    async def _publish(self, key_id: str, readers_changed: bool, force: bool, timeout: float | None) -> dict:
        registry = self.registry()
        if key_id in self.deleting or registry is None:
            return {"key_id": key_id, "skipped": "the share is being deleted"}
        record = registry.require(key_id)
        members = {g: "rw" if g in record["writers"] else "ro" for g in record["grantees"]}
        outcome = await self.publisher.publish(key_id, members, record["index_serial"], record["index_sha256"],
                                               readers_changed, force, timeout, reshare=self.settings["reshare"](),
                                               absorbed=record["absorbed"])
        if outcome["index_sent"] and registry.get(key_id) is not None:
            registry.put(key_id, index_serial=outcome["serial"], index_sha256=outcome["sha256"])
        if outcome["index_sent"] or outcome["readers_sent"]:
            self.counters["published"] += 1
        return outcome

    def schedule_publish(self, force: bool = False) -> None:
        """Publish the shares I granted after ``index-delay`` (changes close together go out once)."""
        self._publish_force = self._publish_force or force
        if self._publish_call is None and not self._stopped:
            self._publish_call = self.ctx.call_later(self.settings["index_delay"](), self._publish_granted)

    def _publish_granted(self) -> None:
        self._publish_call = None
        force, self._publish_force = self._publish_force, False
        for record in self._mine_with_members():
            d = defer.Deferred.fromCoroutine(self.publish_now(record["key_id"], readers_changed=force, force=force))
            d.addCallback(self._retry_failed_publish, force)
            self.background.track(d, f"publishing {record['key_id']}")

    def _retry_failed_publish(self, outcome: dict, force: bool) -> None:
        if "error" in outcome and not self._stopped:
            self.ctx.call_later(PUBLISH_RETRY, self.schedule_publish, force)

    # --- taking in the writers' files -----------------------------------------------------------------

    async def absorb_now(self, key_id: str) -> dict:
        """Take in the files of one share's writers now: the round's figures (``{"error"}`` when it failed)."""
        try:
            return await self.lock.run(lambda: defer.Deferred.fromCoroutine(self._absorb(key_id)))
        except BitnodeError as err:
            self.counters["absorb_failed"] += 1
            self.log.info("taking in the writers' files of {key_id} failed: {err}", key_id=key_id, err=err)
            return {"key_id": key_id, "error": str(err)}

    async def _absorb(self, key_id: str) -> dict:
        registry = self.registry()
        if key_id in self.deleting or registry is None:
            return {"key_id": key_id, "skipped": "the share is being deleted"}
        record = registry.require(key_id)
        writers = sorted(set(record["writers"]) | set(record["absorbed"]))
        if not writers:
            return {"key_id": key_id, "taken": {}, "forgotten": {}, "conflicts": [], "problems": {}}
        storage = self.storage()
        storage.require_ready()
        store = self.keystore()
        generations = [store.private_key(key_id), *store.previous_private_keys(key_id)]
        outcome = await share_absorb.absorb(self.reader_for(key_id), storage, self.ctx.run_in_thread, key_id,
                                            [w for w in writers if w in record["writers"]], record["absorbed"],
                                            generations)
        self.counters["absorb_rounds"] += 1
        if registry.get(key_id) is not None:
            registry.put(key_id, absorbed=dict(record["absorbed"], **outcome.absorbed))
        if outcome.changed:
            taken = sum(len(v) for v in outcome.taken.values())
            forgotten = sum(len(v) for v in outcome.forgotten.values())
            self.counters["absorbed_versions"] += taken
            self.counters["forgotten_versions"] += forgotten
            self.note("absorbed", key_id, f"{taken} version(s) taken in, {forgotten} forgotten")
            storage.catalog_changed()  # backed up, and published with the next index
        return dict(outcome.as_dict(), key_id=key_id)

    def _absorb_all(self) -> None:
        self._absorb_call = None
        if self._stopped:
            return
        for record in self._mine_with_members():
            if record["writers"]:
                self.background.track(defer.Deferred.fromCoroutine(self.absorb_now(record["key_id"])),
                                      f"taking in the writers' files of {record['key_id']}", quiet=True)
        self._absorb_call = self.ctx.call_later(self.settings["absorb_interval"](), self._absorb_all)
