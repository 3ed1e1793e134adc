"""Serve one aiohttp request with an ASGI application (the MCP SDK's streamable HTTP app).

The adapter is small because the MCP transport needs little: one HTTP request in, a response
out whose body may stream (SSE) until the app ends it. The request body is handed over chunk
by chunk; after it, `receive` waits for the end of the exchange and reports `http.disconnect`
(an ASGI app listening for disconnects must block there, not spin on empty bodies). Each
`http.response.body` is written as it comes, so a streamed answer is never buffered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from aiohttp import web

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]
# the response's framing is aiohttp's to decide
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"upgrade"})


def scope_of(request: web.Request, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ASGI HTTP scope of an aiohttp request; `extra` keys are added as they are."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    peername = request.transport.get_extra_info("peername") if request.transport else None
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": f"{request.version.major}.{request.version.minor}",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": request.rel_url.raw_path.encode(),
        "query_string": request.rel_url.raw_query_string.encode(),
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in request.raw_headers],
        "client": tuple(peername[:2]) if isinstance(peername, tuple) else None,
        "server": tuple(sockname[:2]) if isinstance(sockname, tuple) else None,
        "state": {},
        **(extra or {}),
    }


async def serve_asgi(app: ASGIApp, request: web.Request,
                     extra_scope: dict[str, Any] | None = None) -> web.StreamResponse:
    """Run `app` for `request` and return the (already sent) aiohttp response."""
    finished = asyncio.Event()
    body_done = False
    response: web.StreamResponse | None = None

    async def receive() -> Message:
        nonlocal body_done
        if not body_done:
            chunk = await request.content.readany()
            body_done = request.content.at_eof() or not chunk
            return {"type": "http.request", "body": chunk, "more_body": not body_done}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal response
        kind = message["type"]
        if kind == "http.response.start":
            if response is not None:
                raise RuntimeError("the ASGI app started its response twice")
            response = web.StreamResponse(status=int(message["status"]))
            for name, value in message.get("headers", ()):
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
            await response.prepare(request)
        elif kind == "http.response.body":
            if response is None:
                raise RuntimeError("the ASGI app sent a body before starting its response")
            body = message.get("body", b"")
            if body:
                await response.write(body)
            if not message.get("more_body", False):
                await response.write_eof()
                finished.set()

    try:
        await app(scope_of(request, extra_scope), receive, send)
    finally:
        finished.set()
    if response is None:
        raise RuntimeError("the ASGI app answered nothing")
    return response
