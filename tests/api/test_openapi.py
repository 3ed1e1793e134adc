"""`/api/openapi.json` and `/api/docs`: a valid OpenAPI 3.1 document generated from the models
the handlers validate with, and Swagger UI served from the package (no internet)."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from budget_proxy.allocations import AllocationRequest, BudgetAllocation
from budget_proxy.schemas import UsageCheckRequest, UsageSummaryQuery
from budget_proxy.virtual_keys import KeyCreated, VirtualKey


async def test_the_document_is_valid_public_and_complete(api):
    resp = await api.anon("GET", "/api/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    routes = set()
    for route in api.proxy.app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path") or ""
        if path.startswith("/api/") and route.method not in ("HEAD", "*"):
            routes.add((route.method.lower(), re.sub(r"{(\w+):[^}]*}", r"{\1}", path)))
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes <= documented


async def test_schemas_come_from_the_handlers_models(api):
    doc = (await api.anon("GET", "/api/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    create = doc["paths"]["/api/allocations"]["post"]
    body_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert body_ref == "#/components/schemas/AllocationRequest"
    assert set(schemas["AllocationRequest"]["properties"]) == set(AllocationRequest.model_fields)
    assert set(schemas["AllocationRequest"]["required"]) == {
        "context_id", "component", "tokens_allocated"}
    out = create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
    assert set(schemas[out.rsplit("/", 1)[1]]["properties"]) == set(
        BudgetAllocation.model_fields)
    assert set(schemas["UsageCheckRequest"]["properties"]) == set(UsageCheckRequest.model_fields)
    params = doc["paths"]["/api/usage"]["get"]["parameters"]
    assert {p["name"] for p in params} == set(UsageSummaryQuery.model_fields)
    assert set(schemas["KeyCreated"]["properties"]) == set(KeyCreated.model_fields)
    assert "key_hash" not in schemas["VirtualKey"]["properties"]
    assert set(schemas["VirtualKey"]["properties"]) == set(VirtualKey.model_fields)
    assert create["security"] == [{"bearer": []}]
    assert {"401", "403", "422"} <= set(create["responses"])
    assert "No language model" in str(
        doc["components"]["schemas"]["NarratedAnalysis"]["properties"]["note"])


async def test_swagger_ui_is_served_offline(api):
    page = await api.anon("GET", "/api/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "https://" not in html and "http://" not in html  # nothing fetched from outside
    for asset in re.findall(r'(?:src|href)="(docs/[^"]+)"', html):
        resp = await api.anon("GET", f"/api/{asset}")
        assert resp.status_code == 200, asset
        assert len(resp.content) > 100
    js = await api.anon("GET", "/api/docs/swagger-ui-bundle.js")
    assert js.headers["content-type"].startswith("application/javascript")
    assert b"SwaggerUIBundle" in js.content
    assert (await api.anon("GET", "/api/docs/../../etc/passwd")).status_code == 404
    assert (await api.anon("GET", "/api/docs/LICENSE")).status_code == 404
