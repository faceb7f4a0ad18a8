"""The OpenAPI document says everything the API does: envelopes, every status, the bearer scheme, CSRF."""

from typing import Any

import httpx
import pytest

from pj_gateway.app import create_app
from pj_gateway.deps import CSRF_HEADER
from pj_gateway.settings import GatewaySettings

SECRET = "openapi-test-secret-0123456789abcdef012345"
ERROR = "#/components/schemas/ErrorEnvelope"
# Every status the API answers (issue: the spec documents each); per route as it can happen.
API_ERRORS = {"400", "401", "414", "429", "431", "500", "503", "504"}
BODY_ERRORS = {"413", "415", "422"}


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return create_app(GatewaySettings(env="dev", jwt_secret=SECRET)).openapi()


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in spec["paths"].items() for method, op in ops.items()]


def schema_of(response: dict[str, Any]) -> dict[str, Any]:
    [content] = response["content"].values()
    return dict(content["schema"])


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return dict(spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
    return schema


def test_every_route_has_a_non_empty_success_schema(spec: dict[str, Any]) -> None:
    for path, method, op in operations(spec):
        successes = {status: r for status, r in op["responses"].items() if status.startswith("2")}
        assert successes, (method, path)
        for status, response in successes.items():
            schema = resolve(spec, schema_of(response))
            assert schema and schema != {"type": "object"}, (method, path, status)


def test_api_successes_are_the_envelope_around_the_reply_model(spec: dict[str, Any]) -> None:
    expected = {("/api/approvals", "get"): "ApprovalPage", ("/api/approvals/count/pending", "get"): "PendingCount",
                ("/api/approvals/{approval_id}", "get"): "ApprovalView",
                ("/api/approvals/{approval_id}/chain", "get"): "ChainView",
                ("/api/approvals/{approval_id}/decide", "post"): "ApprovalView",
                ("/api/approvals/{approval_id}/dispatch", "post"): "DispatchOutcome",
                ("/api/pj/execute", "post"): "ExecuteAccepted"}
    for (path, method), model in expected.items():
        responses = spec["paths"][path][method]["responses"]
        envelope = resolve(spec, schema_of(responses["202" if path == "/api/pj/execute" else "200"]))
        assert {"correlationId", "data"} <= set(envelope["required"])
        assert envelope["properties"]["data"] == {"$ref": f"#/components/schemas/{model}"}, path
        assert envelope["properties"]["success"]["const"] is True


def test_execute_keeps_its_top_level_fields_and_answers_200_or_202(spec: dict[str, Any]) -> None:
    responses = spec["paths"]["/api/pj/execute"]["post"]["responses"]
    accepted = resolve(spec, schema_of(responses["202"]))
    assert {"approvalId", "approvalRequired"} <= set(accepted["required"])
    done = [resolve(spec, s) for s in schema_of(responses["200"])["anyOf"]]
    assert {s["properties"]["data"]["$ref"].rsplit("/", 1)[1] for s in done} == {"DryRunPlan", "DispatchOutcome"}
    assert set(spec["paths"]["/api/approvals/{approval_id}/dispatch"]["post"]["responses"]) >= {"200", "202"}


def test_every_error_status_a_route_can_answer_has_the_error_envelope(spec: dict[str, Any]) -> None:
    for path, method, op in operations(spec):
        statuses = set(op["responses"])
        if path.startswith("/api/"):
            wanted = set(API_ERRORS)
            if method == "post":
                wanted |= {"403", "409"} | BODY_ERRORS
            if "{approval_id}" in path:
                wanted |= {"404", "422"}
            assert wanted <= statuses, (method, path, wanted - statuses)
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")) and path != "/health":
                assert response["content"] == {"application/json": {"schema": {"$ref": ERROR}}}, (path, status)


def test_the_error_envelope_schema(spec: dict[str, Any]) -> None:
    envelope = spec["components"]["schemas"]["ErrorEnvelope"]
    assert set(envelope["required"]) == {"correlationId", "error"}
    assert envelope["properties"]["success"]["const"] is False
    detail = resolve(spec, envelope["properties"]["error"])
    assert set(detail["required"]) == {"code", "message"}


def test_the_api_uses_the_bearer_scheme_and_posts_declare_the_csrf_header(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "A JWT from the identity provider (PJ_JWT_JWKS_URL or PJ_JWT_PUBLIC_KEY), or signed with "
                       "PJ_JWT_SECRET (`make token`)"}
    for path, method, op in operations(spec):
        if path.startswith("/api/"):
            assert op["security"] == [{"HTTPBearer": []}], (method, path)
        headers = {p["name"] for p in op.get("parameters", []) if p["in"] == "header"}
        assert (CSRF_HEADER in headers) == (method == "post"), (method, path)
    assert "security" not in spec["paths"]["/health"]["get"]
    assert spec["paths"]["/metrics"]["get"]["security"] == [{"metricsToken": []}]


def test_health_documents_503_and_metrics_its_text(spec: dict[str, Any]) -> None:
    health = spec["paths"]["/health"]["get"]["responses"]
    assert schema_of(health["503"]) == {"$ref": "#/components/schemas/GatewayHealth"}
    checks = resolve(spec, resolve(spec, schema_of(health["200"]))["properties"]["checks"])
    assert set(checks["required"]) == {"broker", "approvals", "database", "dispatchers", "notifier"}
    metrics = spec["paths"]["/metrics"]["get"]["responses"]
    assert metrics["200"]["content"]["text/plain"]["schema"] == {"type": "string"}


async def test_docs_reference_no_other_host() -> None:
    app = create_app(GatewaySettings(env="dev", jwt_secret=SECRET))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        html = (await client.get("/docs")).text
    assert "swagger-ui-bundle.js" in html
    assert "http://" not in html and "https://" not in html
