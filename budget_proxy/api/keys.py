"""Virtual keys: `/api/keys` (mint, list, revoke). The secret is in the mint answer only;
no route ever returns it again, nor its hash (see `budget_proxy.virtual_keys`)."""

from __future__ import annotations

from aiohttp import web

from budget_proxy.api.common import api_error, json_response, read_model
from budget_proxy.api.openapi import api_route
from budget_proxy.appkeys import KEYS, POLICIES, STORE
from budget_proxy.virtual_keys import KeyCreated, KeyCreateRequest, VirtualKey


async def create_key(request: web.Request) -> web.Response:
    """Mint a `bp-...` key bound to a component (and optionally a budget). Components use it
    as their provider API key against the proxy routes; their requests are charged to that
    component. With `cost_limit`, `token_limit` or `request_limit` (per `period`, daily by
    default) the key gets its own hard limit, whatever headers its requests send. The
    secret is shown in this answer only."""
    req = await read_model(request, KeyCreateRequest)
    if isinstance(req, web.Response):
        return req
    store = request.config_dict[STORE]
    if req.budget_id is not None and await store.get_budget(req.budget_id) is None:
        reason = f"no budget {req.budget_id}"
        return api_error(422, "validation_error", f"budget_id: {reason}",
                         [{"field": "budget_id", "reason": reason}])
    created = await request.config_dict[KEYS].mint(req)
    if created.policy is not None:
        await request.config_dict[POLICIES].refresh()
    return json_response(created, 201)


async def list_keys(request: web.Request) -> web.Response:
    """Every key, revoked ones included; never a secret or a hash."""
    return json_response(await request.config_dict[KEYS].list_keys())


async def get_key(request: web.Request) -> web.Response:
    """One key (no secret, no hash)."""
    key_id = request.match_info["key_id"]
    key = await request.config_dict[KEYS].get(key_id)
    if key is None:
        return api_error(404, "not_found", f"no key {key_id}")
    return json_response(key.public())


async def revoke_key(request: web.Request) -> web.Response:
    """Revoke a key: proxy requests made with it are refused (401) from now on."""
    key_id = request.match_info["key_id"]
    key = await request.config_dict[KEYS].revoke(key_id)
    if key is None:
        return api_error(404, "not_found", f"no key {key_id}")
    return json_response(key)


def routes() -> list[web.RouteDef]:
    tag = "keys"
    return [
        api_route("GET", "/api/keys", list_keys, summary="List virtual keys", tag=tag,
                  response=list[VirtualKey]),
        api_route("POST", "/api/keys", create_key, summary="Mint a virtual key", tag=tag,
                  body=KeyCreateRequest, response=KeyCreated, status=201),
        api_route("GET", "/api/keys/{key_id}", get_key, summary="One virtual key", tag=tag,
                  response=VirtualKey),
        api_route("DELETE", "/api/keys/{key_id}", revoke_key, summary="Revoke a virtual key",
                  tag=tag, response=VirtualKey),
        api_route("POST", "/api/keys/{key_id}/revoke", revoke_key, summary="Revoke a virtual "
                  "key (same as DELETE)", tag=tag, response=VirtualKey),
    ]
