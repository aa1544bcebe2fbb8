"""Turns a method name or an HTTP path plus raw arguments into an API call and an envelope.

REST, WebSocket and the CLI all go through :class:`Dispatcher`, so argument
checking, the 501 for unbuilt methods, timing and error mapping happen in one
place.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any, Union

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from bitnode.errors import (
    BadRequest,
    BitnodeError,
    MethodNotAllowed,
    NotFound,
    NotImplementedYet,
    error_response,
)
from bitnode.interface.routes import LEGACY, ROUTES, Alias, Param, Route

Target = Union[Route, Alias]


@dataclass(frozen=True)
class Answer:
    """The outcome of one call: HTTP code, envelope and extra headers."""

    code: int
    envelope: dict
    headers: dict


def _path_regex(path: str) -> re.Pattern:
    parts = []
    for part in path.split("/"):
        if part.startswith("{") and part.endswith("}"):
            parts.append(f"(?P<{part[1:-1]}>[^/]+)")
        else:
            parts.append(re.escape(part))
    return re.compile("^" + "/".join(parts) + "$")


def bind_arguments(name: str, params: tuple[Param, ...], raw: dict) -> dict:
    """Check ``raw`` against ``params``: unknown names, missing required ones, types.

    Returns the keyword arguments with defaults filled in. Every BadRequest
    names the parameter concerned.
    """
    by_name: dict[str, Param] = {}
    for param in params:
        by_name[param.name] = param
        for alias in param.aliases:
            by_name[alias] = param
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        param = by_name.get(key)
        if param is None:
            raise BadRequest(f"{name}: unknown parameter '{key}'")
        if param.name in kwargs:
            raise BadRequest(f"{name}: parameter '{param.name}' given twice")
        kwargs[param.name] = param.coerce(value)
    for param in params:
        if param.name not in kwargs:
            if param.required:
                raise BadRequest(f"{name}: missing parameter '{param.name}'")
            kwargs[param.name] = param.default_value()
    return kwargs


class Dispatcher:
    """Resolves and executes API calls against an API object."""

    log = Logger()

    def __init__(self, api: Any, log_calls=lambda: False):
        self._api = api
        self._log_calls = log_calls
        self._routes = {route.name: route for route in ROUTES}
        self._legacy = {alias.name: alias for alias in LEGACY if alias.name not in self._routes}
        self._paths: list[tuple[re.Pattern, Target]] = [(_path_regex(r.path), r) for r in ROUTES]
        self._paths += [(_path_regex(a.path), a) for a in self._legacy.values()]

    # --- resolving -----------------------------------------------------------

    def by_name(self, name: Any) -> Target:
        """The route or legacy alias called ``name``; NotFound otherwise."""
        if isinstance(name, str):
            target = self._routes.get(name) or self._legacy.get(name)
            if target is not None:
                return target
        raise NotFound(f"unknown API method {name!r}")

    def by_path(self, path: str, verb: str) -> tuple[Target, dict]:
        """The target of an HTTP path and the arguments taken from the path itself.

        NotFound for an unknown path, MethodNotAllowed (with the allowed verbs)
        for a known path with the wrong verb.
        """
        path = path.strip("/")
        allowed: tuple[str, ...] = ()
        for regex, target in self._paths:
            match = regex.match(path)
            if match is None:
                continue
            if verb in target.verbs:
                return target, match.groupdict()
            allowed += target.verbs
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

    def _call(self, target: Target, raw: dict):
        if not isinstance(raw, dict):
            raise BadRequest(f"{target.name}: arguments must be a JSON object")
        if isinstance(target, Alias):
            kwargs = bind_arguments(target.name, target.params, raw)
            if target.target in self._routes:
                route = self._routes[target.target]
                return self._invoke(route.name, route.handler,
                                    bind_arguments(route.name, route.params, target.to_target_kwargs(kwargs)))
            return self._invoke(target.name, target.target, kwargs)
        return self._invoke(target.name, target.handler, bind_arguments(target.name, target.params, raw))

    def _invoke(self, name: str, handler_name: str, kwargs: dict):
        handler = getattr(self._api, handler_name, None)
        if not callable(handler):
            raise NotImplementedYet(f"{name} is not implemented yet")
        return handler(**kwargs)

    def execute(self, target: Target, raw: dict) -> defer.Deferred:
        """Call and always fire with an :class:`Answer` (never errback)."""
        started = time.perf_counter()

        def ok(result):
            envelope = {"status": "OK", "result": result, "execution": f"{time.perf_counter() - started:.4f}"}
            if self._log_calls():
                self.log.info("api {name} OK in {execution}s", name=target.name, execution=envelope["execution"])
            return Answer(200, envelope, {})

        def failed(failure: Failure):
            if failure.check(defer.CancelledError):
                return Answer(499, {"status": "ERROR", "errors": ["request cancelled"]}, {})
            response = error_response(failure.value, time.perf_counter() - started)
            # Typed errors are answers (501, 503, 507...); only the unexpected deserve a traceback.
            if response.http_code == 500 or not failure.check(BitnodeError):
                self.log.failure("api {name} failed unexpectedly", failure, name=target.name)
            elif self._log_calls():
                self.log.info("api {name} -> {code}: {errors}", name=target.name, code=response.http_code,
                              errors=response.envelope["errors"])
            return Answer(response.http_code, response.envelope, response.headers)

        return self.call(target, raw).addCallbacks(ok, failed)

    def execute_by_name(self, name: Any, raw: dict) -> defer.Deferred:
        """Resolve a method name, then :meth:`execute`; unknown names become a 404 Answer."""
        try:
            target = self.by_name(name)
        except NotFound as err:
            response = error_response(err)
            return defer.succeed(Answer(response.http_code, response.envelope, response.headers))
        return self.execute(target, raw)
