"""The client edge's pure decisions: canonical paths, providers, route classes, upstream URLs
and header checks, as tables."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from budget_proxy.config import ProviderConfig
from budget_proxy.routing import (
    RouteClass,
    api_for_path,
    classify,
    endpoint_kind,
    header_problem,
    path_problem,
    path_shape,
    resolve,
    upstream_url,
)

PROVIDERS = {
    "openai": ProviderConfig(name="openai", base_url="https://api.openai.com/v1"),
    "anthropic": ProviderConfig(name="anthropic", base_url="https://api.anthropic.com",
                                api="anthropic"),
    "corp": ProviderConfig(name="corp", base_url="http://gw.internal:8080/openai/v1/"),
    "gem": ProviderConfig(name="gem", base_url="https://generativelanguage.googleapis.com",
                          api="gemini"),
}


@pytest.mark.parametrize(
    ("raw_path", "problem"),
    [
        ("/v1/chat/completions", None),
        ("/anthropic/v1/messages", None),
        ("/v1/files/file-abc_1~x", None),
        ("/gem/v1beta/models/gemini-2.5-pro:generateContent", None),
        ("/v1/models/caf%C3%A9", None),  # escapes other than the forbidden ones pass
        ("/v1/a;b=c/d@e", None),
        ("/v1/chat/./completions", "'.' or '..' segment"),
        ("/v1/chat/x/../completions", "'.' or '..' segment"),
        ("/v1/../../admin/x", "'.' or '..' segment"),
        ("/v1/chat/completions/.", "'.' or '..' segment"),
        ("/v1/chat/completions/..", "'.' or '..' segment"),
        ("/v1//chat/completions", "empty segment"),
        ("/v1/chat/completions/", "empty segment"),
        ("/v1/chat%2Fcompletions", "percent-encoded '%2F'"),
        ("/v1/chat%2fcompletions", "percent-encoded '%2f'"),
        ("/v1/chat%5Ccompletions", "percent-encoded '%5C'"),
        ("/v1/chat%5ccompletions", "percent-encoded '%5c'"),
        ("/v1/%2e%2e/admin", "percent-encoded '%2e'"),
        ("/v1/%2E/chat/completions", "percent-encoded '%2E'"),
        ("/v1/chat%252fcompletions", "percent-encoded '%25'"),  # double-decoding upstreams
        ("/v1/chat%00/completions", "percent-encoded '%00'"),
        ("/v1/chat%0a/completions", "percent-encoded '%0a'"),
        ("/v1/chat%7F/completions", "percent-encoded '%7F'"),
        ("/v1/chat\\completions", "not allowed: '\\\\'"),
        ("/v1/chat\\..\\completions", "not allowed"),
        ("/v1/chat completions", "not allowed: ' '"),
        ("/v1/chat\x00completions", "not allowed: '\\x00'"),
        ("/v1/chat\ncompletions", "not allowed: '\\n'"),
        ("/v1/caf\u00e9", "not allowed: '\\xe9'"),
        ("/v1/x\udcff", "not allowed: '\\udcff'"),
        ("/v1/x%zz", "malformed percent-escape"),
        ("/v1/x%4", "malformed percent-escape"),
        ("v1/chat/completions", "must start with '/'"),
        ("", "must start with '/'"),
        ("/", "empty segment"),
    ],
)
def test_path_problem(raw_path, problem):
    found = path_problem(raw_path)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_path_problem_of_a_huge_path_is_decided():
    assert path_problem("/v1" + "/a" * 100_000) is None
    assert path_problem("/v1" + "/a" * 100_000 + "/..") is not None
    assert path_problem("/v1/" + "%41" * 100_000) is None


@pytest.mark.parametrize(
    ("raw_path", "provider", "rest"),
    [
        ("/v1/chat/completions", "openai", "chat/completions"),
        ("/openai/v1/chat/completions", "openai", "chat/completions"),
        ("/openai/chat/completions", "openai", "chat/completions"),
        ("/anthropic/v1/messages", "anthropic", "v1/messages"),
        ("/corp/v1/embeddings", "corp", "embeddings"),
        ("/gem/v1beta/models/g:generateContent", "gem", "v1beta/models/g:generateContent"),
        ("/V1/chat/completions", None, None),
        ("/%761/chat/completions", None, None),  # the prefix is matched as sent
        ("/nobody/v1/chat/completions", None, None),
        ("/api/usage", None, None),
    ],
)
def test_resolve(raw_path, provider, rest):
    resolved = resolve(PROVIDERS, raw_path)
    if provider is None:
        assert resolved is None
        assert api_for_path(PROVIDERS, raw_path) is None
    else:
        assert resolved is not None
        assert (resolved[0].name, resolved[1]) == (provider, rest)
        assert api_for_path(PROVIDERS, raw_path) == resolved[0].api


@pytest.mark.parametrize(
    ("api", "path", "kind"),
    [
        ("openai", "chat/completions", "chat.completions"),
        ("openai", "responses", "responses"),
        ("openai", "completions", "completions"),
        ("openai", "embeddings", "embeddings"),
        ("openai", "models", None),
        ("openai", "Chat/Completions", None),
        ("openai", "chat/completions;x", None),
        ("openai", "chat/complet%69ons", None),
        ("anthropic", "v1/messages", "messages"),
        ("anthropic", "v1/Messages", None),
        ("anthropic", "v1/messages/count_tokens", None),
        ("gemini", "v1beta/models/gemini-2.5-pro:generateContent", "gemini"),
        ("gemini", "v1beta/models/gemini-2.5-pro:streamGenerateContent", "gemini"),
        ("gemini", "v1beta/models/gemini%2D2.5-pro:generateContent", None),
        ("gemini", "v1beta/models/gemini-2.5-pro:countTokens", None),
    ],
)
def test_endpoint_kinds(api, path, kind):
    assert endpoint_kind(api, path) == kind


M, F, R = RouteClass.METERED, RouteClass.FREE, RouteClass.REFUSED


@pytest.mark.parametrize(
    ("api", "method", "path", "websocket", "route_class", "reason"),
    [
        ("openai", "POST", "chat/completions", False, M, ""),
        ("openai", "POST", "embeddings", False, M, ""),
        ("openai", "GET", "models", False, F, ""),
        ("openai", "HEAD", "models", False, F, ""),
        ("openai", "GET", "chat/completions", False, F, ""),  # stored completions: a read
        ("openai", "DELETE", "files/file-1", False, F, ""),
        ("openai", "POST", "moderations", False, F, ""),
        ("openai", "POST", "files", False, F, ""),
        ("openai", "POST", "uploads", False, F, ""),
        ("openai", "POST", "uploads/upload_1/parts", False, F, ""),
        ("openai", "POST", "uploads/upload_1/complete", False, F, ""),
        ("openai", "POST", "uploads/upload_1/parts/x", False, R, "not metered"),
        ("openai", "POST", "responses/input_tokens", False, F, ""),
        ("openai", "POST", "responses/resp_1/cancel", False, F, ""),
        ("openai", "POST", "files/file-1/content", False, R, "endpoint is not metered"),
        ("openai", "POST", "batches", False, R, "batch"),
        ("openai", "POST", "batches/batch_1/cancel", False, R, "batch"),
        ("openai", "GET", "batches", False, F, ""),
        ("openai", "POST", "realtime/sessions", False, R, "realtime"),
        ("openai", "GET", "realtime", True, R, "WebSocket"),
        ("openai", "GET", "models", True, R, "WebSocket"),
        ("openai", "POST", "Chat/Completions", False, R, "endpoint is not metered"),
        ("openai", "POST", "images/generations", False, M, ""),
        ("openai", "POST", "audio/transcriptions", False, M, ""),
        ("openai", "POST", "images/generations/x", False, R, "endpoint is not metered"),
        ("openai", "POST", "fine_tuning/jobs", False, R, "endpoint is not metered"),
        ("openai", "PUT", "chat/completions", False, R, "method PUT"),
        ("openai", "PATCH", "files/file-1", False, R, "method PATCH"),
        ("openai", "OPTIONS", "models", False, R, "method OPTIONS"),
        ("openai", "post", "chat/completions", False, R, "method post"),
        ("anthropic", "POST", "v1/messages", False, M, ""),
        ("anthropic", "POST", "v1/messages/count_tokens", False, F, ""),
        ("anthropic", "POST", "v1/messages/batches", False, R, "batch"),
        ("anthropic", "POST", "v1/messages/batches/b_1/cancel", False, R, "batch"),
        ("anthropic", "POST", "v1/complete", False, R, "endpoint is not metered"),
        ("anthropic", "POST", "v1/moderations", False, R, "endpoint is not metered"),
        ("gemini", "POST", "v1beta/models/g:generateContent", False, M, ""),
        ("gemini", "POST", "v1beta/models/g:countTokens", False, F, ""),
        ("gemini", "POST", "v1beta/models/g:batchGenerateContent", False, R, "batch"),
        ("gemini", "POST", "v1beta/models/g:embedContent", False, R, "endpoint is not metered"),
        ("gemini", "POST", "v1beta/models/g%3A:countTokens", False, R, "endpoint is not metered"),
    ],
)
def test_classify(api, method, path, websocket, route_class, reason):
    found = classify(api, method, path, websocket=websocket)
    assert found.route_class is route_class
    assert reason in found.reason
    assert (found.endpoint is not None) == (route_class is M)


@pytest.mark.parametrize(
    ("base_url", "rest", "query", "url"),
    [
        ("https://api.openai.com/v1", "chat/completions", "",
         "https://api.openai.com/v1/chat/completions"),
        ("https://api.openai.com/v1/", "models", "limit=2",
         "https://api.openai.com/v1/models?limit=2"),
        ("https://api.anthropic.com", "v1/messages", "beta=true",
         "https://api.anthropic.com/v1/messages?beta=true"),
        ("http://gw.internal:8080/openai/v1", "files/file%2Dx", "",
         "http://gw.internal:8080/openai/v1/files/file%2Dx"),
        ("http://gw.internal:8080/openai/v1", "models", "a=%2F&b=c%26d",
         "http://gw.internal:8080/openai/v1/models?a=%2F&b=c%26d"),
        # a decoded query: what cannot appear raw is escaped, never read as a fragment
        ("http://h/v1", "models", "a=#b c", "http://h/v1/models?a=%23b%20c"),
        ("http://h", "", "", "http://h/"),
    ],
)
def test_upstream_url(base_url, rest, query, url):
    built = upstream_url(base_url, rest, query)
    assert str(built) == url
    base_path = base_url.split("//", 1)[1].partition("/")[2].rstrip("/")
    assert built.raw_path.startswith(f"/{base_path}")


@pytest.mark.parametrize("rest", ["../admin", "a/./b", "a//b", "a%2Fb", "a/", "a\\b", "%2e%2e"])
def test_upstream_url_refuses_a_path_that_could_leave_the_base(rest):
    with pytest.raises(ValueError, match="not a canonical path"):
        upstream_url("http://h/openai/v1", rest)


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("models", "models"),
        ("files/file-abc123/content", "files/{id}/content"),
        ("batches/batch_xyz", "batches/batch_xyz"),
        ("uploads/" + "u" * 40 + "/parts", "uploads/{id}/parts"),
        ("models/caf%C3%A9", "models/{id}"),
    ],
)
def test_path_shape(path, shape):
    assert path_shape(path) == shape


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"Content-Type": "application/json"}, None),
        ({"X-Budget-Component": "caf\u00e9-worker"}, None),  # printable UTF-8 is fine
        ({"User-Agent": "caf\u00e9"}, None),
        ({"X-Budget-Component": ""}, None),  # empty counts as absent
        ({"X-Budget-Task": "t" * 256}, None),
        ({"X-Budget-Component": "a\udcffb"}, ("X-Budget-Component", "not valid UTF-8")),
        ({"User-Agent": "x\udcc3"}, ("User-Agent", "not valid UTF-8")),
        ({"X-Budget-Session": "s" * 257}, ("X-Budget-Session", "longer than 256")),
        ({"X-Budget-Task": "t" * 1_000_000}, ("X-Budget-Task", "longer than 256")),
        ({"X-Budget-Task-Type": "a\tb"}, ("X-Budget-Task-Type", "non-printable")),
        ({"X-Budget-Context": "a\x7fb"}, ("X-Budget-Context", "non-printable")),
        ({"X-Budget-Allocation": "a\u200bb"}, ("X-Budget-Allocation", "non-printable")),
        ({"X-Budget-Component": "a\nforged log line"}, ("X-Budget-Component", "non-printable")),
    ],
)
def test_header_problem(headers, problem):
    found = header_problem(CIMultiDict(headers))
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found[0] == problem[0] and problem[1] in found[1]


def test_attribution_headers_are_matched_in_any_case():
    assert header_problem(CIMultiDict({"x-budget-component": "x" * 300})) == (
        "X-Budget-Component", "is longer than 256 characters")
