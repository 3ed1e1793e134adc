"""Pure decisions of the tools, MCP and chat modules, table-tested."""

from __future__ import annotations

import pytest

from budget_proxy.config import Settings
from budget_proxy.mcp.server import allowed_hosts, security_settings
from budget_proxy.tools import TOOLS, allowed, tools_for
from budget_proxy.tools.chat import topic_of


@pytest.mark.parametrize(("message", "topic"), [
    ("Which model should I use to summarise tickets?", "recommend"),
    ("How can I spend less?", "optimize"),
    ("Any savings?", "optimize"),
    ("How is my spend going?", "analyze"),
    ("", "analyze"),
])
def test_topic_of(message, topic):
    assert topic_of(message) == topic


@pytest.mark.parametrize(("role", "writes"), [("admin", True), ("viewer", False),
                                              ("none", False)])
def test_only_admin_gets_the_tools_that_change_budgets(role, writes):
    names = {t.name for t in tools_for(role)}
    assert ("set_limit" in names) is writes and "budget_status" in names
    assert allowed(TOOLS["create_allocation"], role) is writes


@pytest.mark.parametrize(("host", "present", "absent"), [
    ("127.0.0.1", {"127.0.0.1", "localhost", "[::1]"}, {"0.0.0.0"}),
    ("10.1.2.3", {"10.1.2.3", "localhost"}, set()),
    ("0.0.0.0", {"localhost"}, {"0.0.0.0"}),
    ("fd00::1", {"[fd00::1]"}, {"fd00::1"}),
])
def test_allowed_hosts(host, present, absent):
    names = set(allowed_hosts(Settings(host=host, admin_token="t")))
    assert present <= names and not absent & names


def test_dns_rebinding_protection_is_always_on():
    sec = security_settings(Settings())
    assert sec.enable_dns_rebinding_protection
    assert "localhost:*" in sec.allowed_hosts and "evil.example:*" not in sec.allowed_hosts
