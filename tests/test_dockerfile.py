"""The Dockerfile without a Docker engine: its own steps, run for real.

The test reads the Dockerfile, builds its context the way `docker build` would (the working
tree filtered by `.dockerignore`), copies what the build stage's COPY lines copy, runs the
build stage's RUN (`pip wheel`) in a fresh virtual environment, runs the runtime stage's
`pip install` from those wheels offline in another fresh virtual environment, then starts
`budget-proxy serve` from it with the image's ENV, checks the HEALTHCHECK command passes and
that a metered call is counted and priced (the tiktoken files and the price catalog are in
the package). What it cannot check without an engine: the base image, `useradd`, and file
ownership; those lines are checked for their content instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import venv
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from budget_proxy.config import ConfigError, Settings
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

pytestmark = pytest.mark.slow


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages with their instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n\s*", " ", text)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        if keyword == "FROM":
            for name, value in args.items():
                rest = rest.replace(f"${{{name}}}", value)
            base, _, alias = rest.partition(" AS ")
            stages.append(Stage(alias.strip() or None, base.strip()))
            continue
        stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def dockerignore_included(root: Path, patterns: list[str]) -> list[Path]:
    """Files of `root` that `.dockerignore` lets into the build context (last match wins; a
    pattern matching a directory matches everything under it)."""
    rules = []
    for pattern in patterns:
        pattern = pattern.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*", "\0").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace("\0/", "(?:.*/)?").replace("\0", ".*")
        rules.append((re.compile(regex + "$"), negate))
    included = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or ".git" in path.relative_to(root).parts[:1]:
            continue
        rel = path.relative_to(root).as_posix()
        prefixes = [rel.rsplit("/", i)[0] for i in range(rel.count("/"), -1, -1)]
        excluded = False
        for regex, negate in rules:
            if any(regex.match(prefix) for prefix in prefixes):
                excluded = not negate
        if not excluded:
            included.append(path)
    return included


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for item in shlex.split(args):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def make_venv(path: Path) -> Path:
    """A fresh virtual environment (no system site-packages); its bin directory."""
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin"


def run_step(command: str, bin_dir: Path, cwd: Path, paths: dict[str, Path]) -> None:
    """A RUN line with the image's absolute paths mapped into the temporary directory and the
    venv first on PATH. `--no-cache-dir` is dropped so pip's cache can speed up reruns."""
    for image_path, local in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        command = re.sub(rf"(?<![\w/]){re.escape(image_path)}(?![\w])", str(local), command)
    command = command.replace(" --no-cache-dir", "")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", "-ec", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_dockerfile_shape():
    build, runtime = parse_dockerfile(DOCKERFILE.read_text())
    assert build.name == "build"
    assert re.fullmatch(r"python:3\.\d+-slim", runtime.base), runtime.base
    env = env_of(runtime)
    assert env["BUDGET_HOST"] == "0.0.0.0" and env["BUDGET_PORT"] == "8013"
    assert runtime.all("EXPOSE") == ["8013"]
    (volume,) = runtime.all("VOLUME")
    assert json.loads(volume) == [env["BUDGET_DATA_DIR"]]
    (user,) = runtime.all("USER")
    uid = user.split(":")[0]
    assert uid not in ("0", "root")
    assert any(f"--uid {uid}" in run for run in runtime.all("RUN"))  # the user exists
    (check,) = runtime.all("HEALTHCHECK")
    assert "/health" in check and "CMD" in check
    assert json.loads(runtime.all("ENTRYPOINT")[0]) == ["budget-proxy"]
    assert json.loads(runtime.all("CMD")[0]) == ["serve"]


def test_the_image_needs_an_admin_token():
    """The image binds 0.0.0.0: without BUDGET_ADMIN_TOKEN its settings refuse to serve, and
    the Dockerfile's own usage line passes the token."""
    text = DOCKERFILE.read_text()
    _, runtime = parse_dockerfile(text)
    env = env_of(runtime)
    with pytest.raises(ConfigError, match="BUDGET_ADMIN_TOKEN"):
        Settings(**{k.removeprefix("BUDGET_").lower(): v for k, v in env.items()
                    if k.startswith("BUDGET_")}).check_serving()
    Settings(host=env["BUDGET_HOST"], admin_token="t").check_serving()
    usage = re.sub(r"\\\n#\s*", " ", text)
    assert re.search(r"docker run .*-e BUDGET_ADMIN_TOKEN", usage)
    assert "BUDGET_ALLOW_OPEN_ADMIN" in text


def test_dockerignore_keeps_the_context_small():
    files = {p.relative_to(ROOT).as_posix()
             for p in dockerignore_included(ROOT, DOCKERIGNORE.read_text().splitlines())}
    assert "pyproject.toml" in files and "budget_proxy/app.py" in files
    assert "pricing/catalog.json" in files
    assert any(f.startswith("budget_proxy/data/tiktoken/") for f in files)
    assert not any(f.startswith(("tests/", "charts/", "benchmarks/", ".git/")) for f in files)
    assert not any("__pycache__" in f for f in files)


async def test_image_steps_install_and_serve(tmp_path, fake):
    build, runtime = parse_dockerfile(DOCKERFILE.read_text())
    # the build context, as docker would send it
    context = tmp_path / "context"
    for path in dockerignore_included(ROOT, DOCKERIGNORE.read_text().splitlines()):
        target = context / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)

    # build stage: WORKDIR, COPY from the context, RUN in a fresh venv
    (workdir,) = build.all("WORKDIR")
    src, wheels = tmp_path / "src", tmp_path / "wheels"
    paths = {workdir: src, "/wheels": wheels}
    src.mkdir()
    for args in build.all("COPY"):
        *sources, dest = shlex.split(args)
        dest_path = src / dest if not dest.startswith("/") else paths[dest]
        for source in sources:
            origin = context / source
            assert origin.exists(), f"COPY {source}: not in the build context"
            if origin.is_dir():
                shutil.copytree(origin, dest_path if len(sources) == 1 and not
                                dest.endswith("/") else dest_path / source)
            else:
                dest_path.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, dest_path / Path(source).name)
    build_bin = await asyncio.to_thread(make_venv, tmp_path / "build-venv")
    for command in build.all("RUN"):
        await asyncio.to_thread(run_step, command, build_bin, src, paths)
    assert any(p.name.startswith("budget_proxy-") for p in wheels.glob("*.whl"))

    # runtime stage: its pip RUN in another fresh venv (the user-creation RUN needs root)
    runtime_bin = await asyncio.to_thread(make_venv, tmp_path / "image-venv")
    copies = runtime.all("COPY")
    assert copies == ["--from=build /wheels /wheels"]
    for command in runtime.all("RUN"):
        if "useradd" in command:
            continue
        await asyncio.to_thread(run_step, command, runtime_bin, tmp_path, paths)
    site = next((tmp_path / "image-venv" / "lib").glob("python*/site-packages"))
    package = site / "budget_proxy"
    assert sorted(p.name for p in (package / "data" / "tiktoken").iterdir()) == [
        "cl100k_base.tiktoken.gz", "o200k_base.tiktoken.gz"]
    assert (package / "_pricing" / "catalog.json").is_file()

    # run it: the image's ENV and CMD, on loopback, with a fake upstream
    port = free_port()
    data_dir = tmp_path / "volume"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BUDGET_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(env_of(runtime))
    env.update({"BUDGET_HOST": "127.0.0.1", "BUDGET_PORT": str(port),
                "BUDGET_DATA_DIR": str(data_dir), "TIKTOKEN_CACHE_DIR": str(tmp_path / "none"),
                "BUDGET_OPENAI_BASE_URL": f"{fake.url}/v1", "OPENAI_API_KEY": "sk-test",
                "PATH": f"{runtime_bin}{os.pathsep}{env.get('PATH', '')}"})
    entrypoint = json.loads(runtime.all("ENTRYPOINT")[0]) + json.loads(runtime.all("CMD")[0])
    process = await asyncio.to_thread(
        subprocess.Popen, [str(runtime_bin / entrypoint[0]), *entrypoint[1:]], cwd=tmp_path,
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(timeout=5) as client:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, process.stderr.read().decode()[-3000:]
                try:
                    if (await client.get(f"{url}/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "no /health within 60 s"
                await asyncio.sleep(0.2)
            # the HEALTHCHECK command itself, with the image's python
            (check,) = runtime.all("HEALTHCHECK")
            argv = json.loads(check.split("CMD", 1)[1])
            argv[0] = str(runtime_bin / argv[0])
            done = await asyncio.to_thread(subprocess.run, argv, env=env, timeout=30)
            assert done.returncode == 0
            fake.prompt_tokens, fake.completion_tokens = 100, 20
            reply = await client.post(f"{url}/v1/chat/completions", json={
                "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]})
            assert reply.status_code == 200, reply.text
            records = (await client.get(f"{url}/api/usage/records")).json()
            assert records[0]["input_tokens"] == 100
            assert records[0]["total_cost"] == pytest.approx(100 * 0.15e-6 + 20 * 0.6e-6)
        assert data_dir.is_dir() and any(data_dir.iterdir())  # the store is in the volume
    finally:
        process.terminate()
        process.wait(timeout=20)
