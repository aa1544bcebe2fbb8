"""Tests for bitnode.interface.openapi: the OpenAPI 3.1 document built from the route table."""

from __future__ import annotations

import json

from twisted.internet import defer
from twisted.trial import unittest

from bitnode.app import api_server
from bitnode.interface.openapi import OPENAPI_VERSION, build_openapi, json_default, operation, param_schema
from bitnode.interface.routes import BOOL, FLOAT, INT, JSON, LEGACY, LIST, REQUIRED, ROUTES, STR, Param, Route
from tests.interface.support import HttpApi, start_node

TYPES = {STR: "string", INT: "integer", FLOAT: "number", BOOL: "boolean", LIST: "array"}


def _refs(node):
    """Every "$ref" value anywhere in a JSON tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _resolve(doc: dict, ref: str):
    assert ref.startswith("#/"), ref
    node = doc
    for part in ref[2:].split("/"):
        node = node[part]
    return node


class DocumentTests(unittest.TestCase):
    """The whole document."""

    def setUp(self):
        self.doc = build_openapi()

    def test_is_openapi_3_1_and_survives_a_json_round_trip(self):
        self.assertEqual(self.doc["openapi"], "3.1.0")
        self.assertEqual(json.loads(json.dumps(self.doc)), self.doc)

    def test_every_route_appears_with_each_of_its_verbs(self):
        for route in ROUTES:
            item = self.doc["paths"].get("/" + route.path)
            self.assertIsNotNone(item, route.name)
            for verb in route.verbs:
                self.assertIn(verb.lower(), item, f"{route.name} {verb}")
            self.assertEqual(item[route.verb.lower()]["operationId"], route.name)

    def test_no_verb_is_offered_that_the_route_does_not_accept(self):
        for route in ROUTES:
            item = self.doc["paths"]["/" + route.path]
            self.assertEqual(sorted(item), sorted(v.lower() for v in route.verbs), route.name)

    def test_operation_ids_are_unique(self):
        ids = [op["operationId"] for item in self.doc["paths"].values() for op in item.values()]
        self.assertEqual(len(ids), len(set(ids)))

    def test_get_parameters_are_in_the_query_and_other_verbs_take_a_json_body(self):
        for route in ROUTES:
            in_path = set(route.path_params)
            others = [p for p in route.params if p.name not in in_path]
            op = self.doc["paths"]["/" + route.path][route.verb.lower()]
            where = {p["name"]: p["in"] for p in op.get("parameters", [])}
            for name in in_path:
                self.assertEqual(where[name], "path", route.name)
            if route.verb == "GET":
                self.assertNotIn("requestBody", op, route.name)
                for p in others:
                    self.assertEqual(where[p.name], "query", route.name)
            elif others:
                schema = op["requestBody"]["content"]["application/json"]["schema"]
                self.assertEqual(sorted(schema["properties"]), sorted(p.name for p in others), route.name)
                self.assertEqual(sorted(schema.get("required", [])),
                                 sorted(p.name for p in others if p.required), route.name)
            else:
                self.assertNotIn("requestBody", op, route.name)

    def test_a_mutating_get_route_also_has_a_post(self):
        post = self.doc["paths"]["/process/stop/v1"]["post"]
        self.assertEqual(post["operationId"], "process_stop__post")
        self.assertNotIn("requestBody", post)

    def test_the_post_of_a_mutating_get_route_takes_its_parameters_in_a_body(self):
        route = Route("thing_do", "GET", "thing/do/v1", "Do it.", params=(Param("count", INT, 1),), mutating=True)
        post = operation(route, "POST", None)
        schema = post["requestBody"]["content"]["application/json"]["schema"]
        self.assertEqual(schema["properties"]["count"], {"type": "integer", "default": 1})
        self.assertEqual(operation(route, "GET", None)["parameters"][0]["in"], "query")

    def test_path_parameters_are_required(self):
        op = self.doc["paths"]["/message/receive/{consumer_callback_id}/v1"]["get"]
        param = next(p for p in op["parameters"] if p["name"] == "consumer_callback_id")
        self.assertEqual((param["in"], param["required"]), ("path", True))

    def test_parameters_are_typed_like_the_route_table(self):
        for route in ROUTES:
            op = self.doc["paths"]["/" + route.path][route.verb.lower()]
            schemas = {p["name"]: p["schema"] for p in op.get("parameters", [])}
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            schemas.update(body.get("properties", {}))
            for param in route.params:
                schema = schemas[param.name]
                expected = TYPES.get(param.type)
                if expected is None:
                    self.assertIs(param.type, JSON)
                    self.assertNotIn("type", schema)
                elif param.default is None:
                    self.assertEqual(schema["type"], [expected, "null"], f"{route.name}.{param.name}")
                else:
                    self.assertEqual(schema["type"], expected, f"{route.name}.{param.name}")
                if not param.required:
                    self.assertEqual(schema["default"], json_default(param))

    def test_parameter_aliases_are_documented(self):
        op = self.doc["paths"]["/customer/reject/v1"]["delete"]
        schema = op["requestBody"]["content"]["application/json"]["schema"]["properties"]["customer_id"]
        self.assertIn("idurl", schema["description"])
        op = self.doc["paths"]["/connection/list/v1"]["get"]
        param = next(p for p in op["parameters"] if p["name"] == "protocols")
        self.assertEqual(param["x-aliases"], ["wanted_protos"])

    def test_every_ref_resolves(self):
        refs = set(_refs(self.doc))
        self.assertIn("#/components/schemas/OkEnvelope", refs)
        self.assertIn("#/components/responses/E400", refs)
        for ref in refs:
            self.assertIsInstance(_resolve(self.doc, ref), dict, ref)

    def test_envelope_schemas(self):
        schemas = self.doc["components"]["schemas"]
        self.assertEqual(schemas["OkEnvelope"]["properties"]["status"], {"const": "OK"})
        self.assertEqual(schemas["ErrorEnvelope"]["properties"]["status"], {"const": "ERROR"})
        self.assertEqual(schemas["ErrorEnvelope"]["required"], ["status", "errors"])

    def test_the_api_secret_header_secures_everything(self):
        scheme = self.doc["components"]["securitySchemes"]["api_secret"]
        self.assertEqual((scheme["type"], scheme["in"], scheme["name"]), ("apiKey", "header", "api_secret"))
        self.assertEqual(self.doc["security"], [{"api_secret": []}])

    def test_legacy_names_are_deprecated_operations(self):
        alias = next(a for a in LEGACY if a.name == "restore_single")
        item = self.doc["paths"]["/" + alias.path]
        self.assertEqual(sorted(item), ["get", "post"])
        self.assertTrue(item["get"]["deprecated"])
        self.assertIn("file_download_start", item["get"]["description"])

    def test_without_a_check_nothing_is_marked(self):
        op = self.doc["paths"]["/process/health/v1"]["get"]
        self.assertNotIn("x-implemented", op)
        self.assertNotIn("501", op["responses"])


class ImplementedMarkTests(unittest.TestCase):
    """Operations say whether the node implements them."""

    def test_marks_follow_the_given_check(self):
        doc = build_openapi(implemented=lambda target: target.name == "process_health")
        health = doc["paths"]["/process/health/v1"]["get"]
        self.assertTrue(health["x-implemented"])
        self.assertNotIn("501", health["responses"])
        info = doc["paths"]["/process/info/v1"]["get"]
        self.assertFalse(info["x-implemented"])
        self.assertEqual(info["responses"]["501"], {"$ref": "#/components/responses/E501"})
        self.assertIn("501", info["description"])


class ParamSchemaTests(unittest.TestCase):
    """Single parameters."""

    def test_required_parameter_has_no_default(self):
        self.assertEqual(param_schema(Param("key", STR, REQUIRED)), {"type": "string"})

    def test_list_default_given_as_comma_text_becomes_a_list(self):
        schema = param_schema(Param("types", LIST, "a,b"))
        self.assertEqual(schema, {"type": "array", "items": {"type": "string"}, "default": ["a", "b"]})

    def test_tuple_default_becomes_a_json_list(self):
        self.assertEqual(param_schema(Param("servers", LIST, ()))["default"], [])

    def test_none_default_makes_the_type_nullable(self):
        self.assertEqual(param_schema(Param("size", INT, None)), {"type": ["integer", "null"], "default": None})


class ServedDocumentTests(unittest.TestCase):
    """The node serves its own OpenAPI document at GET /openapi.json (with the secret)."""

    @defer.inlineCallbacks
    def test_node_serves_its_document_with_the_secret(self):
        node = yield start_node(self)
        api = HttpApi(self, node)
        agent = api._client
        response = yield agent.get(api.url("openapi.json"), headers={"api_secret": [api_server(node).secret]})
        self.assertEqual(response.code, 200)
        document = json.loads((yield response.content()))
        self.assertEqual(document["openapi"], OPENAPI_VERSION)
        self.assertEqual(document["servers"], [{"url": node.endpoints()["http"].rstrip("/")}])
        self.assertIn("/process/health/v1", document["paths"])
        # implemented or not, as this node's dispatcher knows it
        self.assertTrue(document["paths"]["/process/health/v1"]["get"]["x-implemented"])
        reply = yield api.request("GET", "openapi.json", secret=None)
        self.assertEqual(reply.code, 401)
        reply = yield api.request("POST", "openapi.json")
        self.assertEqual((reply.code, reply.headers["allow"]), (405, "GET"))
