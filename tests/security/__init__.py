"""Security tests against the real server: the client edge (paths, keys, headers, slow clients).

`raw_request` sends the exact bytes given: HTTP clients (httpx, the SDKs) normalise `./`, `..`
and encoded characters before sending, which would hide what these tests probe.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from yarl import URL

DEADLINE_S = 30.0  # only a hung call reaches it


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def raw_request(
    base_url: str, method: str, target: str | bytes, *,
    headers: dict[str, str] | list[tuple[bytes, bytes]] | None = None, body: bytes = b"",
) -> RawResponse:
    """One HTTP/1.1 request with `target` and the header bytes exactly as given."""
    url = URL(base_url)
    lines = [method.encode() + b" " + (target if isinstance(target, bytes) else target.encode())
             + b" HTTP/1.1", f"Host: {url.host}:{url.port}".encode(), b"Connection: close",
             f"Content-Length: {len(body)}".encode()]
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    for name, value in items:
        lines.append((name.encode() if isinstance(name, str) else name) + b": "
                     + (value.encode() if isinstance(value, str) else value))
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), DEADLINE_S)
    finally:
        writer.close()
    return _parse(data)


def _parse(data: bytes) -> RawResponse:
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body, rest = body + rest[:size], rest[size + 2:]
        rest = body
    return RawResponse(int(status_line.split(" ")[1]), parsed, rest)


def error_code(resp: RawResponse, api: str) -> str | None:
    """The error's code (OpenAI) or type (Anthropic), checking the envelope is the provider's."""
    body = resp.json()
    if api == "anthropic":
        assert body["type"] == "error", body
        return str(body["error"]["type"])
    assert set(body["error"]) >= {"message", "type", "code"}, body
    return body["error"]["code"]
