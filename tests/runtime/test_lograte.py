"""The per-connection and per-flow log lines have a budget: a storm writes a summary, not a line each."""

from __future__ import annotations

import logging

import pytest

from runtime.lograte import LineBudget


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_beyond_the_budget_are_counted_and_summed_up_once_the_second_is_over(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    budget = LineBudget(logging.getLogger("test.flows"), "connection and flow", per_second=200, clock=clock)
    caplog.set_level(logging.INFO, "test.flows")
    allowed = [budget.allow("removed" if i % 2 else "hw_removed") for i in range(250)]
    assert allowed.count(True) == 200 and allowed[:200] == [True] * 200
    budget.flush()
    assert caplog.records == [], "no summary before the second is over"
    clock.now += 1.0
    budget.flush()
    [rec] = caplog.records
    assert rec.getMessage() == ("connection and flow log lines suppressed: 50 in the last second (over 200 a second)"
                                ": hw_removed 25, removed 25")
    assert budget.suppressed_total == 50
    assert budget.allow("removed"), "a new second, a new budget"
    clock.now += 5.0
    caplog.clear()
    budget.flush()
    assert caplog.records == [], "nothing suppressed, nothing said"


def test_the_summary_comes_with_the_next_line_when_no_tick_flushed(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    budget = LineBudget(logging.getLogger("test.flows2"), "flow", per_second=1, clock=clock)
    caplog.set_level(logging.INFO, "test.flows2")
    assert budget.allow("offload") and not budget.allow("offload")
    clock.now += 2.0
    assert budget.allow("offload")
    assert [r.getMessage() for r in caplog.records] == [
        "flow log lines suppressed: 1 in the last second (over 1 a second): offload 1"]
