"""The OpenAPI document is generated from the management API's route table."""

from __future__ import annotations

import re

from wharf.broker.http.api import api_routes, wharf_version
from wharf.broker.http.openapi import openapi_document

_METHODS = {"get", "put", "post", "patch", "delete"}


def _document_operations() -> set[tuple[str, str]]:
    doc = openapi_document(wharf_version(), api_routes())
    return {
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method in ops
        if method in _METHODS
    }


def test_every_route_is_documented_and_every_operation_is_a_route() -> None:
    routes = {(r.method, "/api/" + "/".join(r.path)) for r in api_routes()}
    assert _document_operations() == routes


def test_each_operation_follows_its_route() -> None:
    doc = openapi_document(wharf_version(), api_routes())
    schemas = doc["components"]["schemas"]
    for route in api_routes():
        op = doc["paths"]["/api/" + "/".join(route.path)][route.method.lower()]
        status, result, body, summary = route.doc.split(maxsplit=3)
        assert status in op["responses"] and op["summary"].startswith(summary)
        assert ("administrator" in op["summary"]) == route.admin
        query = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
        assert query == list(route.query)
        for name in (result.strip("[]"), body):
            assert name == "-" or name in schemas, (route, name)
        assert ("requestBody" in op) == (body != "-")
        assert re.fullmatch(r"[a-z_]+", op["operationId"].replace("-", "_"))
