"""Tests for bitnode.main.settings: defaults, persistence, validation, listeners, views."""

from __future__ import annotations

import json
import os
import stat

from twisted.trial import unittest

from bitnode.errors import BadRequest, NotFound
from bitnode.main import settings as settings_module
from bitnode.main.options import BOOLEAN, DISK_SPACE, INTEGER, STRING, STRING_LIST, Option
from bitnode.main.settings import SETTINGS_FORMAT, Settings

GB = 1024 ** 3

OPTIONS = (
    Option("net/port", INTEGER, 8000, "A port.", minimum=0, maximum=65535, restart_needed=True),
    Option("net/host", STRING, "127.0.0.1", "A host.", pattern=r"[a-z0-9.]+"),
    Option("space/donated", DISK_SPACE, 8 * GB, "Donated space."),
    Option("mode/level", INTEGER, 2, "A level.", choices=(1, 2, 3)),
    Option("list/servers", STRING_LIST, [], "Servers."),
    Option("flag", BOOLEAN, False, "A top-level flag."),
)

LATE = Option("services/late/count", INTEGER, 5, "Registered by a service later.", minimum=1)


class SettingsTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "settings.json")

    def make(self, overrides: dict | None = None, options=OPTIONS) -> Settings:
        return Settings(self.path, options, overrides)

    def stored(self) -> dict:
        with open(self.path, encoding="utf-8") as handle:
            data = json.load(handle)
        self.assertEqual(data["format"], SETTINGS_FORMAT)
        return data["values"]

    def write_file(self, values: dict, fmt: int = SETTINGS_FORMAT) -> None:
        with open(self.path, "w", encoding="utf-8") as handle:
            json.dump({"format": fmt, "values": values}, handle)


class DefaultsTests(SettingsTestCase):
    def test_defaults_without_file(self) -> None:
        s = self.make()
        self.assertEqual(s.get("net/port"), 8000)
        self.assertEqual(s.get("space/donated"), 8 * GB)
        self.assertEqual(s.get("list/servers"), [])
        self.assertFalse(os.path.exists(self.path))

    def test_keys_in_schema_order(self) -> None:
        self.assertEqual(self.make().keys(), [o.key for o in OPTIONS])

    def test_key_is_normalised(self) -> None:
        s = self.make()
        self.assertEqual(s.get(" /net/port/ "), 8000)
        self.assertEqual(s.option("/net/port").key, "net/port")

    def test_unknown_key(self) -> None:
        s = self.make()
        err = self.assertRaises(NotFound, s.get, "net/nope")
        self.assertIn("net/nope", str(err))
        self.assertRaises(NotFound, s.set, "net/nope", 1)
        self.assertRaises(NotFound, s.option, None)
        self.assertRaises(NotFound, s.describe, "nope")

    def test_list_default_is_not_shared(self) -> None:
        # Mutating what get() returns must change neither the schema default nor another node's view.
        s = self.make()
        s.get("list/servers").append("evil:1")
        self.assertEqual(s.get("list/servers"), [])
        self.assertEqual(OPTIONS[4].default, [])
        s.set("list/servers", ["a:1"])
        s.get("list/servers").append("b:2")
        self.assertEqual(s.get("list/servers"), ["a:1"])


class SetTests(SettingsTestCase):
    def test_set_returns_old_and_new(self) -> None:
        s = self.make()
        self.assertEqual(s.set("net/port", "9000"), (8000, 9000))
        self.assertEqual(s.get("net/port"), 9000)

    def test_set_persists_with_private_mode(self) -> None:
        s = self.make()
        s.set("net/port", 9000)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(self.make().get("net/port"), 9000)

    def test_no_temp_files_left(self) -> None:
        s = self.make()
        s.set("net/port", 9000)
        s.set("net/port", 9001)
        self.assertEqual(os.listdir(self.dir), ["settings.json"])

    def test_only_non_defaults_stored(self) -> None:
        s = self.make()
        s.set("net/port", 9000)
        s.set("space/donated", "1 GB")
        self.assertEqual(self.stored(), {"net/port": 9000, "space/donated": GB})
        s.set("net/port", 8000)
        self.assertEqual(self.stored(), {"space/donated": GB})
        s.set("space/donated", "8 GB")
        self.assertEqual(self.stored(), {})

    def test_bad_value_changes_nothing(self) -> None:
        s = self.make()
        s.set("net/port", 9000)
        with open(self.path, "rb") as handle:
            before = handle.read()
        heard = []
        s.add_listener("", lambda *args: heard.append(args))
        for key, value in (("net/port", 70000), ("net/port", "x"), ("net/host", "UPPER"),
                           ("mode/level", 7), ("space/donated", "lots")):
            err = self.assertRaises(BadRequest, s.set, key, value)
            self.assertIn(f"bad value for {key}", str(err))
        self.assertEqual(s.get("net/port"), 9000)
        self.assertEqual(s.get("mode/level"), 2)
        with open(self.path, "rb") as handle:
            self.assertEqual(handle.read(), before)
        self.assertEqual(heard, [])

    def test_failed_write_keeps_old_value(self) -> None:
        s = self.make()
        heard = []
        s.add_listener("net/", lambda *args: heard.append(args))

        def refuse(path, data, mode=0o644):
            raise OSError(28, "No space left on device")

        self.patch(settings_module, "atomic_write", refuse)
        self.assertRaises(OSError, s.set, "net/port", 9000)
        self.assertEqual(s.get("net/port"), 8000)
        self.assertEqual(heard, [])
        self.assertFalse(os.path.exists(self.path))


class ListenerTests(SettingsTestCase):
    def test_listener_by_prefix(self) -> None:
        s = self.make()
        net, everything, other = [], [], []
        s.add_listener("net/", lambda *args: net.append(args))
        s.add_listener("", lambda *args: everything.append(args))
        s.add_listener("space/", lambda *args: other.append(args))
        s.set("net/port", 9000)
        s.set("flag", True)
        self.assertEqual(net, [("net/port", 8000, 9000)])
        self.assertEqual(everything, [("net/port", 8000, 9000), ("flag", False, True)])
        self.assertEqual(other, [])

    def test_listener_sees_persisted_value(self) -> None:
        s = self.make()
        seen = []
        s.add_listener("net/", lambda key, old, new: seen.append(Settings(self.path, OPTIONS).get(key)))
        s.set("net/port", 9100)
        self.assertEqual(seen, [9100])

    def test_no_call_when_unchanged(self) -> None:
        s = self.make()
        heard = []
        s.add_listener("net/", lambda *args: heard.append(args))
        s.set("net/port", 8000)
        s.set("net/port", "8000")
        self.assertEqual(heard, [])

    def test_remove_listener(self) -> None:
        s = self.make()
        heard = []

        def listener(*args):
            heard.append(args)

        s.add_listener("net/", listener)
        s.set("net/port", 1)
        s.remove_listener("net/", listener)
        s.set("net/port", 2)
        self.assertEqual(heard, [("net/port", 8000, 1)])
        self.assertRaises(ValueError, s.remove_listener, "net/", listener)

    def test_failing_listener_is_logged_and_others_still_run(self) -> None:
        s = self.make()
        heard = []

        def broken(*args):
            raise RuntimeError("listener bug")

        s.add_listener("net/", broken)
        s.add_listener("net/", lambda *args: heard.append(args))
        self.assertEqual(s.set("net/port", 1), (8000, 1))
        self.assertEqual(heard, [("net/port", 8000, 1)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(s.get("net/port"), 1)


class LoadTests(SettingsTestCase):
    def test_broken_file_moved_aside(self) -> None:
        for content in (b"{not json", b"\xff\xfe", b"[]", b'{"values": {}}', b'{"format": 99, "values": {}}',
                        b'{"format": 1, "values": []}'):
            with open(self.path, "wb") as handle:
                handle.write(content)
            s = self.make()
            self.assertEqual(s.get("net/port"), 8000)
            self.assertFalse(os.path.exists(self.path), content)
            with open(self.path + ".broken", "rb") as handle:
                self.assertEqual(handle.read(), content)
            # The node still works and writes a fresh file.
            s.set("net/port", 1)
            self.assertEqual(self.make().get("net/port"), 1)
            os.remove(self.path)

    def test_bad_stored_value_ignored(self) -> None:
        self.write_file({"net/port": 99999999, "net/host": "ok.host"})
        s = self.make()
        self.assertEqual(s.get("net/port"), 8000)
        self.assertEqual(s.get("net/host"), "ok.host")

    def test_stored_values_are_coerced(self) -> None:
        self.write_file({"space/donated": "2 GB", "flag": "yes"})
        s = self.make()
        self.assertEqual(s.get("space/donated"), 2 * GB)
        self.assertIs(s.get("flag"), True)

    def test_register_validates_value_loaded_earlier(self) -> None:
        self.write_file({LATE.key: "7"})
        s = self.make()
        self.assertRaises(NotFound, s.get, LATE.key)
        s.register(LATE)
        self.assertEqual(s.get(LATE.key), 7)

    def test_register_drops_invalid_value_loaded_earlier(self) -> None:
        self.write_file({LATE.key: 0})
        s = self.make()
        s.register(LATE)
        self.assertEqual(s.get(LATE.key), 5)
        # The next write forgets it on disk too.
        s.set("net/port", 1)
        self.assertNotIn(LATE.key, self.stored())

    def test_unregistered_value_kept_on_disk(self) -> None:
        # A value of a service that is not registered in this run survives other writes.
        self.write_file({LATE.key: 9})
        s = self.make()
        s.set("net/port", 1)
        self.assertEqual(self.stored(), {LATE.key: 9, "net/port": 1})

    def test_register_twice(self) -> None:
        s = self.make()
        s.register(LATE)
        s.register(Option(LATE.key, INTEGER, 5, LATE.description, minimum=1))
        self.assertRaises(ValueError, s.register, Option(LATE.key, INTEGER, 6, "other"))


class OverrideTests(SettingsTestCase):
    def test_override_applied_and_coerced(self) -> None:
        s = self.make({"net/port": "0"})
        self.assertEqual(s.get("net/port"), 0)
        self.assertEqual(self.stored()["net/port"], 0)

    def test_override_wins_over_file(self) -> None:
        self.write_file({"net/port": 9000})
        self.assertEqual(self.make({"net/port": 1234}).get("net/port"), 1234)

    def test_bad_override_refused(self) -> None:
        err = self.assertRaises(BadRequest, self.make, {"net/port": -5})
        self.assertIn("net/port", str(err))

    def test_override_of_option_registered_later(self) -> None:
        s = self.make({LATE.key: "12"})
        s.register(LATE)
        self.assertEqual(s.get(LATE.key), 12)

    def test_bad_override_of_option_registered_later_is_dropped(self) -> None:
        s = self.make({LATE.key: "zero"})
        s.register(LATE)
        self.assertEqual(s.get(LATE.key), LATE.default)


class ViewTests(SettingsTestCase):
    def test_describe(self) -> None:
        s = self.make()
        self.assertEqual(s.describe("net/port"), {"key": "net/port", "value": 8000, "type": "integer"})
        self.assertEqual(s.describe("space/donated"), {"key": "space/donated", "value": "8 GB", "type": "disk space"})

    def test_describe_with_info(self) -> None:
        s = self.make()
        s.set("net/port", 9000)
        self.assertEqual(s.describe("net/port", include_info=True), {
            "key": "net/port", "value": 9000, "type": "integer", "default": 8000, "description": "A port.",
            "restart_needed": True, "minimum": 0, "maximum": 65535,
        })
        self.assertEqual(s.describe("mode/level", include_info=True)["choices"], [1, 2, 3])
        info = s.describe("space/donated", include_info=True)
        self.assertEqual((info["value"], info["default"]), ("8 GB", "8 GB"))
        self.assertNotIn("choices", info)
        self.assertNotIn("minimum", info)

    def test_as_list(self) -> None:
        s = self.make()
        items = s.as_list()
        self.assertEqual([item["key"] for item in items], [o.key for o in OPTIONS])
        self.assertEqual(items[0], s.describe("net/port"))
        self.assertEqual([item["key"] for item in s.as_list(sort=True)], sorted(o.key for o in OPTIONS))
        self.assertIn("description", s.as_list(include_info=True)[0])

    def test_as_tree(self) -> None:
        s = self.make()
        tree = s.as_tree()
        self.assertEqual(sorted(tree), ["flag", "list", "mode", "net", "space"])
        self.assertEqual(sorted(tree["net"]), ["host", "port"])
        self.assertEqual(tree["net"]["port"], s.describe("net/port"))
        self.assertEqual(tree["flag"], s.describe("flag"))
        self.assertIn("default", s.as_tree(include_info=True)["space"]["donated"])
