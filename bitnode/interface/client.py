"""A blocking client for the HTTP API of a node, for the CLI and other tools without a reactor.

It finds the node through files in its basedir (``metadata/endpoints.json``
written once the node listens, ``metadata/apisecret``), builds the request the
route table describes (verb, path, query string or JSON body) and returns the
HTTP code and the JSON envelope. Plain ``urllib`` is enough for one request.

:func:`parse_cli_params` turns ``key=value`` words into typed arguments using
the parameter types of :mod:`bitnode.interface.routes`.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Union

from bitnode.errors import BadRequest
from bitnode.interface.routes import JSON, LEGACY, LIST, ROUTES, STR, Alias, Param, Route
from bitnode.main import netns
from bitnode.main.basedir import Basedir

Target = Union[Route, Alias]

# The API is on loopback: an http_proxy variable in the environment must never apply.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class UnknownMethod(KeyError):
    """No route or legacy alias of that name."""


class NotRunning(ConnectionRefusedError):
    """The basedir has no endpoints file: no node has been started there (or it stopped)."""


def read_endpoints(basedir: Basedir) -> dict | None:
    """The endpoints file a running node wrote (``http``, ``ws``, ``pid``, ``basedir``), or None."""
    try:
        with open(basedir.endpoints_file, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_secret(basedir: Basedir) -> str:
    """The API secret of the node (empty if there is none yet)."""
    try:
        with open(basedir.api_secret_file, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def find_target(method: str) -> Target:
    """The route called ``method``, else the legacy alias of that name; UnknownMethod otherwise."""
    for route in ROUTES:
        if route.name == method:
            return route
    for alias in LEGACY:
        if alias.name == method:
            return alias
    raise UnknownMethod(method)


def _param_index(target: Target) -> dict[str, Param]:
    index: dict[str, Param] = {}
    for param in target.params:
        index[param.name] = param
        for alias in param.aliases:
            index[alias] = param
    return index


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_cli_value(param: Param | None, text: str) -> Any:
    """One ``key=value`` value, typed by its parameter.

    Strings stay as typed (``name=123`` is the text "123"); integers,
    numbers and booleans are parsed (``true``/``false``/``yes``/``no``/``1``/``0``);
    lists are comma-separated or a JSON list; JSON parameters take JSON and
    fall back to plain text; ``null`` gives None where None is the default.
    Unknown parameters are sent as JSON when the text is JSON, else as text,
    and the node decides. Raises ValueError naming the problem.
    """
    if param is None:
        return _json_or_text(text)
    if text == "null" and param.default is None:
        return None
    if param.type is STR:
        return text
    if param.type is JSON:
        return _json_or_text(text)
    if param.type is LIST and not text.strip():
        return []
    try:
        return param.type.parse(text)
    except BadRequest as err:
        raise ValueError(f"{param.name}: {err}") from None


def parse_cli_params(method: str, items: list[str]) -> dict:
    """``["key=value", ...]`` to keyword arguments of ``method``; ValueError on malformed words.

    A list parameter given several times collects every value
    (``ids=a ids=b`` is ``["a", "b"]``).
    """
    target = find_target(method)
    index = _param_index(target)
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"arguments are key=value, got {item!r}")
        param = index.get(key)
        value = parse_cli_value(param, text)
        name = param.name if param is not None else key
        if name in kwargs:
            if param is not None and param.type is LIST and isinstance(kwargs[name], list):
                kwargs[name] = kwargs[name] + list(value or [])
                continue
            raise ValueError(f"{name} given twice")
        kwargs[name] = value
    return kwargs


def _query_text(param: Param | None, value: Any) -> str:
    """A typed value as query-string text the node parses back to the same value."""
    if param is not None and param.type is JSON:
        return json.dumps(value)  # so that the text "123" stays a string
    if isinstance(value, str):
        return value
    return json.dumps(value)


def build_request(base_url: str, secret: str, method: str, kwargs: dict) -> urllib.request.Request:
    """An HTTP request for API method ``method`` following the route table.

    Raises UnknownMethod, or ValueError when a path parameter is missing.
    """
    target = find_target(method)
    kwargs = dict(kwargs)
    if isinstance(target, Alias):
        path, verb = target.path, "POST"
    else:
        path, verb = target.path, target.verb
        for name in target.path_params:
            if name not in kwargs:
                raise ValueError(f"{method} needs {name}=...")
            path = path.replace("{" + name + "}", urllib.parse.quote(str(kwargs.pop(name)), safe=""))
    url = base_url.rstrip("/") + "/" + path
    data = None
    if verb == "GET":
        index = _param_index(target)
        query = {key: _query_text(index.get(key), value) for key, value in kwargs.items() if value is not None}
        if query:
            url += "?" + urllib.parse.urlencode(query)
    else:
        data = json.dumps(kwargs).encode("utf-8")
    request = urllib.request.Request(url, data=data, method=verb)
    request.add_header("api_secret", secret)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    return request


def call_api(basedir: Basedir, method: str, kwargs: dict, timeout: float = 120.0) -> tuple[int, dict]:
    """Call ``method`` on the node of ``basedir``: (HTTP code, envelope).

    Raises NotRunning when no node has written its endpoints, another OSError
    when the node does not answer (or runs in a network namespace this process
    may not enter), UnknownMethod or ValueError for a bad call.
    """
    endpoints = read_endpoints(basedir)
    if not endpoints or "http" not in endpoints:
        raise NotRunning(f"no running node found in {basedir.root}")
    request = build_request(endpoints["http"], read_secret(basedir), method, kwargs)
    try:
        # A node in a network namespace listens on that namespace's loopback (bitnode.main.netns).
        with netns.entered(endpoints.get("netns")), _OPENER.open(request, timeout=timeout) as response:
            return response.status, _envelope(response.read())
    except urllib.error.HTTPError as err:
        with err:
            return err.code, _envelope(err.read())
    except http.client.HTTPException as err:
        # A garbled or cut answer: the node is there but not answering properly.
        raise ConnectionError(f"bad answer from {endpoints['http']}: {err!r}") from None


def _envelope(raw: bytes) -> dict:
    text = raw.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return data
    return {"status": "ERROR", "errors": [text.strip() or "empty answer from the node"]}
