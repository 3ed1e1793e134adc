"""The cheapest possible aiohttp pass-through proxy: the reference the budget proxy is held to.

It has no budget logic at all: method, path, headers and body go to the upstream through
one shared ClientSession, and the response comes back chunk by chunk as it arrives. Any
cost the real proxy adds above this one is cost of its own making. It runs on uvloop when
that is installed (the fastest a Python aiohttp pass-through gets; the proxy uses it too when
installed, the `fast` extra), so the ratios compare the proxy with the real limit.

    python benchmarks/floor.py --port 8901 --upstream http://127.0.0.1:8900
"""

from __future__ import annotations

import argparse
import asyncio
import os

import aiohttp
from aiohttp import web

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)


async def forward(request: web.Request) -> web.StreamResponse:
    """Relay one request and stream the upstream's answer back without buffering it."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    body = await request.read()
    url = request.app[UPSTREAM] + request.path_qs
    resp = web.StreamResponse()
    try:
        async with request.app[SESSION].request(
            request.method, url, data=body, headers=headers
        ) as upstream:
            resp.set_status(upstream.status, upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP_BY_HOP:
                    resp.headers.add(k, v)
            if upstream.content_length is not None:
                resp.content_length = upstream.content_length
            await resp.prepare(request)
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
    except ConnectionResetError:
        pass  # the client went away (a load generator stopping mid-request)
    except aiohttp.ClientError as exc:
        if not resp.prepared:
            return web.Response(status=502, text=f"upstream error: {exc}")
        if request.transport is not None:
            request.transport.abort()  # cut the client off too rather than end the body cleanly
    return resp


def create_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[UPSTREAM] = upstream.rstrip("/")

    async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        ) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Bare aiohttp pass-through proxy (reference).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8901)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8900")
    parser.add_argument(
        "--no-uvloop", action="store_true", help="the default asyncio loop even with uvloop"
    )
    args = parser.parse_args()
    loop_factory = None if args.no_uvloop else uvloop_factory()
    loop_name = "uvloop" if loop_factory is not None else "asyncio"
    print(
        f"floor listening on http://{args.host}:{args.port} pid={os.getpid()} loop={loop_name}",
        flush=True,
    )
    loop = loop_factory() if loop_factory is not None else asyncio.new_event_loop()
    web.run_app(
        create_app(args.upstream),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop,
    )


def uvloop_factory():  # type: ignore[no-untyped-def]
    """`uvloop.new_event_loop` when uvloop is installed, else None."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
