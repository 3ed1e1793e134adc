"""The OpenAPI 3.1 document and the Swagger UI, both generated, neither hand-written.

Route modules declare their routes with `api_route(...)`, naming the pydantic models the
handler validates its body and query with and the model it answers with. The document is
built from the application's router at request time: every `/api` route appears, described
by its registered operation (or minimally, if a module did not register one), with schemas
produced by pydantic from those same models. Swagger UI's assets are vendored in
`static/swagger-ui`, so `/api/docs` works without internet access.
"""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from budget_proxy import __version__

Access = Literal["public", "read", "admin"]
REF = "#/components/schemas/{model}"
ASSETS = {  # file -> content type; nothing else under static/ is served
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}
_PATH_PARAM = re.compile(r"{(\w+)(?::[^}]*)?}")


class ErrorDetail(BaseModel):
    field: str
    reason: str


class ErrorInfo(BaseModel):
    type: str
    message: str
    details: list[ErrorDetail] | None = None


class ErrorResponse(BaseModel):
    """Every admin API error: 4xx/5xx with this body."""

    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    response: Any = None  # a model, list[model], or None for free-form JSON
    status: int = 200
    media_type: str = "application/json"
    access: Access | None = None  # default: read for GET, admin otherwise
    description: str | None = None

    @property
    def required_access(self) -> Access:
        if self.access is not None:
            return self.access
        return "read" if self.method in ("GET", "HEAD") else "admin"


OPERATIONS: dict[tuple[str, str], Operation] = {}


def document(method: str, path: str, **doc: Any) -> Operation:
    """Describe a route (declared here or elsewhere) for the OpenAPI document."""
    op = Operation(method=method, path=path, **doc)
    OPERATIONS[(method, path)] = op
    return op


def api_route(method: str, path: str, handler: Any, **doc: Any) -> web.RouteDef:
    """A route plus its documentation: the models named here are the handler's own."""
    doc.setdefault("description", inspect.getdoc(handler))
    document(method, path, **doc)
    return web.route(method, path, handler)


# routes declared by modules outside this issue: documented from the models they validate with
def _document_existing() -> None:
    from budget_proxy.models import BudgetPolicy
    from budget_proxy.schemas import Deleted, HealthStatus, StatusReport

    document("GET", "/health", summary="Liveness and store health", tag="health",
             response=HealthStatus, access="public")
    document("GET", "/api/health", summary="Liveness and store health", tag="health",
             response=HealthStatus, access="public")
    document("GET", "/api/policies", summary="List policies", tag="policies",
             response=list[BudgetPolicy])
    document("POST", "/api/policies", summary="Create (or replace, by policy_id) a policy",
             tag="policies", body=BudgetPolicy, response=BudgetPolicy, status=201,
             description="`budget_id` is optional and defaults to the default budget: "
             '`{"period": "daily", "type": "hard_limit", "cost_limit": 5}` is complete.')
    document("GET", "/api/policies/{policy_id}", summary="One policy", tag="policies",
             response=BudgetPolicy)
    document("DELETE", "/api/policies/{policy_id}", summary="Delete a policy", tag="policies",
             response=Deleted)
    document("GET", "/api/status", summary="Every policy's current window", tag="status",
             response=StatusReport)


_document_existing()


# the document ---------------------------------------------------------------------------
def _model_of(response: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model, is_list) of a response annotation."""
    if typing.get_origin(response) is list:
        (item,) = typing.get_args(response)
        return item, True
    if isinstance(response, type) and issubclass(response, BaseModel):
        return response, False
    return None, False


def _operations(app: web.Application) -> list[Operation]:
    seen: dict[tuple[str, str], Operation] = {}
    for route in app.router.routes():
        if route.method in ("HEAD", "*"):
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("formatter") or info.get("path")
        if not path or not (path.startswith("/api/") or path == "/health"):
            continue
        key = (route.method, path)
        seen[key] = OPERATIONS.get(key) or Operation(
            method=route.method, path=path, summary=f"{route.method} {path}",
            tag=path.split("/")[2] if path.startswith("/api/") else "health",
        )
    return sorted(seen.values(), key=lambda op: (op.path, op.method))


def build_openapi(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the application's admin API."""
    ops = _operations(app)
    wanted: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (ErrorResponse, "serialization")]
    for op in ops:
        if op.body is not None:
            wanted.append((op.body, "validation"))
        if op.query is not None:
            wanted.append((op.query, "validation"))
        model, _ = _model_of(op.response)
        if model is not None:
            wanted.append((model, "serialization"))
    refs, top = models_json_schema(list(dict.fromkeys(wanted)), ref_template=REF)
    schemas: dict[str, Any] = top.get("$defs", {})
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(_PATH_PARAM.sub(r"{\1}", op.path), {})[op.method.lower()] = (
            _operation(op, refs, schemas))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "budget-proxy admin API",
            "version": __version__,
            "description": "Budgets, policies, allocations, usage, reports, alerts and virtual "
                           "keys of a budget-proxy sidecar. With BUDGET_ADMIN_TOKEN set, "
                           "changes need `Authorization: Bearer <token>`; the viewer token "
                           "may read. Virtual keys (`bp-...`) are refused here.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _ref(refs: dict[Any, Any], model: type[BaseModel], mode: str) -> dict[str, Any]:
    return dict(refs[(model, mode)])


def _operation(op: Operation, refs: dict[Any, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "operationId": _operation_id(op), "summary": op.summary, "tags": [op.tag],
    }
    if op.description:
        out["description"] = op.description
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAM.findall(op.path)
    ]
    if op.query is not None:
        ref = _ref(refs, op.query, "validation")["$ref"].rsplit("/", 1)[-1]
        definition = schemas[ref]
        required = set(definition.get("required", []))
        for name, prop in definition.get("properties", {}).items():
            param: dict[str, Any] = {"name": name, "in": "query", "required": name in required,
                                     "schema": prop}
            if "description" in prop:
                param["description"] = prop["description"]
            if prop.get("type") == "array":
                param.update(style="form", explode=False)
            params.append(param)
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": op.body_required, "content": {
            "application/json": {"schema": _ref(refs, op.body, "validation")}}}
    model, is_list = _model_of(op.response)
    if model is not None:
        schema = _ref(refs, model, "serialization")
        if is_list:
            schema = {"type": "array", "items": schema}
        content = {op.media_type: {"schema": schema}}
    elif op.media_type == "application/json":
        content = {op.media_type: {"schema": {"type": "object"}}}
    else:
        content = {op.media_type: {"schema": {"type": "string"}}}
    error = {"description": "Error", "content": {"application/json": {
        "schema": _ref(refs, ErrorResponse, "serialization")}}}
    responses: dict[str, Any] = {str(op.status): {"description": "OK", "content": content}}
    if op.body is not None or op.query is not None:
        responses["422"] = {**error, "description": "A field is invalid (named in details)."}
    if op.body is not None:
        responses["400"] = {**error, "description": "The body is not a JSON object."}
    if "{" in op.path:
        responses["404"] = {**error, "description": "Not found."}
    access = op.required_access
    if access != "public":
        responses["401"] = {**error, "description": "A token is required."}
        if access == "admin":
            responses["403"] = {**error, "description": "This token may not change anything."}
            out["security"] = [{"bearer": []}]
        else:
            out["security"] = [{"bearer": []}, {}]
    out["responses"] = responses
    return out


def _operation_id(op: Operation) -> str:
    path = op.path.removeprefix("/api/") if op.path.startswith("/api/") else f"root{op.path}"
    words = re.sub(r"[{}]", "", path).replace("-", "_").replace(".", "_")
    return f"{op.method.lower()}_{words.replace('/', '_').strip('_')}"


# handlers -------------------------------------------------------------------------------
async def openapi_json(request: web.Request) -> web.Response:
    """This document."""
    return web.json_response(build_openapi(request.match_info.apps[0]))  # the root app


DOCS_HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>budget-proxy admin API</title>
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
<link rel="stylesheet" href="docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true,
                             persistAuthorization: true});
</script>
</body>
</html>
"""


async def docs(request: web.Request) -> web.Response:
    """Swagger UI for this API (assets served by this process, no internet needed)."""
    return web.Response(text=DOCS_HTML, content_type="text/html")


async def docs_asset(request: web.Request) -> web.Response:
    """A Swagger UI asset."""
    name = request.match_info["asset"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    data = resources.files("budget_proxy.api").joinpath("static", "swagger-ui", name).read_bytes()
    return web.Response(body=data, content_type=content_type,
                        headers={"Cache-Control": "public, max-age=86400"})


def routes() -> list[web.RouteDef]:
    return [
        api_route("GET", "/api/openapi.json", openapi_json, summary="OpenAPI 3.1 document",
                  tag="docs", access="public"),
        api_route("GET", "/api/docs", docs, summary="Swagger UI", tag="docs",
                  media_type="text/html", access="public"),
        api_route("GET", "/api/docs/{asset}", docs_asset, summary="Swagger UI asset",
                  tag="docs", media_type="application/octet-stream", access="public"),
    ]
