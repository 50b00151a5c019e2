"""GET /openapi.json: the document itself, and schemathesis fuzzing the running app against it.

The fuzzing runs under gunicorn (the real body reading, the real guards) with the demo model at a fast
pace and short answers, the per-client limits off: every answer must be a non-5xx that conforms to
the document (status, content type, headers and body schema).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from helpers import FAST_DEMO, GunicornProcess
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app import create_app
from streamchat.chat_request import ChatBody, SessionBody

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_openapi_document_describes_every_route_of_the_app():
    app = create_app(FAST_DEMO)
    document = app.test_client().get("/openapi.json").get_json()
    assert document["openapi"] == "3.1.0"
    routes = {
        (str(rule).replace("<run_id>", "{run_id}"), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
        if rule.endpoint != "static"
    }
    documented = {(path, method) for path, operations in document["paths"].items() for method in operations}
    assert documented == routes


def test_openapi_request_schemas_are_the_validators_own_models():
    document = create_app(FAST_DEMO).test_client().get("/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    chat = ChatBody.model_json_schema(ref_template="#/components/schemas/{model}")
    assert schemas["ChatBody"] == {key: value for key, value in chat.items() if key != "$defs"}
    assert schemas["ChatMessage"] == chat["$defs"]["ChatMessage"]
    assert schemas["SessionBody"] == SessionBody.model_json_schema()
    body = document["paths"]["/runs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ChatBody"}


@pytest.fixture(scope="module")
def api_server() -> Iterator[GunicornProcess]:
    """gunicorn with a fast demo model and answers of a few tokens, limits off."""
    with GunicornProcess(
        {
            "DEMO_TOKENS_PER_SECOND": "2000",
            "DEMO_FIRST_TOKEN_SECONDS": "0",
            "DEMO_JITTER": "0",
            "DEFAULT_MAX_TOKENS": "5",
            "MAX_TOKENS_LIMIT": "8",
            "DISCONNECT_GRACE_SECONDS": "0.5",
            "HEARTBEAT_SECONDS": "0.5",
        }
    ) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(api_server):
    """The running app's own OpenAPI document, loaded by schemathesis."""
    return schemathesis.openapi.from_url(f"{api_server.base_url}/openapi.json")


def operation_labels() -> list[str]:
    """Name every operation of the document, one test each (read from the app, not the server)."""
    document = create_app(FAST_DEMO).test_client().get("/openapi.json").get_json()
    return [f"{method.upper()} {path}" for path, ops in document["paths"].items() for method in ops]


@pytest.mark.parametrize("label", operation_labels())
def test_openapi_fuzzed_requests_get_conforming_answers_and_no_5xx(api_schema, label):
    # One hypothesis test per operation, from schemathesis's strategy for it (its pytest plugin's
    # parametrize does the same, but its from_fixture does not run under this pytest).
    operation = api_schema.find_operation_by_label(label)

    @given(case=operation.as_strategy())
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case) -> None:
        case.call_and_validate(checks=CHECKS, timeout=10)

    fuzz()
