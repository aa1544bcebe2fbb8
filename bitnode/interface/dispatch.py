"""Turns a method name or an HTTP path plus raw arguments into an API call and an envelope.

REST, WebSocket and the CLI all go through :class:`Dispatcher`, so argument
checking, the 501 for unbuilt methods, timing and error mapping happen in one
place.

Everything that can be worked out from the route table alone (path patterns,
accepted verbs, parameter tables, where a legacy name leads) is worked out
once, when the dispatcher is built; a call only looks things up. A handler
that answers with a plain value is answered without a Deferred
(:meth:`Dispatcher.answer`), which is what keeps the API's overhead small.
"""

from __future__ import annotations

import re
import time
from types import CoroutineType
from typing import Any, Callable, NamedTuple, Union
from urllib.parse import unquote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from bitnode import boundedjson
from bitnode.errors import (
    BadRequest,
    BitnodeError,
    MethodNotAllowed,
    NotFound,
    NotImplementedYet,
    error_response,
)
from bitnode.interface.limits import DEFAULT_MAX_DEPTH, ApiLimits
from bitnode.interface.routes import LEGACY, ROUTES, Alias, Param, Route

Target = Union[Route, Alias]

# Result types answered without looking further (no Deferred, coroutine or Failure).
_PLAIN = frozenset({dict, list, str, int, float, bool, type(None)})

_now = time.perf_counter


class Answer(NamedTuple):
    """The outcome of one call: HTTP code, envelope and extra headers."""

    code: int
    envelope: dict
    headers: dict


class ParamTable:
    """The parameters of one method, indexed once (names and aliases) for :meth:`bind`."""

    __slots__ = ("name", "params", "_by_name", "_limits")

    def __init__(self, name: str, params: tuple[Param, ...], limits: ApiLimits | None = None):
        self.name = name
        self.params = params
        self._limits = limits if limits is not None else ApiLimits()
        self._by_name: dict[str, Param] = {}
        for param in params:
            self._by_name[param.name] = param
            for alias in param.aliases:
                self._by_name[alias] = param

    def bind(self, raw: dict) -> dict:
        """Check ``raw``: unknown names, missing required ones, types; fill in defaults.

        Every BadRequest names the parameter concerned.
        """
        kwargs: dict[str, Any] = {}
        if not raw and not self.params:
            return kwargs
        by_name = self._by_name
        depth = self._limits.max_json_depth
        for key, value in raw.items():
            param = by_name.get(key)
            if param is None:
                raise BadRequest(f"{self.name}: unknown parameter '{key}'")
            if param.name in kwargs:
                raise BadRequest(f"{self.name}: parameter '{param.name}' given twice")
            try:
                kwargs[param.name] = param.coerce(value, depth)
            except boundedjson.BadJson as err:  # JSON text in a value: counted with the bodies'
                self._limits.count_json_error(err)
                raise
        if len(kwargs) < len(self.params):
            for param in self.params:
                if param.name not in kwargs:
                    if param.required:
                        raise BadRequest(f"{self.name}: missing parameter '{param.name}'")
                    kwargs[param.name] = param.default_value()
        return kwargs


def parse_json_object(raw: bytes, what: str, max_depth: int = DEFAULT_MAX_DEPTH) -> dict:
    """``raw`` UTF-8 JSON text of an object, as a dict.

    Otherwise a BadRequest naming ``what`` ("body", "message"): a
    :class:`~bitnode.boundedjson.BadJson` (a :class:`~bitnode.boundedjson.TooDeep`
    when it nests deeper than ``max_depth``), or a plain BadRequest when it is
    JSON but not an object.
    """
    value = boundedjson.loads(raw, f"the {what}", max_depth)
    if not isinstance(value, dict):
        raise BadRequest(f"the {what} must be a JSON object")
    return value


def bind_arguments(name: str, params: tuple[Param, ...], raw: dict, limits: ApiLimits | None = None) -> dict:
    """Check ``raw`` against ``params`` (see :meth:`ParamTable.bind`); the keyword arguments with defaults."""
    return ParamTable(name, params, limits).bind(raw)


def _path_regex(path: str) -> re.Pattern:
    parts = []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            parts.append(f"(?P<{part[1:-1]}>[^/]+)")
        else:
            parts.append(re.escape(part))
    return re.compile("^" + "/".join(parts) + "$")


def _decode_path_args(args: dict[str, str]) -> dict[str, str]:
    """Percent-decode values taken from a path (``share%24alice%40host`` -> ``share$alice@host``).

    A ``+`` stays a ``+`` (that rule is the query string's). An escape that is
    not UTF-8 is a BadRequest naming the parameter, not a silent U+FFFD.
    """
    decoded = {}
    for name, value in args.items():
        try:
            decoded[name] = unquote(value, errors="strict")
        except UnicodeDecodeError:
            raise BadRequest(f"parameter '{name}': the path has a %-escape that is not UTF-8") from None
    return decoded


class _Entry:
    """A target as the path index holds it: its pattern and verbs, computed once."""

    __slots__ = ("target", "verbs", "regex")

    def __init__(self, target: Target):
        self.target = target
        self.verbs = target.verbs
        self.regex = _path_regex(target.path) if "{" in target.path else None


class Dispatcher:
    """Resolves and executes API calls against an API object."""

    log = Logger()

    def __init__(self, api: Any, log_calls: Callable[[], bool] = lambda: False, limits: ApiLimits | None = None):
        self._api = api
        self._log_calls = log_calls
        #: The limits on what clients send, shared with the HTTP and WebSocket readers (and their counters).
        self.limits = limits if limits is not None else ApiLimits()
        self._routes = {route.name: route for route in ROUTES}
        self._legacy = {alias.name: alias for alias in LEGACY if alias.name not in self._routes}
        entries = [_Entry(target) for target in (*ROUTES, *self._legacy.values())]
        # A fixed path maps to every entry matching it, in table order (a pattern may match it too);
        # other paths are tried against the patterns with the same number of segments only.
        self._fixed: dict[str, list[tuple[_Entry, dict]]] = {}
        self._patterns: dict[int, list[_Entry]] = {}
        for entry in entries:
            if entry.regex is None:
                self._fixed[entry.target.path] = []
            else:
                self._patterns.setdefault(entry.target.path.count("/"), []).append(entry)
        for path, found in self._fixed.items():
            for entry in entries:
                if entry.regex is None:
                    if entry.target.path == path:
                        found.append((entry, {}))
                else:
                    match = entry.regex.match(path)
                    if match is not None:
                        found.append((entry, match.groupdict()))
        # Keyed by identity: the table's own objects are what by_name and by_path hand out.
        self._calls: dict[int, tuple[Target, Callable[[dict], Any]]] = {}
        for target in (*ROUTES, *self._legacy.values()):
            self._calls[id(target)] = (target, self._plan(target))

    # --- resolving -----------------------------------------------------------

    def by_name(self, name: Any) -> Target:
        """The route or legacy alias called ``name``; NotFound otherwise."""
        if isinstance(name, str):
            target = self._routes.get(name) or self._legacy.get(name)
            if target is not None:
                return target
        raise NotFound(f"unknown API method {name!r}")

    def by_path(self, path: str, verb: str) -> tuple[Target, dict]:
        """The target of an HTTP path and the (URL-decoded) arguments taken from the path itself.

        ``path`` is the raw request path, still %-encoded: a placeholder's
        value may contain an encoded ``/``. NotFound for an unknown path,
        MethodNotAllowed (with the allowed verbs) for a known path with the
        wrong verb.
        """
        path = path.strip("/")
        fixed = self._fixed.get(path)
        if fixed is not None:
            candidates = fixed
        else:
            candidates = []
            for entry in self._patterns.get(path.count("/"), ()):
                match = entry.regex.match(path)
                if match is not None:
                    candidates.append((entry, match.groupdict()))
        allowed: tuple[str, ...] = ()
        for entry, args in candidates:
            if verb in entry.verbs:
                return entry.target, _decode_path_args(args) if args else {}
            allowed += entry.verbs
        if allowed:
            raise MethodNotAllowed(f"{verb} is not allowed on /{path}; use {', '.join(allowed)}", allowed)
        raise NotFound(f"no API method at /{path}")

    def is_implemented(self, target: Target) -> bool:
        """True when the API object has a handler for ``target``."""
        handler_name = target.target if isinstance(target, Alias) else target.handler
        if isinstance(target, Alias) and target.target in self._routes:
            return self.is_implemented(self._routes[target.target])
        return callable(getattr(self._api, handler_name, None))

    # --- executing -------------------------------------------------------------

    def call(self, target: Target, raw: dict) -> defer.Deferred:
        """Validate ``raw`` and call the handler; a Deferred of the handler's result."""
        return defer.maybeDeferred(self._call, target, raw)

    def answer(self, target: Target, raw: dict) -> Answer | defer.Deferred:
        """Call and answer: an :class:`Answer` at once when the handler answered at once,
        else a Deferred that always fires with one (never errbacks; cancelling it answers 499).
        """
        started = _now()
        try:
            known = self._calls.get(id(target))
            if known is not None and known[0] is target and type(raw) is dict:
                result = known[1](raw)
            else:
                result = self._call(target, raw)
        except BaseException:
            return self._failed(Failure(), target, started)
        if type(result) in _PLAIN:  # the usual answer, checked first: Deferred's isinstance is slow
            execution = f"{_now() - started:.4f}"
            if self._log_calls():
                self.log.info("api {name} OK in {execution}s", name=target.name, execution=execution)
            return Answer(200, {"status": "OK", "result": result, "execution": execution}, {})
        if isinstance(result, defer.Deferred):
            return result.addCallbacks(self._ok, self._failed, (target, started), None, (target, started))
        if type(result) is CoroutineType:
            return defer.Deferred.fromCoroutine(result).addCallbacks(
                self._ok, self._failed, (target, started), None, (target, started))
        if isinstance(result, Failure):
            return self._failed(result, target, started)
        return self._ok(result, target, started)

    def execute(self, target: Target, raw: dict) -> defer.Deferred:
        """Like :meth:`answer`, always as a Deferred (which never errbacks)."""
        answer = self.answer(target, raw)
        return answer if isinstance(answer, defer.Deferred) else defer.succeed(answer)

    def answer_by_name(self, name: Any, raw: dict) -> Answer | defer.Deferred:
        """Resolve a method name, then :meth:`answer`; unknown names are a 404 Answer."""
        try:
            target = self.by_name(name)
        except NotFound as err:
            return error_answer(err)
        return self.answer(target, raw)

    def execute_by_name(self, name: Any, raw: dict) -> defer.Deferred:
        """Resolve a method name, then :meth:`execute`; unknown names become a 404 Answer."""
        answer = self.answer_by_name(name, raw)
        return answer if isinstance(answer, defer.Deferred) else defer.succeed(answer)

    # --- internals ---------------------------------------------------------------

    def _plan(self, target: Target) -> Callable[[dict], Any]:
        """The function that binds raw arguments for ``target`` and calls its handler.

        Arguments are checked before looking for the handler, so a bad call
        to an unbuilt method is a 400, not a 501.
        """
        api = self._api
        table = ParamTable(target.name, target.params, self.limits)
        direct = isinstance(target, Route) or target.target not in self._routes
        if direct:  # a route, or a legacy-only method of the API
            name, handler_name = target.name, target.handler if isinstance(target, Route) else target.target
            bind = table.bind
        else:
            route = self._routes[target.target]
            name, handler_name = route.name, route.handler
            alias_bind, translate = table.bind, target.to_target_kwargs
            route_bind = ParamTable(route.name, route.params, self.limits).bind

            def bind(raw: dict) -> dict:
                return route_bind(translate(alias_bind(raw)))

        def call(raw: dict):
            kwargs = bind(raw)
            handler = getattr(api, handler_name, None)
            if not callable(handler):
                raise NotImplementedYet(f"{name} is not implemented yet")
            return handler(**kwargs)

        def call_without_parameters(raw: dict):
            if raw:
                bind(raw)  # raises BadRequest naming the unknown parameter
            handler = getattr(api, handler_name, None)
            if not callable(handler):
                raise NotImplementedYet(f"{name} is not implemented yet")
            return handler()

        return call_without_parameters if direct and not target.params else call

    def _call(self, target: Target, raw: dict):
        if not isinstance(raw, dict):
            raise BadRequest(f"{target.name}: arguments must be a JSON object")
        known = self._calls.get(id(target))
        if known is not None and known[0] is target:
            return known[1](raw)
        return self._plan(target)(raw)  # a target from elsewhere (a test's own Route)

    def _ok(self, result, target: Target, started: float) -> Answer:
        execution = f"{_now() - started:.4f}"
        if self._log_calls():
            self.log.info("api {name} OK in {execution}s", name=target.name, execution=execution)
        return Answer(200, {"status": "OK", "result": result, "execution": execution}, {})

    def _failed(self, failure: Failure, target: Target, started: float) -> Answer:
        if failure.check(defer.CancelledError):
            return Answer(499, {"status": "ERROR", "errors": ["request cancelled"]}, {})
        response = error_response(failure.value, _now() - started)
        # Typed errors are answers (501, 503, 507...); only the unexpected deserve a traceback.
        if response.http_code == 500 or not failure.check(BitnodeError):
            self.log.failure("api {name} failed unexpectedly", failure, name=target.name)
        elif self._log_calls():
            self.log.info("api {name} -> {code}: {errors}", name=target.name, code=response.http_code,
                          errors=response.envelope["errors"])
        return Answer(response.http_code, response.envelope, response.headers)


def error_answer(err: BaseException) -> Answer:
    """The :class:`Answer` for an error raised before any method was called (bad path, refused caller)."""
    response = error_response(err)
    return Answer(response.http_code, response.envelope, response.headers)
