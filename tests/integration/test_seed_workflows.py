"""The seed user guide's "Common Workflows", run as written against a live server.

The section is copied below verbatim (and checked against the seed document when
`../shared/seeds` is beside the repository). Each shell command runs as a subprocess exactly
as written, with two substitutions the design makes: `python -m budget.cli.main` is the
`budget` command, and `http://localhost:8013` is the live server's address. The CLI finds
the server and the admin token through `BUDGET_URL` / `BUDGET_ADMIN_TOKEN`, as in a shell.
"""

from __future__ import annotations

import importlib.util
import json
import re
import textwrap

import pytest

from tests.cli.conftest import REPO, budget_command, run
from tests.cli.conftest import live as live  # the live stack fixture, re-exported

SEED = REPO.parent / "shared" / "seeds" / "002_277784f0b5fcb826.txt"
SEED_PROGRAM = "python -m budget.cli.main"
HAVE_PRICE_COMMANDS = importlib.util.find_spec("budget_proxy.cli.prices") is not None
# the guide's curl calls send no token: reads are open when only an admin token is set
LIVE_ENV = {"BUDGET_VIEWER_TOKEN": None}

COMMON_WORKFLOWS = """## Common Workflows

### Setting Up a New Budget

1. Create a budget:
   ```bash
   python -m budget.cli.main set_limit daily 20.0 --policy-type warn
   ```

2. Add more specific policies:
   ```bash
   python -m budget.cli.main set_limit daily 10.0 --provider openai --policy-type hard_limit
   python -m budget.cli.main set_limit daily 5.0 --component codex --policy-type warn
   ```

3. Check the budget status:
   ```bash
   python -m budget.cli.main status
   ```

### Monitoring Usage

1. Check daily usage:
   ```bash
   python -m budget.cli.main get_usage daily
   ```

2. Get a budget analysis:
   ```bash
   curl -X POST http://localhost:8013/api/assistant/analyze \\
     -H "Content-Type: application/json" \\
     -d '{"period": "daily", "days": 7}'
   ```

3. View active allocations:
   ```bash
   python -m budget.cli.main allocate list
   ```

### Optimizing Costs

1. Get optimization recommendations:
   ```bash
   curl -X POST http://localhost:8013/api/assistant/optimize \\
     -H "Content-Type: application/json" \\
     -d '{"period": "weekly", "days": 30}'
   ```

2. Update model prices:
   ```bash
   python -m budget.cli.main prices update
   ```

3. Get model recommendations for a specific task:
   ```bash
   python -m budget.cli.main recommend --task-type text_generation --max-cost 5.0
   ```

"""


def commands(section: str) -> list[str]:
    """The shell commands of the section's ```bash blocks, continuation lines joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        text = textwrap.dedent(block).replace("\\\n", " ")
        out += [line.strip() for line in text.splitlines() if line.strip()]
    return out


STEPS = commands(COMMON_WORKFLOWS)


def test_the_section_is_the_seed_documents():
    if not SEED.exists():
        pytest.skip(f"{SEED} not beside the repository")
    text = SEED.read_text()
    section = text[text.index("## Common Workflows"):text.index("## Troubleshooting")]
    assert section == COMMON_WORKFLOWS
    assert len(STEPS) == 10


def as_written(command: str, url: str) -> str:
    program = " ".join(budget_command())
    return command.replace(SEED_PROGRAM, program).replace("http://localhost:8013", url)


def test_common_workflows_as_written(live):
    results: dict[str, str] = {}

    def step(index: int) -> str:
        command = STEPS[index]
        if not HAVE_PRICE_COMMANDS and (" prices " in command or " recommend " in command):
            return ""
        result = run(live, shell=as_written(command, live.url))
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        results[command] = result.stdout
        return result.stdout

    # Setting Up a New Budget
    for index in range(3):
        assert step(index).startswith("created policy pol_")
    status = step(3)
    assert "warn" in status and "hard_limit" in status
    assert "provider=openai" in status and "component=codex" in status

    # some traffic and an allocation, so the monitoring steps have something to show
    for component in ("codex", "writer"):
        assert live.chat(model="gpt-4o", **{"X-Budget-Component": component}).status_code == 200
    live.api("POST", "/api/allocations", json={
        "context_id": "task-123", "component": "rhetor", "tokens_allocated": 10000,
        "tier": "remote_heavyweight"}).raise_for_status()

    # Monitoring Usage
    usage = step(4)
    assert "daily usage since" in usage and "TOTAL" in usage
    total = next(line for line in usage.splitlines() if line.startswith("TOTAL"))
    assert total.split()[1:5] == ["2", "100", "200", "300"]  # requests, in, out, total
    analysis = json.loads(step(5))
    assert analysis["engine"] == "deterministic" and analysis["llm_used"] is False
    assert analysis["totals"]["requests"] == 2
    allocations = step(6)
    assert "task-123" in allocations and "rhetor" in allocations and "10000" in allocations

    # Optimizing Costs
    optimization = json.loads(step(7))
    assert optimization["llm_used"] is False
    assert any(r["kind"] == "cheaper_model" and r["model"] == "gpt-4o"
               for r in optimization["recommendations"])
    step(8)
    step(9)
    assert len(results) == (10 if HAVE_PRICE_COMMANDS else 8)


@pytest.mark.parametrize("command", STEPS)
def test_every_step_is_one_of_the_commands_the_cli_knows(command: str):
    if command.startswith("curl"):
        assert "/api/assistant/" in command
        return
    args = command.removeprefix(SEED_PROGRAM).split()
    from click.testing import CliRunner

    from budget_proxy.cli import main

    if args[0] in ("prices", "recommend") and not HAVE_PRICE_COMMANDS:
        pytest.skip("price commands not installed")
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
