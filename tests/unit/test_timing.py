"""`proxy.Timing`: the proxy's own time is the time since arrival less the upstream's."""

from __future__ import annotations

import pytest

from budget_proxy import proxy
from budget_proxy.proxy import Timing


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(proxy.time, "perf_counter", fake)
    return fake


def test_a_refusal_is_all_overhead(clock: Clock) -> None:
    timing = Timing(clock(), [])
    clock.now += 0.003
    assert timing.overhead_s(clock()) == pytest.approx(0.003)


def test_the_upstream_time_is_not_overhead(clock: Clock) -> None:
    timing = Timing(clock(), [])
    clock.now += 0.002  # read, plan, reserve
    timing.wait()
    clock.now += 1.5  # the upstream answers
    assert timing.overhead_s(clock()) == pytest.approx(0.002)  # still waiting
    timing.resume()
    timing.resume()  # a second resume adds nothing
    clock.now += 0.001  # tap the usage, build the headers
    assert timing.overhead_s(clock()) == pytest.approx(0.003)


def test_waits_add_up(clock: Clock) -> None:
    timing = Timing(clock(), [])
    for _ in range(3):
        clock.now += 0.001
        timing.wait()
        clock.now += 0.5
        timing.resume()
    assert timing.overhead_s(clock()) == pytest.approx(0.003)
