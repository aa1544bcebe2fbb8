"""Tests for bitnode.main.options: kinds, parsing, bounds and rendering."""

from __future__ import annotations

from twisted.trial import unittest

from bitnode.errors import BadRequest
from bitnode.main import options
from bitnode.main.options import (
    BOOLEAN,
    DISK_SPACE,
    FLOAT,
    INTEGER,
    STRING,
    STRING_LIST,
    Option,
    format_disk_space,
    parse_bool,
    parse_disk_space,
    parse_float,
    parse_int,
    parse_string_list,
)

GB = 1024 ** 3
MB = 1024 ** 2


class ParseBoolTests(unittest.TestCase):
    def test_true_values(self) -> None:
        for value in (True, 1, "1", "true", "TRUE", " yes ", "on", "y", "t"):
            self.assertIs(parse_bool(value), True, value)

    def test_false_values(self) -> None:
        for value in (False, 0, "0", "false", "False", "no", "off", "n", "f", ""):
            self.assertIs(parse_bool(value), False, value)

    def test_bad_values(self) -> None:
        for value in (2, -1, "maybe", None, [], 1.0, {"a": 1}):
            err = self.assertRaises(BadRequest, parse_bool, value)
            self.assertIn("expected a boolean", str(err))


class ParseIntTests(unittest.TestCase):
    def test_good_values(self) -> None:
        self.assertEqual(parse_int(5), 5)
        self.assertEqual(parse_int(-3), -3)
        self.assertEqual(parse_int(" 42 "), 42)
        self.assertEqual(parse_int("-7"), -7)
        self.assertEqual(parse_int(3.0), 3)
        self.assertIsInstance(parse_int(3.0), int)

    def test_bad_values(self) -> None:
        for value in (True, False, 2.5, "2.5", "abc", "", None, [1], float("inf"), float("nan")):
            err = self.assertRaises(BadRequest, parse_int, value)
            self.assertIn("expected an integer", str(err))


class ParseFloatTests(unittest.TestCase):
    def test_good_values(self) -> None:
        self.assertEqual(parse_float(1), 1.0)
        self.assertIsInstance(parse_float(1), float)
        self.assertEqual(parse_float(2.5), 2.5)
        self.assertEqual(parse_float(" -0.25 "), -0.25)
        self.assertEqual(parse_float("1e3"), 1000.0)

    def test_bad_values(self) -> None:
        for value in (True, "x", "", None, [1.0], {"x": 1}):
            err = self.assertRaises(BadRequest, parse_float, value)
            self.assertIn("expected a finite number", str(err))

    def test_non_finite_refused(self) -> None:
        # NaN compares false to every bound, so it must never reach a minimum/maximum check.
        for value in ("nan", "NaN", "inf", "-inf", float("nan"), float("inf"), 10 ** 400):
            self.assertRaises(BadRequest, parse_float, value)


class DiskSpaceTests(unittest.TestCase):
    def test_parse_units(self) -> None:
        self.assertEqual(parse_disk_space("2 GB"), 2 * GB)
        self.assertEqual(parse_disk_space("512MB"), 512 * MB)
        self.assertEqual(parse_disk_space("512 mb"), 512 * MB)
        self.assertEqual(parse_disk_space("1.5 GiB"), int(1.5 * GB))
        self.assertEqual(parse_disk_space("3 KB"), 3 * 1024)
        self.assertEqual(parse_disk_space("1 TB"), 1024 ** 4)
        self.assertEqual(parse_disk_space("17 bytes"), 17)
        self.assertEqual(parse_disk_space("17 B"), 17)
        self.assertEqual(parse_disk_space("  100  "), 100)

    def test_parse_byte_counts(self) -> None:
        self.assertEqual(parse_disk_space(0), 0)
        self.assertEqual(parse_disk_space(12345), 12345)
        self.assertEqual(parse_disk_space(2048.0), 2048)

    def test_parse_exact_for_big_integers(self) -> None:
        # No float rounding for whole numbers.
        self.assertEqual(parse_disk_space("123456789123456789 B"), 123456789123456789)

    def test_bad_values(self) -> None:
        for value in ("2 XB", "GB", "-5 GB", "two GB", "", None, True, [1], 1.5, "1,5 GB", "5 G B"):
            err = self.assertRaises(BadRequest, parse_disk_space, value)
            self.assertIn("disk space", str(err))

    def test_negative_bytes(self) -> None:
        err = self.assertRaises(BadRequest, parse_disk_space, -1)
        self.assertIn("negative", str(err))

    def test_absurdly_long_fraction_is_bad_request(self) -> None:
        self.assertRaises(BadRequest, parse_disk_space, "1" * 400 + ".5 GB")

    def test_format(self) -> None:
        self.assertEqual(format_disk_space(2 * GB), "2 GB")
        self.assertEqual(format_disk_space(512 * MB), "512 MB")
        self.assertEqual(format_disk_space(1536), "1.5 KB")
        self.assertEqual(format_disk_space(1024 ** 4), "1 TB")
        self.assertEqual(format_disk_space(17), "17 bytes")
        self.assertEqual(format_disk_space(0), "0 bytes")
        self.assertEqual(format_disk_space(int(1.25 * GB)), "1.25 GB")

    def test_round_trip(self) -> None:
        for value in (0, 17, 1024, 1536, 512 * MB, 2 * GB, 3 * 1024 ** 4, int(1.25 * GB)):
            self.assertEqual(parse_disk_space(format_disk_space(value)), value)


class StringListTests(unittest.TestCase):
    def test_comma_text(self) -> None:
        self.assertEqual(parse_string_list("a, b,,c "), ["a", "b", "c"])
        self.assertEqual(parse_string_list(""), [])

    def test_lists(self) -> None:
        self.assertEqual(parse_string_list(["x", "y"]), ["x", "y"])
        self.assertEqual(parse_string_list(("x",)), ["x"])
        self.assertEqual(parse_string_list([]), [])

    def test_bad_values(self) -> None:
        for value in ([1, "a"], 5, None, {"a": "b"}):
            err = self.assertRaises(BadRequest, parse_string_list, value)
            self.assertIn("list of strings", str(err))


class KindTests(unittest.TestCase):
    def test_names(self) -> None:
        self.assertEqual(
            [k.name for k in (BOOLEAN, INTEGER, FLOAT, STRING, DISK_SPACE, STRING_LIST)],
            ["boolean", "integer", "float", "string", "disk space", "list of strings"],
        )

    def test_string_kind(self) -> None:
        self.assertEqual(STRING.parse("abc"), "abc")
        self.assertEqual(STRING.parse(""), "")
        for value in (1, None, ["a"], True):
            err = self.assertRaises(BadRequest, STRING.parse, value)
            self.assertIn("expected a string", str(err))

    def test_render_defaults_to_identity(self) -> None:
        for kind, value in ((BOOLEAN, True), (INTEGER, 3), (FLOAT, 0.5), (STRING, "x"), (STRING_LIST, ["a"])):
            self.assertEqual(kind.render(value), value)
        self.assertEqual(DISK_SPACE.render(2 * GB), "2 GB")


class OptionCoerceTests(unittest.TestCase):
    def test_parses_through_kind(self) -> None:
        self.assertEqual(Option("a/int", INTEGER, 1, "d").coerce("7"), 7)
        self.assertIs(Option("a/bool", BOOLEAN, False, "d").coerce("yes"), True)
        self.assertEqual(Option("a/space", DISK_SPACE, 0, "d").coerce("1 MB"), MB)
        self.assertEqual(Option("a/list", STRING_LIST, [], "d").coerce("a,b"), ["a", "b"])

    def test_kind_error_names_key(self) -> None:
        err = self.assertRaises(BadRequest, Option("a/int", INTEGER, 1, "d").coerce, "seven")
        self.assertEqual(str(err), "bad value for a/int: expected an integer, got 'seven'")

    def test_minimum_and_maximum(self) -> None:
        option = Option("net/port", INTEGER, 80, "d", minimum=0, maximum=65535)
        self.assertEqual(option.coerce(0), 0)
        self.assertEqual(option.coerce(65535), 65535)
        err = self.assertRaises(BadRequest, option.coerce, -1)
        self.assertEqual(str(err), "bad value for net/port: must be at least 0")
        err = self.assertRaises(BadRequest, option.coerce, "65536")
        self.assertEqual(str(err), "bad value for net/port: must be at most 65535")

    def test_float_bounds(self) -> None:
        option = Option("x/timeout", FLOAT, 1.0, "d", minimum=0.1)
        self.assertEqual(option.coerce("0.1"), 0.1)
        err = self.assertRaises(BadRequest, option.coerce, 0.05)
        self.assertIn("must be at least 0.1", str(err))
        self.assertRaises(BadRequest, option.coerce, "nan")

    def test_disk_space_bounds_read_as_sizes(self) -> None:
        option = Option("b/segment", DISK_SPACE, 4 * MB, "d", minimum=64 * 1024, maximum=64 * MB)
        self.assertEqual(option.coerce("64 KB"), 64 * 1024)
        err = self.assertRaises(BadRequest, option.coerce, "1 KB")
        self.assertEqual(str(err), "bad value for b/segment: must be at least 64 KB")
        err = self.assertRaises(BadRequest, option.coerce, "1 GB")
        self.assertEqual(str(err), "bad value for b/segment: must be at most 64 MB")

    def test_choices(self) -> None:
        option = Option("k/size", INTEGER, 2048, "d", choices=(1024, 2048))
        self.assertEqual(option.coerce("1024"), 1024)
        err = self.assertRaises(BadRequest, option.coerce, 512)
        self.assertEqual(str(err), "bad value for k/size: must be one of 1024, 2048")

    def test_pattern_must_match_fully(self) -> None:
        option = Option("p/nick", STRING, "", "d", pattern=r"[a-z]{0,4}")
        self.assertEqual(option.coerce("abcd"), "abcd")
        self.assertEqual(option.coerce(""), "")
        err = self.assertRaises(BadRequest, option.coerce, "abcde")
        self.assertIn("bad value for p/nick", str(err))
        self.assertIn("does not match [a-z]{0,4}", str(err))
        self.assertRaises(BadRequest, option.coerce, "ab1")

    def test_list_checks_each_item(self) -> None:
        option = Option("l/hosts", STRING_LIST, [], "d", pattern=r"[a-z]+:\d+", choices=())
        self.assertEqual(option.coerce("a:1, b:2"), ["a:1", "b:2"])
        err = self.assertRaises(BadRequest, option.coerce, ["a:1", "oops"])
        self.assertIn("'oops' does not match", str(err))
        chosen = Option("l/modes", STRING_LIST, [], "d", choices=("r", "w"))
        self.assertEqual(chosen.coerce(["r", "w"]), ["r", "w"])
        self.assertRaises(BadRequest, chosen.coerce, ["r", "x"])

    def test_render(self) -> None:
        self.assertEqual(Option("s", DISK_SPACE, 0, "d").render(8 * GB), "8 GB")
        self.assertEqual(Option("i", INTEGER, 0, "d").render(8), 8)

    def test_equality_ignores_extra(self) -> None:
        self.assertEqual(Option("a", INTEGER, 1, "d", extra={"x": 1}), Option("a", INTEGER, 1, "d"))
        self.assertNotEqual(Option("a", INTEGER, 1, "d"), Option("a", INTEGER, 2, "d"))

    def test_schema_defaults_are_valid(self) -> None:
        from bitnode.main.schema import SCHEMA

        for option in SCHEMA:
            self.assertEqual(option.coerce(option.default), option.default, option.key)

    def test_module_exports_kinds(self) -> None:
        self.assertIs(options.DISK_SPACE.render, format_disk_space)
