"""Tests for bitnode.crypt.keystore."""

from __future__ import annotations

import json
import os
import stat

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.crypt import keys
from bitnode.crypt.keystore import KeyInfo, KeyStore
from bitnode.errors import BadRequest, Conflict, NotFound
from tests.support import clock_at

OWNER = "alice@id.example.net_8084"
MASTER = "master$" + OWNER


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class _OtherKeys:
    """Keys for add_public/add_private, generated once and kept as a class attribute."""

    cached: tuple[keys.RsaPrivateKey, ...] = ()


def other_keys() -> tuple[keys.RsaPrivateKey, keys.RsaPrivateKey]:
    if not _OtherKeys.cached:
        _OtherKeys.cached = (keys.generate_rsa(2048), keys.generate_rsa(2048))
    return _OtherKeys.cached  # type: ignore[return-value]


class KeyStoreTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.clock = clock_at(1_700_000_000)
        self.thread_calls: list[str] = []
        self.store = self.make_store()

    def run_in_thread(self, fn, *args):
        self.thread_calls.append(fn.__name__)
        return defer.succeed(fn(*args))

    def make_store(self) -> KeyStore:
        return KeyStore(self.dir, OWNER, self.run_in_thread, clock=self.clock)

    def create(self, alias: str, label: str = "", store: KeyStore | None = None) -> KeyInfo:
        return self.successResultOf((store or self.store).create(alias, 2048, label))

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    # -- create ---------------------------------------------------------

    def test_create_makes_private_key_in_a_thread(self) -> None:
        info = self.create("share1", label="photos")
        self.assertEqual(self.thread_calls, ["_generate_and_store"])
        self.assertEqual(info.key_id, "share1$" + OWNER)
        self.assertEqual(info.alias, "share1")
        self.assertEqual(info.creator, OWNER)
        self.assertEqual(info.size, 2048)
        self.assertEqual(info.label, "photos")
        self.assertTrue(info.is_private)
        self.assertEqual(info.created, 1_700_000_000)
        self.assertEqual(info.fingerprint, self.store.public_key(info.key_id).fingerprint())
        self.assertEqual(self.store.get(info.key_id), info)

    def test_files_are_private(self) -> None:
        info = self.create("share1")
        self.assertEqual(_mode(self.path(info.key_id + ".private")), 0o600)
        self.assertEqual(_mode(self.path(info.key_id + ".json")), 0o600)
        self.assertEqual(_mode(self.dir) & 0o077, 0)
        self.assertFalse(os.path.exists(self.path(info.key_id + ".public")))

    def test_create_rejects_bad_aliases(self) -> None:
        for alias in ("", "master", "Share", "a b", "a$b", "a@b", "x" * 65, "ä", None):
            self.failureResultOf(self.store.create(alias, 2048), BadRequest)
        self.assertEqual(self.thread_calls, [])

    def test_alias_of_64_characters_is_fine(self) -> None:
        self.assertEqual(self.create("x" * 64).alias, "x" * 64)

    def test_create_rejects_bad_size_and_label(self) -> None:
        self.failureResultOf(self.store.create("a", 512), BadRequest)
        self.failureResultOf(self.store.create("a", 2048, "bad\nlabel"), BadRequest)
        strict = KeyStore(self.mktemp(), OWNER, self.run_in_thread, min_key_size=3072)
        self.failureResultOf(strict.create("a", 2048), BadRequest)

    def test_create_existing_alias_conflicts(self) -> None:
        self.create("share1")
        self.failureResultOf(self.store.create("share1", 2048), Conflict)

    def test_create_while_same_alias_is_generating_conflicts(self) -> None:
        pending: list[defer.Deferred] = []
        calls: list[tuple] = []

        def slow(fn, *args):
            calls.append((fn, args))
            d = defer.Deferred()
            pending.append(d)
            return d

        store = KeyStore(self.mktemp(), OWNER, slow)
        first = store.create("share1", 2048)
        self.failureResultOf(store.create("share1", 2048), Conflict)
        fn, args = calls[0]
        pending[0].callback(fn(*args))
        self.assertEqual(self.successResultOf(first).alias, "share1")

    def test_failed_generation_can_be_retried(self) -> None:
        def broken(fn, *args):
            return defer.fail(RuntimeError("thread pool stopped"))

        store = KeyStore(self.dir, OWNER, broken)
        self.failureResultOf(store.create("share1", 2048), RuntimeError)
        self.assertFalse(store.has("share1$" + OWNER))
        self.assertEqual(self.successResultOf(self.make_store().create("share1", 2048)).alias, "share1")

    def test_create_master(self) -> None:
        info = self.successResultOf(self.store.create_master(2048))
        self.assertEqual(info.key_id, MASTER)
        self.assertEqual(self.store.master_key_id, MASTER)
        self.failureResultOf(self.store.create_master(2048), Conflict)

    # -- list, get, label, erase ----------------------------------------

    def test_list_puts_master_first(self) -> None:
        self.create("zeta")
        self.create("alpha")
        self.successResultOf(self.store.create_master(2048))
        ids = [info.key_id for info in self.store.list()]
        self.assertEqual(ids, [MASTER, "alpha$" + OWNER, "zeta$" + OWNER])

    def test_get_unknown_is_not_found(self) -> None:
        self.assertRaises(NotFound, self.store.get, "nope$" + OWNER)
        self.assertRaises(NotFound, self.store.private_key, "nope$" + OWNER)
        self.assertRaises(NotFound, self.store.public_key, "nope$" + OWNER)

    def test_label_is_updated_and_persisted(self) -> None:
        info = self.create("share1", label="old")
        self.clock.advance(100)
        updated = self.store.label(info.key_id, "new label")
        self.assertEqual(updated.label, "new label")
        self.assertEqual(updated.created, info.created)
        self.assertEqual(self.make_store().get(info.key_id).label, "new label")
        self.assertRaises(BadRequest, self.store.label, info.key_id, "x" * 257)
        self.assertRaises(NotFound, self.store.label, "nope$" + OWNER, "x")

    def test_erase_removes_key_and_files(self) -> None:
        info = self.create("share1")
        self.store.erase(info.key_id)
        self.assertRaises(NotFound, self.store.get, info.key_id)
        self.assertEqual([n for n in os.listdir(self.dir) if not n.startswith(".")], [])
        self.assertRaises(NotFound, self.store.erase, info.key_id)

    def test_master_key_cannot_be_erased(self) -> None:
        self.successResultOf(self.store.create_master(2048))
        self.assertRaises(Conflict, self.store.erase, MASTER)
        self.assertTrue(self.store.has(MASTER))

    # -- as_dict --------------------------------------------------------

    def test_as_dict_shape(self) -> None:
        info = self.create("share1", label="L")
        result = self.store.as_dict(info)
        self.assertEqual(
            sorted(result),
            ["alias", "creator", "fingerprint", "is_private", "key_id", "label", "public", "size"],
        )
        self.assertTrue(result["public"].startswith("-----BEGIN PUBLIC KEY-----"))
        with_private = self.store.as_dict(info, include_private=True)
        self.assertTrue(with_private["private"].startswith("-----BEGIN PRIVATE KEY-----"))
        self.assertEqual(keys.private_from_pem(with_private["private"]), self.store.private_key(info.key_id))

    def test_as_dict_of_public_key_has_no_private_even_if_asked(self) -> None:
        pub_pem = other_keys()[0].public_key().to_pem()
        info = self.store.add_public("friend$bob@id.example.net", pub_pem)
        self.assertNotIn("private", self.store.as_dict(info, include_private=True))

    # -- add_public / add_private ---------------------------------------

    def test_add_public(self) -> None:
        bob = other_keys()[0]
        info = self.store.add_public("friend$bob@id.example.net", bob.public_key().to_pem(), "Bob")
        self.assertFalse(info.is_private)
        self.assertEqual(info.creator, "bob@id.example.net")
        self.assertEqual(info.fingerprint, bob.fingerprint())
        self.assertEqual(self.store.public_key(info.key_id), bob.public_key())
        self.assertRaises(NotFound, self.store.private_key, info.key_id)
        self.assertTrue(os.path.exists(self.path(info.key_id + ".public")))

    def test_add_public_again_is_idempotent_but_another_key_conflicts(self) -> None:
        bob, carol = other_keys()
        kid = "friend$bob@id.example.net"
        first = self.store.add_public(kid, bob.public_key().to_pem())
        self.assertEqual(self.store.add_public(kid, bob.public_key().to_pem()), first)
        self.assertRaises(Conflict, self.store.add_public, kid, carol.public_key().to_pem())

    def test_add_private_upgrades_a_public_key(self) -> None:
        bob = other_keys()[0]
        kid = "share$bob@id.example.net"
        self.store.add_public(kid, bob.public_key().to_pem(), "shared")
        info = self.store.add_private(kid, bob.to_pem())
        self.assertTrue(info.is_private)
        self.assertEqual(info.label, "shared")
        self.assertEqual(self.store.private_key(kid), bob)
        self.assertFalse(os.path.exists(self.path(kid + ".public")))
        self.assertEqual(_mode(self.path(kid + ".private")), 0o600)
        self.assertEqual(self.store.add_private(kid, bob.to_pem()), info)

    def test_add_private_with_other_key_conflicts(self) -> None:
        bob, carol = other_keys()
        self.store.add_private("share$bob@id.example.net", bob.to_pem())
        self.assertRaises(Conflict, self.store.add_private, "share$bob@id.example.net", carol.to_pem())

    def test_add_private_master_key_for_recovery(self) -> None:
        bob = other_keys()[0]
        info = self.store.add_private(MASTER, bob.to_pem())
        self.assertEqual(info.alias, "master")
        self.assertRaises(Conflict, self.store.erase, MASTER)

    def test_add_rejects_bad_input(self) -> None:
        bob = other_keys()[0]
        for bad_id in ("nodollar@host", "Bad$bob@host", "a$bob", "a$bob@host_80"):
            self.assertRaises(BadRequest, self.store.add_public, bad_id, bob.public_key().to_pem())
        self.assertRaises(BadRequest, self.store.add_public, "a$bob@host", b"junk")
        self.assertRaises(BadRequest, self.store.add_public, "a$bob@host", bob.to_pem())
        self.assertRaises(BadRequest, self.store.add_private, "a$bob@host", bob.public_key().to_pem())
        self.assertRaises(BadRequest, self.store.add_public, "a$bob@host", bob.public_key().to_pem(), "\x00")

    # -- reload ---------------------------------------------------------

    def test_reload_from_disk(self) -> None:
        master = self.successResultOf(self.store.create_master(2048))
        share = self.create("share1", label="photos")
        bob = other_keys()[0]
        friend = self.store.add_public("friend$bob@id.example.net", bob.public_key().to_pem(), "Bob")
        reloaded = self.make_store()
        self.assertEqual(reloaded.list(), [master, friend, share])
        self.assertEqual(reloaded.private_key(share.key_id), self.store.private_key(share.key_id))
        self.assertEqual(reloaded.load_errors, [])

    def test_corrupt_files_are_reported_and_skipped(self) -> None:
        good = self.create("good")
        secret_looking = b"-----BEGIN PRIVATE KEY-----\nTOPSECRETMATERIAL\n-----END PRIVATE KEY-----\n"
        with open(self.path("broken$" + OWNER + ".private"), "wb") as f:
            f.write(secret_looking)
        os.chmod(self.path("broken$" + OWNER + ".private"), 0o600)
        with open(self.path("not a key id.public"), "wb") as f:
            f.write(other_keys()[0].public_key().to_pem())
        with open(self.path(good.key_id + ".json"), "wb") as f:
            f.write(b"{not json")
        with open(self.path("README.txt"), "wb") as f:
            f.write(b"ignored")
        reloaded = self.make_store()
        self.assertEqual([info.key_id for info in reloaded.list()], [good.key_id])
        self.assertEqual(reloaded.get(good.key_id).label, "")
        self.assertEqual(len(reloaded.load_errors), 3, reloaded.load_errors)
        self.assertNotIn("TOPSECRET", " ".join(reloaded.load_errors))

    def test_loose_private_key_mode_is_fixed_on_load(self) -> None:
        info = self.create("share1")
        path = self.path(info.key_id + ".private")
        os.chmod(path, 0o644)
        reloaded = self.make_store()
        self.assertEqual(_mode(path), 0o600)
        self.assertTrue(reloaded.has(info.key_id))

    def test_public_file_next_to_private_is_ignored(self) -> None:
        info = self.create("share1")
        with open(self.path(info.key_id + ".public"), "wb") as f:
            f.write(other_keys()[0].public_key().to_pem())
        reloaded = self.make_store()
        self.assertTrue(reloaded.get(info.key_id).is_private)
        self.assertEqual(reloaded.get(info.key_id).fingerprint, info.fingerprint)
        self.assertEqual(len(reloaded.load_errors), 1)

    def test_meta_file_content(self) -> None:
        info = self.create("share1", label="photos")
        with open(self.path(info.key_id + ".json"), "rb") as f:
            meta = json.loads(f.read())
        self.assertEqual(meta, {"version": 1, "label": "photos", "created": 1_700_000_000})

    def test_bad_owner_is_rejected(self) -> None:
        self.assertRaises(BadRequest, KeyStore, self.mktemp(), "not-a-global-id", self.run_in_thread)

    def test_listeners_hear_of_every_change_and_not_of_a_no_op(self) -> None:
        heard: list[int] = []
        unsubscribe = self.store.subscribe(lambda: heard.append(len(self.store.list())))
        info = self.create("share_a", "x")
        other, _ = other_keys()
        self.store.add_public("master$bob@x.net", other.public_key().to_pem())
        self.store.add_public("master$bob@x.net", other.public_key().to_pem())  # the same again: no change
        self.store.label(info.key_id, "y")
        self.store.erase(info.key_id)
        self.assertEqual(heard, [1, 2, 2, 1])
        self.failureResultOf(self.store.create("share_a", 2048).addCallback(lambda _: self.store.create("share_a", 2048)),
                             Conflict)
        self.assertEqual(len(heard), 5)  # the first create of the two counted, the Conflict did not

        def broken() -> None:
            raise RuntimeError("listener bug")

        drop_broken = self.store.subscribe(broken)
        self.create("share_b")  # a broken listener is logged, the key is still stored
        self.assertTrue(self.store.has("share_b$" + OWNER))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        drop_broken()
        unsubscribe()
        unsubscribe()
        self.store.erase("share_b$" + OWNER)
        self.assertEqual(len(heard), 6)

    # -- generations (a share key rotated by its owner) ---------------------------------

    def test_replacing_a_key_keeps_the_old_generation_to_open_old_data(self) -> None:
        first, second = other_keys()
        key_id = "share_a$bob@x.net"
        self.store.add_private(key_id, first.to_pem(), "holidays")
        wrapped = keys.wrap_key(first.public_key(), b"k" * 32)
        info = self.store.replace_private(key_id, second.to_pem())
        self.assertEqual((info.fingerprint, info.label), (second.fingerprint(), "holidays"))
        self.assertEqual(self.store.private_key(key_id).fingerprint(), second.fingerprint())
        (previous,) = self.store.previous_private_keys(key_id)
        self.assertEqual(keys.unwrap_key(previous, wrapped), b"k" * 32)
        self.assertEqual(_mode(self.path(f"previous/{key_id}.1.private")), 0o600)
        # the same key again changes nothing; the generations survive a reload and go with an erase
        self.store.replace_private(key_id, second.to_pem())
        reloaded = self.make_store()
        self.assertEqual(reloaded.load_errors, [])
        self.assertEqual([k.fingerprint() for k in reloaded.previous_private_keys(key_id)], [first.fingerprint()])
        self.store.replace_private(key_id, first.to_pem())
        self.assertEqual([k.fingerprint() for k in self.store.previous_private_keys(key_id)],
                         [second.fingerprint(), first.fingerprint()])
        self.store.erase(key_id)
        self.assertEqual(self.store.previous_private_keys(key_id), [])
        self.assertEqual(os.listdir(self.path("previous")), [])

    def test_replacing_adds_an_unknown_key_and_never_touches_a_master_key(self) -> None:
        first, second = other_keys()
        self.store.replace_private("share_b$bob@x.net", first.to_pem(), "new")
        self.assertEqual(self.store.get("share_b$bob@x.net").label, "new")
        self.assertEqual(self.store.previous_private_keys("share_b$bob@x.net"), [])
        self.assertRaises(Conflict, self.store.replace_private, "master$bob@x.net", second.to_pem())
        self.assertRaises(BadRequest, self.store.replace_private, "share_b$bob@x.net", b"not a key")

    def test_only_the_newest_generations_are_kept(self) -> None:
        from bitnode.crypt import keystore

        self.patch(keystore, "MAX_PREVIOUS", 2)
        first, second = other_keys()
        key_id = "share_c$bob@x.net"
        for pem in (first, second, first, second):
            self.store.replace_private(key_id, pem.to_pem())
        self.assertEqual(sorted(os.listdir(self.path("previous"))), [f"{key_id}.2.private", f"{key_id}.3.private"])
