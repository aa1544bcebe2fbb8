"""The route table checked against the spec, plus the contract of which methods are built.

The spec's method tables (method, signature, verb, path; the legacy methods' signatures) are
vendored under ``tests/interface/fixtures/`` so these tests run on any checkout. When the spec
itself is beside the checkout (``../shared/spec``), the fixtures are also checked against it.
"""

from __future__ import annotations

import ast
import csv
import os
import re

from twisted.trial import unittest

import bitnode
from bitnode.interface.api import API
from bitnode.interface.dispatch import Dispatcher
from bitnode.interface.routes import BOOL, FLOAT, INT, JSON, LEGACY, LIST, REQUIRED, ROUTES, STR

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(bitnode.__file__)))
SPEC_DIR = os.path.join(REPO_ROOT, "..", "shared", "spec")
SPEC_METHODS_TSV = os.path.join(SPEC_DIR, "api-v1-methods.tsv")
SPEC_LEGACY_TXT = os.path.join(SPEC_DIR, "bitdust-api-legacy.txt")
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
METHODS_TSV = os.path.join(FIXTURES, "api-v1-methods.tsv")
LEGACY_TXT = os.path.join(FIXTURES, "api-legacy-methods.txt")

#: Legacy methods bitnode deliberately does not offer: both drive BitDust's GUI, which bitnode does not have.
LEGACY_NOT_SUPPORTED = {"show", "filemanager"}

#: The foundation methods: these must stay implemented. Others join as their subsystems land.
IMPLEMENTED = {
    "process_stop", "process_restart", "process_health", "process_info", "process_debug",
    "config_get", "config_set", "configs_list", "configs_tree",
    "services_list", "service_info", "service_start", "service_stop", "service_restart",
    "event_send", "event_listen", "automats_list",
}

ROUTES_BY_NAME = {route.name: route for route in ROUTES}

_DUMMY = {STR.name: "x", INT.name: 1, FLOAT.name: 1.0, BOOL.name: False, LIST.name: [], JSON.name: {}}


def parse_signature(signature: str) -> list[tuple[str, object]]:
    """``"key, include_info=False"`` → ``[("key", REQUIRED), ("include_info", False)]``."""
    args = ast.parse(f"def f({signature}): pass").body[0].args
    names = [arg.arg for arg in args.args]
    defaults = [ast.literal_eval(node) for node in args.defaults]
    padded = [REQUIRED] * (len(names) - len(defaults)) + defaults
    return list(zip(names, padded, strict=True))


def read_spec(path: str = METHODS_TSV) -> dict[str, dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return {row["method"]: {"verb": row["http_verb"], "path": row["http_path"],
                            "params": parse_signature(row["signature"])} for row in rows}


def read_legacy(path: str = LEGACY_TXT) -> dict[str, list[tuple[str, object]]]:
    found = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            match = re.match(r"^([a-z_]+)\((.*)\)\s*$", line)
            if match:
                found[match.group(1)] = parse_signature(match.group(2))
    return found


def same_default(spec_default, route_default) -> bool:
    """Spec defaults are Python literals; the table keeps lists as tuples and may widen ints to floats."""
    if isinstance(spec_default, list):
        return list(route_default) == spec_default if isinstance(route_default, (list, tuple)) else False
    if spec_default is None or isinstance(spec_default, bool) or isinstance(route_default, bool):
        return spec_default is route_default
    return spec_default == route_default


class FixtureTests(unittest.TestCase):
    """The vendored tables say what the spec says (checked where the spec is beside the checkout)."""

    def test_fixtures_hold_the_whole_tables(self) -> None:
        self.assertEqual(len(read_spec()), 98)
        self.assertGreaterEqual(len(read_legacy()), 50)

    def test_vendored_methods_match_the_spec(self) -> None:
        self.assertEqual(read_spec(), read_spec(_spec_file(SPEC_METHODS_TSV)))

    def test_vendored_legacy_methods_match_the_spec(self) -> None:
        self.assertEqual(read_legacy(), read_legacy(_spec_file(SPEC_LEGACY_TXT)))


def _spec_file(path: str) -> str:
    """``path`` if the spec is beside the checkout; only the drift checks skip without it."""
    if not os.path.exists(path):
        raise unittest.SkipTest(f"{os.path.normpath(path)} not beside the checkout: nothing to compare with")
    return path


class RouteTableTests(unittest.TestCase):
    def test_every_spec_method_present(self) -> None:
        spec = read_spec()
        self.assertEqual(len(spec), 98)
        missing = sorted(set(spec) - set(ROUTES_BY_NAME))
        self.assertEqual(missing, [])

    def test_no_extra_routes_but_those_marked_beyond_the_spec(self) -> None:
        extras = sorted(set(ROUTES_BY_NAME) - set(read_spec()))
        self.assertEqual([name for name in extras if not ROUTES_BY_NAME[name].beyond_spec], [])
        self.assertEqual([name for name in read_spec() if ROUTES_BY_NAME[name].beyond_spec], [])
        paths = [(route.verb, route.path) for route in ROUTES]
        self.assertEqual(len(paths), len(set(paths)))

    def test_verbs_and_paths(self) -> None:
        spec = read_spec()
        wrong = [(name, route.verb, route.path, spec[name]["verb"], spec[name]["path"])
                 for name, route in ROUTES_BY_NAME.items()
                 if name in spec and (route.verb, route.path) != (spec[name]["verb"], spec[name]["path"])]
        self.assertEqual(wrong, [])

    def test_parameters_and_defaults(self) -> None:
        problems = []
        extras = []
        for name, expected in read_spec().items():
            route = ROUTES_BY_NAME[name]
            params = {param.name: param for param in route.params}
            for pname, default in expected["params"]:
                param = params.get(pname)
                if param is None:
                    problems.append(f"{name}: missing parameter {pname}")
                elif default is REQUIRED:
                    if not param.required:
                        problems.append(f"{name}: {pname} must be required")
                elif param.required or not same_default(default, param.default):
                    problems.append(f"{name}: {pname} default {param.default!r}, spec says {default!r}")
            spec_order = [pname for pname, _ in expected["params"]]
            in_table = [p.name for p in route.params if p.name in spec_order]
            if in_table != spec_order:
                problems.append(f"{name}: parameter order {in_table} differs from spec {spec_order}")
            for param in route.params:
                if param.name not in spec_order:
                    extras.append(f"{name}.{param.name}")
                    if param.required and param.name not in route.path_params:
                        problems.append(f"{name}: extra parameter {param.name} must be optional")
        self.assertEqual(problems, [])
        print("parameters beyond the spec:", ", ".join(extras))

    def test_path_placeholders_are_parameters(self) -> None:
        for route in ROUTES:
            names = {param.name for param in route.params}
            for placeholder in route.path_params:
                self.assertIn(placeholder, names, route.name)
                self.assertTrue(next(p for p in route.params if p.name == placeholder).required, route.name)

    def test_defaults_are_valid_values(self) -> None:
        for route in ROUTES:
            for param in route.params:
                if not param.required and param.default is not None:
                    param.coerce(param.default_value())

    def test_names_unique(self) -> None:
        route_names = [route.name for route in ROUTES]
        self.assertEqual(len(route_names), len(set(route_names)))
        alias_names = [alias.name for alias in LEGACY]
        self.assertEqual(len(alias_names), len(set(alias_names)))
        # A legacy name equal to a route name would be silently shadowed by the route.
        self.assertEqual(set(route_names) & set(alias_names), set())
        for route in ROUTES:
            pnames = [name for param in route.params for name in (param.name, *param.aliases)]
            self.assertEqual(len(pnames), len(set(pnames)), route.name)

    def test_paths_unique_per_verb(self) -> None:
        seen: dict[tuple[str, str], str] = {}
        for target in (*ROUTES, *LEGACY):
            for verb in target.verbs:
                key = (verb, re.sub(r"\{[^}]+\}", "{}", target.path))
                self.assertNotIn(key, seen, f"{target.name} and {seen.get(key)}")
                seen[key] = target.name

    def test_mutating_routes_accept_post(self) -> None:
        for route in ROUTES:
            if route.mutating and route.verb == "GET":
                self.assertEqual(route.verbs, ("GET", "POST"), route.name)
            else:
                self.assertEqual(route.verbs, (route.verb,), route.name)


class LegacyTableTests(unittest.TestCase):
    def test_every_legacy_method_routed(self) -> None:
        aliases = {alias.name for alias in LEGACY}
        missing = [name for name in read_legacy()
                   if name not in ROUTES_BY_NAME and name not in aliases and name not in LEGACY_NOT_SUPPORTED]
        self.assertEqual(missing, [])

    def test_no_alias_outside_the_legacy_spec(self) -> None:
        legacy = read_legacy()
        self.assertEqual([alias.name for alias in LEGACY if alias.name not in legacy], [])

    def test_alias_targets_exist(self) -> None:
        for alias in LEGACY:
            # Either a v1 route, or a legacy-only method of the alias's own name.
            self.assertTrue(alias.target in ROUTES_BY_NAME or alias.target == alias.name,
                            f"{alias.name} -> {alias.target}")

    def test_alias_parameters_match_legacy_signature(self) -> None:
        legacy = read_legacy()
        for alias in LEGACY:
            expected = legacy[alias.name]
            got = [(param.name, param.default) for param in alias.params]
            self.assertEqual([n for n, _ in got], [n for n, _ in expected], alias.name)
            for (pname, spec_default), (_, default) in zip(expected, got, strict=True):
                if spec_default is REQUIRED:
                    self.assertIs(default, REQUIRED, f"{alias.name}.{pname}")
                else:
                    self.assertTrue(same_default(spec_default, default) or spec_default == default,
                                    f"{alias.name}.{pname}: {default!r} vs {spec_default!r}")

    def test_alias_arguments_fit_target(self) -> None:
        for alias in LEGACY:
            if alias.target not in ROUTES_BY_NAME:
                continue
            route = ROUTES_BY_NAME[alias.target]
            accepted = {name for param in route.params for name in (param.name, *param.aliases)}
            given = set(alias.to_target_kwargs({param.name: None for param in alias.params}))
            self.assertLessEqual(given, accepted, alias.name)
            for name, _ in alias.fixed:
                self.assertIn(name, accepted, alias.name)
            for pname in alias.ignored:
                self.assertIn(pname, [param.name for param in alias.params], alias.name)
            # Everything the target requires must come from the legacy call.
            required = {param.name for param in route.params if param.required}
            self.assertLessEqual(required, given, alias.name)

    def test_legacy_names_that_are_routes_take_legacy_parameters(self) -> None:
        for name, params in read_legacy().items():
            route = ROUTES_BY_NAME.get(name)
            if route is None:
                continue
            accepted = {pname for param in route.params for pname in (param.name, *param.aliases)}
            for pname, _ in params:
                self.assertIn(pname, accepted, f"legacy {name}({pname}) has nowhere to go")


class ImplementedContractTests(unittest.TestCase):
    """No method answers 501: every route and legacy name has a handler."""

    def setUp(self) -> None:
        # The class is enough: whether a handler exists does not need a node.
        self.dispatcher = Dispatcher(API)

    def test_every_route_names_the_module_that_implements_it(self) -> None:
        wrong = [(route.name, route.impl, getattr(API, route.handler).__module__) for route in ROUTES
                 if getattr(API, route.handler).__module__ != route.impl]
        self.assertEqual(wrong, [])

    def test_foundation_methods_implemented(self) -> None:
        missing = sorted(name for name in IMPLEMENTED if not self.dispatcher.is_implemented(ROUTES_BY_NAME[name]))
        self.assertEqual(missing, [])

    def test_every_handler_matches_a_route_signature(self) -> None:
        import inspect

        for route in ROUTES:
            handler = getattr(API, route.handler, None)
            if not callable(handler):
                continue
            signature = inspect.signature(handler)
            accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
            names = set(signature.parameters) - {"self"}
            for param in route.params:
                self.assertTrue(accepts_any or param.name in names,
                                f"API.{route.handler} lacks parameter {param.name}")

    def test_no_method_answers_501(self) -> None:
        """Every method of the spec and every legacy name has a handler (the 501 path is in test_dispatch)."""
        not_built = [route.name for route in ROUTES if not self.dispatcher.is_implemented(route)]
        self.assertEqual(not_built, [])
        legacy_not_built = [alias.name for alias in LEGACY if not self.dispatcher.is_implemented(alias)]
        self.assertEqual(legacy_not_built, [])
