"""`slo:` in the flow language: validated with file:line, and judged once per instance by the
engine (good: completed within `within`; bad: ended otherwise, or still open when `within`
passed, counted then), exported as `observer_slo_events_total`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from observer.engine.codec import decode_slot, encode_slot
from observer.engine.core import Engine
from observer.engine.effects import Effect, Signal
from observer.engine.state import Event, KeySlot
from observer.flows.compiler import load_registry
from observer.flows.registry import FlowRegistry
from observer.metrics import Metrics
from observer.replay import Replayer, parse_events
from tests.unit.replay_harness import BASE_FLOW, T0, TOPIC_OF
from tests.unit.test_flow_validation import line_of, problems

# event time from the value: a record may be read before or after its event time
SLO_FLOW = BASE_FLOW.replace("id: header.eid}", "id: header.eid, time: value.at}").replace(
    "buffer: 30s", "slo: {objective: 99.5%, within: 15s, window: 28d}\nbuffer: 30s"
)


def registry_of(text: str) -> FlowRegistry:
    with tempfile.TemporaryDirectory() as d:
        Path(d, "flow.yaml").write_text(text)
        return load_registry([Path(d, "flow.yaml")])


def rec(etype: str, key: str, at_s: float, read_s: float | None = None) -> dict[str, Any]:
    """A record of `etype` with event time T0 + at_s, read at T0 + read_s (default: at_s)."""
    read = at_s if read_s is None else read_s
    return {
        "topic": TOPIC_OF[etype],
        "key": key,
        "value": {"type": etype, "id": key, "at": T0 + round(at_s * 1000)},
        "headers": {"eid": f"{etype}-{key}"},
        "timestamp": T0 + round(read * 1000),
    }


def slo_signals(
    records: list[dict[str, Any]], until_s: float | None = None, flow: str = SLO_FLOW
) -> list[tuple[str, str, int | None, int]]:
    """(key, good|bad, value_ms, seconds from T0 to when it was counted) of every `slo` signal
    of a replay."""
    out: list[Signal] = []

    def emit(eff: Effect, now: int) -> None:
        if isinstance(eff, Signal) and eff.what == "slo":
            out.append(eff)

    with tempfile.TemporaryDirectory() as d:
        Path(d, "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        parsed = parse_events(Path(d, "events.jsonl"))
    until = None if until_s is None else T0 + round(until_s * 1000)
    Replayer(registry_of(flow), emit).run(parsed, [], until)
    return [(s.key, s.detail, s.value_ms, (s.at - T0) // 1000) for s in out]


# -- the language -------------------------------------------------------------------------------


def test_slo_compiles_with_its_objective_as_a_ratio_and_window_defaulting_to_28d() -> None:
    slo = registry_of(SLO_FLOW).newest("shop").slo
    assert slo is not None
    assert (slo.objective, slo.objective_percent, slo.within_ms) == (0.995, "99.5", 15_000)
    assert slo.window_ms == 28 * 86_400_000
    short = SLO_FLOW.replace(", window: 28d", "").replace("99.5%", "99.95 %")
    slo = registry_of(short).newest("shop").slo
    assert slo is not None
    assert (slo.objective_percent, slo.window_ms) == ("99.95", 28 * 86_400_000)
    assert registry_of(BASE_FLOW).newest("shop").slo is None


@pytest.mark.parametrize(
    ("slo", "needle", "message"),
    [
        ("{objective: 99.5, within: 15s}", "objective", "objective '99.5' is not a percentage"),
        ("{objective: 100%, within: 15s}", "objective", "must be between 0% and 100%"),
        ("{objective: 0%, within: 15s}", "objective", "must be between 0% and 100%"),
        ("{objective: most%, within: 15s}", "objective", "is not a percentage like 99.5%"),
        ("{objective: 99%, within: soon}", "objective", "'soon' is not a duration"),
        ("{objective: 99%, within: 15s, window: 0s}", "objective", "not a positive duration"),
        ("{objective: 99%}", "objective", "within"),
        ("{objective: 99%, within: 15s, budget: 1%}", "objective", "unknown key 'budget'"),
        (
            "{objective: 99%, within: 2d, window: 1d}",
            "objective",
            "slo: within (2d) must be shorter than window (1d)",
        ),
    ],
)
def test_slo_problems_are_named_with_file_and_line(
    tmp_path: Path, slo: str, needle: str, message: str
) -> None:
    text = BASE_FLOW.replace("buffer: 30s", f"slo: {slo}\nbuffer: 30s")
    got = problems(tmp_path, text)
    line = line_of(text, needle)
    assert any(message in p and p.startswith(f"{tmp_path / 'flow.yaml'}:{line}:") for p in got), got


def test_slo_problems_in_block_style_name_the_line_of_the_key(tmp_path: Path) -> None:
    text = BASE_FLOW.replace(
        "buffer: 30s", "slo:\n  objective: 99.5%\n  within: 3d\n  window: 1d\nbuffer: 30s"
    )
    (got,) = problems(tmp_path, text)
    assert got.startswith(f"{tmp_path / 'flow.yaml'}:{line_of(text, 'within: 3d')}:"), got
    assert "must be shorter than window" in got


# -- the judgement --------------------------------------------------------------------------------


def test_completed_within_is_good_once_at_the_end() -> None:
    got = slo_signals([rec("Placed", "o1", 0), rec("Paid", "o1", 3), rec("Shipped", "o1", 9)])
    assert got == [("o1", "good", 9000, 9)]


def test_completed_exactly_at_within_is_good() -> None:
    got = slo_signals([rec("Placed", "o1", 0), rec("Paid", "o1", 3), rec("Shipped", "o1", 15)])
    assert got == [("o1", "good", 15000, 15)]


def test_open_past_within_is_bad_at_within_and_not_counted_again_when_it_ends() -> None:
    records = [rec("Placed", "o1", 0), rec("Paid", "o1", 3), rec("Shipped", "o1", 19)]
    assert slo_signals(records) == [("o1", "bad", 15000, 15)]


def test_open_past_within_is_bad_even_if_it_never_ends() -> None:
    records = [rec("Placed", "o1", 0), rec("Paid", "o1", 3)]
    assert slo_signals(records, until_s=60) == [("o1", "bad", 15000, 15)]
    # expiring later adds nothing
    assert slo_signals(records, until_s=2 * 86_400) == [("o1", "bad", 15000, 15)]


def test_completed_after_within_but_read_before_the_watermark_reached_it_is_bad_at_the_end() -> (
    None
):
    # the shipment's event time is 20s, but it is read at 5s: the instance ends before the
    # observer's time reaches the SLO point, with a duration over `within`
    records = [rec("Placed", "o1", 0), rec("Paid", "o1", 3), rec("Shipped", "o1", 20, read_s=5)]
    assert slo_signals(records) == [("o1", "bad", 20000, 5)]


def test_an_alternate_path_outcome_is_bad_even_when_quick() -> None:
    records = [rec("Placed", "o1", 0), rec("Failed", "o1", 1), rec("Refunded", "o1", 2)]
    assert slo_signals(records) == [("o1", "bad", 2000, 2)]


def test_a_flow_without_slo_judges_nothing() -> None:
    flow = SLO_FLOW.replace("slo: {objective: 99.5%, within: 15s, window: 28d}\n", "")
    records = [rec("Placed", "o1", 0), rec("Paid", "o1", 3), rec("Shipped", "o1", 9)]
    assert slo_signals([*records, rec("Placed", "o2", 10)], until_s=100, flow=flow) == []


def test_replay_output_does_not_wait_for_the_slo_point() -> None:
    """Replay without --until stops when no deadline is pending; the SLO point publishes
    nothing, so it is not waited for (as expire and retain are not)."""
    records = [rec("Placed", "o1", 0)]  # paid is missing at 10s; then no deadline is pending
    assert slo_signals(records) == []
    assert slo_signals(records, until_s=15) == [("o1", "bad", 15000, 15)]


def test_the_judged_mark_survives_the_state_codec() -> None:
    """Counted bad at `within`, stored in Redis, read back: the end counts nothing more."""
    registry = registry_of(SLO_FLOW)
    engine = Engine(registry)
    slot = KeySlot("shop", "o1")
    engine.apply(slot, Event("orders", "Placed", "o1", "e1", T0), T0)
    fired = engine.fire(slot, T0 + 15_000)
    judged = [s.detail for s in fired if isinstance(s, Signal) and s.what == "slo"]
    assert judged == ["bad"]
    again = decode_slot("shop", "o1", encode_slot(slot))
    assert engine.next_due(again) == T0 + 86_400_000  # only expire is left
    engine.apply(again, Event("pay", "Paid", "o1", "e2", T0 + 16_000), T0 + 16_000)
    effects = engine.apply(again, Event("ship", "Shipped", "o1", "e3", T0 + 17_000), T0 + 17_000)
    assert [(s.what, s.detail) for s in effects if isinstance(s, Signal)] == [
        ("ended", "completed")
    ]


def test_instance_view_lists_the_pending_slo_point() -> None:
    from observer.runtime.query import describe_instance

    engine = Engine(registry_of(SLO_FLOW))
    slot = KeySlot("shop", "o1")
    engine.apply(slot, Event("orders", "Placed", "o1", "e1", T0), T0)
    view = describe_instance(engine, "shop", "o1", encode_slot(slot), [])
    assert view is not None
    assert {"kind": "slo", "step": None, "due": "2026-01-01T00:00:15Z"} in view["pending"]


# -- the metric -----------------------------------------------------------------------------------


def _sample(registry: CollectorRegistry, flow: str, result: str) -> float | None:
    return registry.get_sample_value("observer_slo_events_total", {"flow": flow, "result": result})


def test_slo_signals_are_counted_by_flow_and_result_and_declared_flows_start_at_zero() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.declare_slo_flows(["shop"])
    assert (_sample(registry, "shop", "good"), _sample(registry, "shop", "bad")) == (0.0, 0.0)
    signals = [
        Signal("slo", "shop", 1, "o1", "good", None, T0, 9000),
        Signal("slo", "shop", 1, "o2", "bad", None, T0, 15000),
        Signal("slo", "shop", 1, "o3", "good", None, T0, 1000),
        Signal("ended", "shop", 1, "o1", "completed", None, T0, 9000),
    ]
    metrics.record_signals(signals)
    assert (_sample(registry, "shop", "good"), _sample(registry, "shop", "bad")) == (2.0, 1.0)
    assert _sample(registry, "other", "good") is None
