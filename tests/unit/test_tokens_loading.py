"""Rank tables load when a model first needs one, off the event loop, and only that one.

Each check runs in a fresh interpreter: the other token tests load every table."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_fresh(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_started_proxy_holds_no_table() -> None:
    out = run_fresh("""
        import asyncio, tempfile
        from aiohttp.test_utils import TestClient, TestServer
        from budget_proxy import tokens
        from budget_proxy.app import create_app
        from budget_proxy.config import Settings

        async def main():
            app = create_app(Settings(data_dir=tempfile.mkdtemp()))
            async with TestClient(TestServer(app)) as client:
                assert (await client.get("/health")).status == 200
                print(sorted(tokens._ENCODINGS))

        asyncio.run(main())
    """)
    assert out == "[]"


def test_no_table_is_loaded_until_a_model_needs_one_and_then_only_its_own() -> None:
    out = run_fresh("""
        import asyncio, threading
        from budget_proxy import tokens
        loaded_in = []
        real = tokens._load_encoding
        def spy(name):
            loaded_in.append(threading.current_thread() is threading.main_thread())
            return real(name)
        tokens._load_encoding = spy
        asyncio.run(tokens.load_for("gpt-4o-mini"))
        assert sorted(tokens._ENCODINGS) == ["o200k_base"], sorted(tokens._ENCODINGS)
        asyncio.run(tokens.load_for("claude-3-5-haiku-latest"))  # counted with o200k too
        assert sorted(tokens._ENCODINGS) == ["o200k_base"]
        asyncio.run(tokens.load_for("gpt-4"))
        assert sorted(tokens._ENCODINGS) == ["cl100k_base", "o200k_base"]
        assert loaded_in == [False, False], loaded_in  # each once, never on the loop's thread
        print(tokens.count_text("hello world", "gpt-4o"), tokens.count_text("hello world", "gpt-4"))
    """)
    assert out == "2 2"


def test_the_first_call_of_a_model_loads_its_table_off_the_loop() -> None:
    out = run_fresh("""
        import asyncio, threading
        from budget_proxy import tokens
        loaded_in = []
        real = tokens._load_encoding
        def spy(name):
            loaded_in.append(threading.current_thread() is threading.main_thread())
            return real(name)
        tokens._load_encoding = spy
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        n = asyncio.run(tokens.count_request_input_async("chat.completions", body, 80))
        assert n > 0 and loaded_in == [False], loaded_in
        print(sorted(tokens._ENCODINGS))
    """)
    assert out == "['o200k_base']"
