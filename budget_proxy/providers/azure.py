"""Azure OpenAI: `openai/deployments/{deployment}/{endpoint}?api-version=...` under the
resource's base URL, the key in `api-key`, the deployment mapped to a catalog model by the
provider's `deployments` table (a deployment it does not list is priced as the model of the
same name). Azure's v1 API (`openai/v1/{endpoint}`, the deployment as `model` in the body)
is metered the same way. Bodies, streams and error envelopes are OpenAI's."""

from __future__ import annotations

from typing import ClassVar

from budget_proxy.config import ProviderConfig
from budget_proxy.providers.base import Plan, RequestProblem, body_model, json_body
from budget_proxy.providers.openai import ENDPOINTS, OpenAI, plan_openai

_DEPLOYMENTS = "openai/deployments/"
_V1 = "openai/v1/"


def split_deployment(path: str) -> tuple[str | None, str]:
    """(deployment, endpoint path) of a path under the resource: the deployment is None for
    the v1 API and for paths that are neither."""
    if path.startswith(_DEPLOYMENTS):
        deployment, _, endpoint = path[len(_DEPLOYMENTS):].partition("/")
        return deployment or None, endpoint
    if path.startswith(_V1):
        return None, path[len(_V1):]
    return None, path


class Azure(OpenAI):
    api: ClassVar[str] = "azure"
    key_header: ClassVar[str] = "api-key"
    free_posts: ClassVar[tuple[str, ...]] = (
        "openai/files", "openai/v1/files", "openai/v1/moderations",
        "openai/v1/responses/input_tokens",
    )

    def api_root(self, rest: str) -> str:
        return rest

    def endpoint_kind(self, path: str) -> str | None:
        deployment, endpoint = split_deployment(path)
        if deployment is None and not path.startswith(_V1):
            return None
        return ENDPOINTS.get(endpoint)

    def refused_reason(self, path: str) -> str:
        _, endpoint = split_deployment(path)
        return super().refused_reason(endpoint)

    def plan(self, endpoint: str, path: str, query: str, raw: bytes,
             provider: ProviderConfig) -> Plan:
        body = json_body(raw)
        deployment, _ = split_deployment(path)
        if deployment is None:
            deployment = body_model(body)
        if "%" in deployment:
            raise RequestProblem("invalid_path", "a deployment name has no percent-escapes")
        return plan_openai(endpoint, body, provider.deployments.get(deployment, deployment))

    def with_model(self, plan: Plan, model: str) -> Plan | None:
        return None  # the deployment decides the model

    def catalog_provider(self, provider: ProviderConfig) -> str:
        return "openai"  # Azure bills OpenAI's models at OpenAI's list prices

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"api-key": key}
