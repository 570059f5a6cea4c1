"""docs/openapi.yaml stays true to the code: a valid OpenAPI document whose paths are exactly the
routes of framebus.control.Api (the open ones, without a token, marked `security: []`), whose
error codes are exactly those of the code, whose request schemas match the pydantic models, and
whose response schemas (strict: every field required or listed, nothing else allowed) accept
what a real daemon answers over HTTP, errors included: the access checks (token, Host,
Origin), the checks from the head, the busy answers and the HTTP server's own.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any, get_args

from openapikit import (
    METHODS,
    SOURCES,
    SPEC,
    Live,
    _operations,
    _refs,
    _resolve,
    _response,
    _route_paths,
)

from framebus.api_handlers import FifoRequest, SubscriptionRequest
from framebus.camera import CameraState
from framebus.config import CAMERA_NAME, PixelFormatName, parse_mode


def test_the_document_is_valid_openapi() -> None:
    for ref in _refs(SPEC):  # structural checks that need no extra package
        assert ref.startswith("#/"), ref
        _resolve(ref)
    assert str(SPEC["openapi"]).startswith(("3.0.", "3.1."))
    assert SPEC["info"]["title"] and SPEC["info"]["version"]
    for path, item in SPEC["paths"].items():
        for method in set(item) & set(METHODS):
            assert item[method]["responses"], f"{method} {path} has no responses"
    try:
        from openapi_spec_validator import validate
    except ImportError:  # a dev extra; the structural checks above still ran
        return
    validate(SPEC)



# -- paths and parameters ----------------------------------------------------------------------


def test_every_route_has_a_path_in_the_spec_and_every_path_a_route(live: Live) -> None:
    assert live.daemon.control is not None
    routes: set[tuple[str, str]] = set()
    for route in live.daemon.control.api.routes:
        method = route.method
        paths, params = _route_paths(route.pattern.pattern)
        for path in paths:
            routes.add((method, path))
            operation = SPEC["paths"].get(path, {}).get(method.lower())
            assert operation is not None, f"{method} {path} is routed but not in the spec"
            # open routes (no token) say so with an empty security; the others inherit bearer
            assert (operation.get("security", SPEC["security"]) == []) == route.open, path
            assert ("401" in operation["responses"]) != route.open, path
            # what any route can answer from the head (Host, Origin), and the bug catch-all;
            # POST adds the body's checks, the worker pool its 503 busy
            statuses = set(operation["responses"])
            assert {"403", "421", "500"} <= statuses, path
            if method == "POST":
                assert {"400", "408", "411", "413", "415"} <= statuses, path
            if route.pooled:
                assert "503" in statuses and "Retry-After" in _response(
                    method, path, 503)[1]["headers"], path
            item_params = SPEC["paths"][path].get("parameters", [])
            declared = {}
            for param in [*item_params, *operation.get("parameters", [])]:
                param = _resolve(param["$ref"]) if "$ref" in param else param
                if param["in"] == "path":
                    schema = param["schema"]
                    schema = _resolve(schema["$ref"]) if "$ref" in schema else schema
                    declared[param["name"]] = schema["pattern"]
            assert declared == {name: f"^{body}$" for name, body in params.items()}, path
    documented = {(method, path) for method, path, _op in _operations()}
    assert documented == routes


def test_name_pattern_is_the_configs() -> None:
    assert SPEC["components"]["schemas"]["Name"]["pattern"] == CAMERA_NAME.pattern
    name_field = SubscriptionRequest.model_fields["name"]
    patterns = [getattr(m, "pattern", None) for m in name_field.metadata]
    assert CAMERA_NAME.pattern in patterns


def _error_codes() -> set[tuple[int, str]]:
    """(status, code) of every error the control plane can answer, read from its source."""
    source = "\n".join(path.read_text() for path in SOURCES)
    found = {(HTTPStatus[name].value, code) for name, code in
             re.findall(r'ApiError\(\s*HTTPStatus\.(\w+),\s*"(\w+)"', source)}
    assert len(found) > 10, "the ApiError pattern no longer matches the code"
    # the server's own answers (http_server.py) and the catch-all 500 (control.py)
    answers = {(int(status), code) for status, code in
               re.findall(r'error_response\(\s*(\d{3}),\s*"(\w+)"', source)}
    assert {(411, "length_required"), (500, "internal")} <= answers, "error_response moved"
    canned = {(int(status), code) for status, code in
              re.findall(r'_canned\(\s*"(\d{3}) [^"]*",\s*"(\w+)"', source)}
    assert (503, "busy") in canned, "the connection-cap answer moved"
    # _protocol_error: h11's error_status_hint (431 for a head too large, 501 for an unknown
    # Transfer-Encoding, 400 otherwise) with its mapping of statuses to codes
    assert '{413: "head_too_large", 431: "head_too_large"}.get(status, "bad_request")' in (
        source), "_protocol_error changed: update the codes below"
    protocol = {(400, "bad_request"), (431, "head_too_large"), (501, "bad_request")}
    return found | answers | canned | protocol


def test_every_error_code_in_the_code_is_documented_with_its_status() -> None:
    found = _error_codes()
    codes = {code for _status, code in found}
    enum = set(SPEC["components"]["schemas"]["Error"]["properties"]["error"]["enum"])
    assert codes == enum
    overview = " ".join(SPEC["info"]["description"].split())
    for status, code in sorted(found):
        described = []  # descriptions of the responses documented with this status
        for method, path, operation in _operations():
            if str(status) in operation["responses"]:
                described.append(_response(method, path, status)[1]["description"])
        # under an operation's response of that status, or in the overview next to it
        near = re.search(rf"\b{status}\b[^;]{{0,120}}?`{code}`", overview)
        assert any(f"`{code}`" in text for text in described) or near, (
            f"{status} {code} is not documented on any operation nor in info.description")


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = SPEC["components"]["schemas"][name]
    return schema


def test_request_schemas_match_the_pydantic_models() -> None:
    for model, name in ((FifoRequest, "FifoRequest"), (SubscriptionRequest, "SubscriptionRequest")):
        schema = _schema(name)
        fields = model.model_fields
        assert set(schema["properties"]) == set(fields), name
        assert set(schema["required"]) == {f for f, info in fields.items() if info.is_required()}
        assert schema["additionalProperties"] is False  # extra="forbid"
        for field, info in fields.items():
            prop = schema["properties"][field]
            if not info.is_required() and info.default is not None:
                default = prop["default"]
                if field == "mode":
                    default = parse_mode(default)
                assert default == info.default, f"{name}.{field} default"
            for meta in info.metadata:
                for attr, key in (("ge", "minimum"), ("le", "maximum"), ("gt", "exclusiveMinimum")):
                    if getattr(meta, attr, None) is not None:
                        assert prop[key] == getattr(meta, attr), f"{name}.{field} {key}"
    formats = list(get_args(PixelFormatName))
    assert _schema("PixelFormat")["enum"] == formats
    assert _schema("CameraState")["enum"] == [state.value for state in CameraState]


