"""Windows learned from history: the rule (percentile times a margin, rounded up to a duration
people write), the next version of a flow file written by a round trip that keeps everything
else, and the back-test tally the proposals are made from (pure: records in memory)."""

from __future__ import annotations

import difflib
from pathlib import Path

import orjson
import pytest

from observer.backtest import Backtest, Period, compare, decision_time, percentile, warmup_ms
from observer.flows.compiler import compile_flow, load_registry
from observer.flows.loader import load_flow_text
from observer.ingest import SourceRecord
from observer.suggest import Rule, next_version_text, propose, round_up
from tests.unit.replay_harness import BASE_FLOW, T0

REPO = Path(__file__).resolve().parents[2]


def test_round_up_lands_on_durations_people_write() -> None:
    assert [round_up(x) for x in (1, 900, 1_001, 11_000, 31_000, 50_000, 61_000)] == [
        100, 1_000, 2_000, 15_000, 45_000, 60_000, 120_000,
    ]  # fmt: skip
    assert round_up(31 * 86_400_000 + 1) == 32 * 86_400_000


def test_percentiles_are_nearest_rank() -> None:
    values = list(range(1, 101))
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([7], 99) == 7 and percentile([], 50) is None


def test_each_step_gets_a_window_from_its_latencies_and_rare_steps_keep_theirs() -> None:
    (flow,) = load_registry([REPO / "tests/golden/spec-example.flow.yaml"])
    latencies = {"reserved": list(range(1_000, 9_001, 80)), "paid": [1_000] * 5}
    by_step = {p.step: p for p in propose(flow, latencies)}
    reserved = by_step["reserved"]  # p99 8 920 ms x 1.25 -> 15s; p90 8 200 x 1.25 -> 15s: below
    assert (reserved.samples, reserved.p99_ms, reserved.max_ms) == (101, 8_920, 9_000)
    assert (reserved.within_ms, reserved.new_within_ms, reserved.new_warn_ms) == (
        30_000,
        15_000,
        10_000,
    )
    assert reserved.changes
    paid = by_step["paid"]  # 5 samples: kept
    assert (paid.new_within_ms, paid.new_warn_ms, paid.changes) == (None, None, False)
    assert "placed" not in by_step  # the start step has no window
    assert propose(flow, latencies, Rule(min_samples=5))[1].new_within_ms == 2_000


def test_the_next_version_changes_only_the_version_and_the_windows() -> None:
    path = REPO / "flows/examples/accounts.yaml"  # two flows, a header comment, comments
    text = path.read_text()
    registry = load_registry([path])
    flow = registry.newest("password-reset")
    latencies = {s.name: [40_000] * 30 for s in flow.steps}
    proposals = propose(flow, latencies)
    new = next_version_text(text, flow, proposals, 2)
    changed = [
        line
        for line in difflib.unified_diff(text.splitlines(), new.splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and line[:3] not in ("+++", "---")
    ]
    assert changed[:2] == ["-version: 1", "+version: 2"]
    assert all(("within" in line or "warn" in line) for line in changed[2:]), changed
    assert new.splitlines()[:3] == text.splitlines()[:3]  # the header comment
    loaded, problems = load_flow_text(new, str(path))
    assert problems == []
    compiled = {lf.spec.flow: compile_flow(lf)[0] for lf in loaded}
    assert compiled["signup"] is not None and compiled["signup"].version == 1
    reset = compiled["password-reset"]
    assert reset is not None and reset.version == 2
    assert {s.within_ms for s in reset.steps if not s.is_start} == {60_000}


def _record(topic: str, etype: str, key: str, at: int) -> SourceRecord:
    return SourceRecord(
        topic, 0, at, key.encode(), orjson.dumps({"type": etype, "id": key}), {}, at
    )


def test_a_backtest_counts_what_started_in_the_period_and_compares_by_key() -> None:
    (loaded,), _ = load_flow_text(BASE_FLOW, "shop.yaml")
    flow, _ = compile_flow(loaded)
    assert flow is not None
    registry = load_registry([])
    registry.add(flow)
    since = T0 + 60_000
    period = Period(since, since + 120_000, T0)
    assert warmup_ms([flow]) == min(10_000 + 20_000 + 5_000 + 30_000, flow.expire_ms)
    bt = Backtest(registry, period)
    bt.feed(
        [
            _record("orders", "Placed", "warm", T0 + 55_000),  # before the period
            _record("orders", "Placed", "a", since + 1_000),
            _record("pay", "Paid", "a", since + 4_000),
            _record("orders", "Placed", "b", since + 2_000),
            _record("pay", "Paid", "b", since + 15_000),  # late (10s window)
        ]
    )
    bt.finish()
    tally = bt.tallies["shop"]
    assert (tally.instances, tally.warmup) == (2, 1)
    assert sorted(tally.latencies["paid"]) == [3_000, 13_000]
    kinds = {(k, s) for (k, s) in tally.deviations}
    assert ("late", "paid") in kinds and ("missing", "paid") in kinds
    assert ("b", "late") in {(k[1], k[2]) for k in bt.alerts}
    assert all(k[1] != "warm" for k in bt.alerts)
    live = [
        {"flow": "shop", "key": "b", "kind": "late", "step": "paid", "observed_at": since + 15_000},
        {
            "flow": "shop",
            "key": "warm",
            "kind": "missing",
            "step": "paid",
            "deadline": since + 5_000,
        },
        {"flow": "shop", "key": "z", "kind": "error", "step": None, "observed_at": since + 1},
        {"flow": "other", "key": "z", "kind": "error", "step": None, "observed_at": since + 1},
        {"flow": "shop", "key": "y", "kind": "error", "step": None, "observed_at": T0},  # before
    ]
    c = compare(bt, live, "alerts")
    assert c.live_alerts == 2 and c.same == 1
    assert set(c.live_only) == {("shop", "z", "error", None)}
    assert ("shop", "b", "late", "paid") not in c.backtest_only


@pytest.mark.parametrize(
    ("alert", "expected"),
    [
        ({"kind": "missing", "deadline": "2026-01-01T00:00:10Z", "observed_at": None}, T0 + 10_000),
        (
            {"kind": "late", "deadline": "2026-01-01T00:00:10Z", "observed_at": T0 + 12_000},
            T0 + 12_000,
        ),
        ({"kind": "error", "detected_at": "2026-01-01T00:00:01Z"}, T0 + 1_000),
        ({"kind": "error"}, None),
    ],
)
def test_an_alert_happened_at_its_deadline_or_at_its_event(
    alert: dict[str, object], expected: int | None
) -> None:
    assert decision_time(alert) == expected
