"""An OpenAPI 3.1 document of the local HTTP API, built from the route table.

:func:`build_openapi` turns :data:`~bitnode.interface.routes.ROUTES` and
:data:`~bitnode.interface.routes.LEGACY` into a plain dict (JSON-ready):
one path per route, one operation per accepted verb, parameters in the query
string for GET and in a JSON object body otherwise (``{placeholders}`` of a
path are path parameters), the OK/ERROR envelopes as shared schemas, and the
``api_secret`` header as the security scheme. ``scripts/gen_docs.py`` writes
it to ``docs/openapi.json``.

Whether a method is built is not a property of the table; pass
``implemented`` (for instance ``Dispatcher(API).is_implemented``) to mark
the operations that still answer 501.
"""

from __future__ import annotations

from typing import Any, Callable, Union

import bitnode
from bitnode.interface.routes import BOOL, FLOAT, INT, JSON, LEGACY, LIST, ROUTES, STR, Alias, Param, Route

Target = Union[Route, Alias]

OPENAPI_VERSION = "3.1.0"
DEFAULT_SERVER = "http://127.0.0.1:8180"
LEGACY_TAG = "legacy"

# The HTTP codes of the one error table (bitnode.errors) every operation may answer.
ERROR_CODES: tuple[tuple[str, str], ...] = (
    ("400", "Bad request: unknown, missing or malformed parameter."),
    ("401", "Missing or wrong api_secret."),
    ("403", "Foreign Host or Origin, or not allowed."),
    ("404", "Unknown method or the named thing does not exist."),
    ("405", "The path exists but not with this verb (see the Allow header)."),
    ("409", "Conflicts with the current state."),
    ("429", "Rate limit hit (see the Retry-After header)."),
    ("500", "Unexpected internal error (logged with a traceback)."),
    ("503", "A needed subsystem or peer is unavailable or timed out."),
    ("507", "Not enough storage space."),
)
NOT_IMPLEMENTED = ("501", "The method is in the spec but its subsystem is not built yet.")


def param_schema(param: Param) -> dict:
    """The JSON schema of one parameter: type, default and ``null`` when the default is None."""
    if param.type is LIST:
        schema: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
    elif param.type is JSON:
        schema = {"description": "any JSON value (in a query string: JSON text, else plain text)"}
    else:
        schema = {"type": _JSON_TYPES.get(param.type.name, "string")}
    if param.required:
        return schema
    default = json_default(param)
    if default is None and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    schema["default"] = default
    return schema


_JSON_TYPES = {STR.name: "string", INT.name: "integer", FLOAT.name: "number", BOOL.name: "boolean"}


def json_default(param: Param) -> Any:
    """A parameter's default as a JSON value (tuples become lists, comma text of a list is split)."""
    default = param.default
    if isinstance(default, tuple):
        return list(default)
    if param.type is LIST and isinstance(default, str):
        return LIST.parse(default)
    return default


def _parameter(param: Param, where: str) -> dict:
    out: dict[str, Any] = {"name": param.name, "in": where, "schema": param_schema(param)}
    if where == "path" or param.required:
        out["required"] = True
    if param.description:
        out["description"] = param.description
    if param.type is LIST and where == "query":
        # comma-separated text, the form parse_string_list accepts
        out["style"], out["explode"] = "form", False
    if param.aliases:
        out["x-aliases"] = list(param.aliases)
    return out


def _body(params: list[Param]) -> dict:
    properties = {}
    for param in params:
        schema = param_schema(param)
        notes = [param.description] if param.description else []
        if param.aliases:
            notes.append("also accepted as: " + ", ".join(param.aliases))
        if notes:
            schema = dict(schema, description="; ".join(notes))
        properties[param.name] = schema
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    required = [p.name for p in params if p.required]
    if required:
        schema["required"] = required
    return {"required": bool(required), "content": {"application/json": {"schema": schema}}}


def _path_placeholders(path: str) -> tuple[str, ...]:
    return tuple(part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}"))


def operation(target: Target, verb: str, implemented: bool | None) -> dict:
    """The OpenAPI operation of ``target`` for one HTTP ``verb``."""
    legacy = isinstance(target, Alias)
    in_path = set(_path_placeholders(target.path))
    path_params = [p for p in target.params if p.name in in_path]
    other = [p for p in target.params if p.name not in in_path]
    summary = target.description or target.name
    description = summary
    if legacy:
        description += f"\n\nLegacy name; routed to `{target.target}`."
    if implemented is False:
        description += "\n\nNot implemented yet: answers 501."
    primary = verb == (target.verbs[0])
    op: dict[str, Any] = {
        "operationId": target.name if primary else f"{target.name}__{verb.lower()}",
        "summary": summary,
        "description": description,
        "tags": [LEGACY_TAG if legacy else area_of(target.path)],
    }
    parameters = [_parameter(p, "path") for p in path_params]
    if verb == "GET":
        parameters += [_parameter(p, "query") for p in other]
    elif other:
        op["requestBody"] = _body(other)
    if parameters:
        op["parameters"] = parameters
    responses: dict[str, Any] = {"200": {"$ref": "#/components/responses/OK"}}
    for code, _ in ERROR_CODES:
        responses[code] = {"$ref": f"#/components/responses/E{code}"}
    if implemented is False:
        responses[NOT_IMPLEMENTED[0]] = {"$ref": f"#/components/responses/E{NOT_IMPLEMENTED[0]}"}
    op["responses"] = dict(sorted(responses.items()))
    if legacy:
        op["deprecated"] = True
    if implemented is not None:
        op["x-implemented"] = implemented
    return op


def area_of(path: str) -> str:
    """The area of a route: the first segment of its path ("process", "config", ...)."""
    return path.split("/", 1)[0]


def _components() -> dict:
    ok = {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"const": "OK"},
            "result": {"description": "a dict or a list, as documented for the method"},
            "execution": {"type": "string", "description": "seconds spent, e.g. \"0.0012\""},
        },
    }
    error = {
        "type": "object",
        "required": ["status", "errors"],
        "properties": {
            "status": {"const": "ERROR"},
            "errors": {"type": "array", "items": {"type": "string"}},
            "execution": {"type": "string"},
        },
    }
    responses = {
        "OK": {
            "description": "Success envelope.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/OkEnvelope"}}},
        }
    }
    for code, text in ERROR_CODES + (NOT_IMPLEMENTED,):
        responses[f"E{code}"] = {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}},
        }
    return {
        "schemas": {"OkEnvelope": ok, "ErrorEnvelope": error},
        "responses": dict(sorted(responses.items())),
        "securitySchemes": {
            "api_secret": {
                "type": "apiKey",
                "in": "header",
                "name": "api_secret",
                "description": "The token in basedir/metadata/apisecret (WebSocket clients may pass "
                               "?api_secret= instead).",
            }
        },
    }


def build_openapi(implemented: Callable[[Target], bool] | None = None, server_url: str = DEFAULT_SERVER) -> dict:
    """The whole OpenAPI 3.1 document as a dict; legacy names are included as deprecated operations.

    ``implemented(target)``, if given, marks each operation with
    ``x-implemented`` and adds the 501 answer to the ones that are not.
    """
    paths: dict[str, dict] = {}
    tags: list[str] = []
    v1_names = {route.name for route in ROUTES}
    targets: list[Target] = list(ROUTES) + [a for a in LEGACY if a.name not in v1_names]
    for target in targets:
        is_built = implemented(target) if implemented is not None else None
        item = paths.setdefault("/" + target.path, {})
        for verb in target.verbs:
            item[verb.lower()] = operation(target, verb, is_built)
        tag = LEGACY_TAG if isinstance(target, Alias) else area_of(target.path)
        if tag not in tags:
            tags.append(tag)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "bitnode local API",
            "version": bitnode.__version__,
            "description": "The local HTTP API of a bitnode node, generated from bitnode/interface/routes.py. "
                           "Every answer is a JSON envelope: {\"status\": \"OK\", \"result\": ...} or "
                           "{\"status\": \"ERROR\", \"errors\": [...]}.",
        },
        "servers": [{"url": server_url}],
        "security": [{"api_secret": []}],
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": _components(),
    }
