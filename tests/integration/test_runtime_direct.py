"""`routing: direct` against the real broker and redis-server: one process per prefix holds
the lease, a second one waits as a standby and takes over, without losing or repeating what
the first left. (The flow semantics run in both routings in `test_runtime_flows.py`.)"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from observer.cli import build_service
from observer.flows.compiler import load_registry
from tests.integration.harness import Harness, make, now_ms, outcome_of

pytestmark = pytest.mark.timeout(120)

__all__ = ["make"]  # the fixture, with `routing` below


@pytest.fixture
def routing() -> str:
    return "direct"


def test_a_second_direct_process_waits_as_a_standby_and_takes_over(
    make: Callable[..., Harness],
) -> None:
    h = make(pay_window="2s")
    h.start()
    t = now_ms()
    h.send("Placed", "d1", t)  # paid and shipped while the first process runs
    h.send("Paid", "d1", t + 100)
    h.send("Shipped", "d1", t + 200)
    assert outcome_of(h, "d1")["outcome"] == "completed"
    h.send("Placed", "d2", t + 300)  # its payment deadline passes after the takeover
    h.wait_for(lambda: h.api("/instances/shop/d2").status_code == 200, message="d2 stored")

    standby = build_service(h.config(), load_registry([h.flow_file]), (str(h.flow_file),))
    standby.start()
    try:
        assert not standby.wait_started(3), (
            "a second direct process must not start beside the first"
        )
        ready = standby.runtime.health.report()
        assert ready["ready"] is False
        h.stop()  # releases the lease
        assert standby.wait_started(30), f"the standby did not take over: {standby.error!r}"
        h.wait_for(lambda: h.alerts("missing"), timeout=20, message="missing d2")
        h.send("Placed", "d3", now_ms())
        h.send("Paid", "d3", now_ms() + 100)
        h.send("Shipped", "d3", now_ms() + 200)
        assert outcome_of(h, "d3")["outcome"] == "completed"
        h.clock_passed(now_ms())  # d2's deadline does not fire twice across the takeover
        assert [a.key for a in h.alerts()] == [b"d2"]
        outcomes = [o.key for o in h.outcomes()]
        assert b"d1" in outcomes and b"d3" in outcomes and len(set(outcomes)) == len(outcomes)
    finally:
        standby.stop()
        assert standby.join(30)
    assert standby.error is None, standby.error
