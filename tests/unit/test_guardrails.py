"""Guardrails (contract §7), the pure part: incidents, the rate limit and holding as
`GuardState.decide` makes them, and what `observer replay` prints for them (held lines carry
`"held": true`, incidents are alert records keyed by the flow name)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from observer.cli import main
from observer.engine.effects import DeviationRef, Publish
from observer.flows.compiled import CompiledGuardrails
from observer.guardrails.gate import GuardState, IncidentNote, Verdict, Waiting

ROOT = Path(__file__).parents[2]
OUTAGE = ROOT / "tests" / "golden" / "payment-outage-opens-an-incident"
RAILS = CompiledGuardrails(threshold=3, within_ms=60_000, max_actions=2, per_ms=60_000)


def waiting(i: int, at: int, kind: str = "missing", step: str | None = "paid") -> Waiting[str]:
    ref = DeviationRef(kind, step, 1, at, f"d{i:04d}")
    return Waiting("checkout", f"o-{i}", ref, [(f"alert-{i}", None), (f"cancel-{i}", "cancel")])


def decide(
    state: GuardState, items: list[Waiting[str]], upto: int, rails: CompiledGuardrails = RAILS
) -> list[tuple[str, ...]]:
    """Decisions as comparable tuples: (record, outcome, reason, incident) or (note, id, at)."""
    out: list[tuple[str, ...]] = []
    for d in state.decide("checkout", rails, items, upto, alerts_topic="observer.alerts"):
        if isinstance(d, IncidentNote):
            out.append((d.kind, d.incident, str(d.at), json.dumps(d.record.value)))
        else:
            assert isinstance(d, Verdict)
            out.append((d.record, d.outcome, str(d.reason), str(d.incident)))
    return out


def test_the_threshold_th_deviation_opens_one_incident_that_holds_until_within_passes() -> None:
    state = GuardState()
    storm = [waiting(i, 10_000 * i) for i in range(1, 7)]  # 10 s apart: six in 60 s
    got = decide(state, storm, 60_000)
    notes = [g for g in got if g[0] == "incident"]
    assert len(notes) == 1 and notes[0][2] == "30000"  # the third deviation opened it
    record = json.loads(notes[0][3])
    assert record["key"] is None and record["count"] == 3 and record["deviation"] == "missing"
    assert record["step"] == "paid" and record["severity"] == "critical"
    outcomes = {g[0]: g[1] for g in got if g[0] != "incident"}
    assert [outcomes[f"alert-{i}"] for i in range(1, 7)] == ["publish"] * 2 + ["suppress"] * 4
    assert outcomes["cancel-1"] == outcomes["cancel-2"] == "publish"
    assert all(outcomes[f"cancel-{i}"] == "hold" for i in range(3, 7))
    assert state.open  # the last deviation was at 60 s: open until 120 s
    closed = decide(state, [], 120_000)
    ((kind, _id, at, value),) = closed
    assert (kind, at, json.loads(value)["count"]) == ("incident_resolved", "120000", 6)
    assert not state.open and decide(state, [waiting(9, 130_000)], 130_000)[0][1] == "publish"


def test_the_rate_limit_holds_what_is_beyond_count_per_interval_by_watermark_time() -> None:
    rails = CompiledGuardrails(max_actions=2, per_ms=60_000)
    state = GuardState()
    spread = [waiting(i, t, step=f"s{i}") for i, t in enumerate([0, 1_000, 2_000, 61_000, 61_500])]
    got = {g[0]: (g[1], g[2]) for g in decide(state, spread, 70_000, rails)}
    assert [got[f"cancel-{i}"] for i in range(5)] == [
        ("publish", "None"),
        ("publish", "None"),
        ("hold", "rate"),
        ("publish", "None"),  # 0 and 1000 are out of the window (1000, 61000]
        ("publish", "None"),  # (1500, 61500] holds one: 61000
    ]
    assert all(got[f"alert-{i}"] == ("publish", "None") for i in range(5))  # alerts: no limit


def test_a_paused_flow_holds_every_action_and_still_alerts() -> None:
    state = GuardState()
    rails = CompiledGuardrails(threshold=100, within_ms=1_000)
    got = state.decide(
        "checkout", rails, [waiting(1, 0)], 0, alerts_topic="observer.alerts", paused=True
    )
    assert [(d.outcome, d.reason) for d in got if isinstance(d, Verdict)] == [
        ("publish", None),
        ("hold", "paused"),
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 300), st.sampled_from(["paid", "packed"])), max_size=40),
    st.lists(st.integers(0, 400), max_size=5),
)
def test_deciding_in_pieces_and_through_storage_decides_like_deciding_at_once(
    times: list[tuple[int, str]], cuts: list[int]
) -> None:
    """What a decider that stops, stores its state and goes on decides is what one pass
    decides: the same deviations give the same incidents and holds, in any arrival order."""
    items = [waiting(i, t * 1_000, step=s) for i, (t, s) in enumerate(times)]
    whole = decide(GuardState(), list(reversed(items)), 400_000)
    pieces: list[tuple[str, ...]] = []
    state, prev = GuardState(), -1
    for cut in [*sorted(cuts), 400]:
        ready = [w for w in items if prev < w.ref.at <= cut * 1_000]
        prev = max(prev, cut * 1_000)
        pieces += decide(state, ready, cut * 1_000)
        state = GuardState.from_bytes(state.to_bytes())
    assert sorted(pieces) == sorted(whole)


def replay(env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    res = CliRunner().invoke(
        main,
        ["replay", str(OUTAGE / "flow.yaml"), "--events", str(OUTAGE / "events.jsonl"), *args],
        env=env,
    )
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_replay_writes_incidents_as_alerts_and_held_actions_with_held_true() -> None:
    lines = replay()
    incidents = [ln for ln in lines if ln["value"].get("kind") in ("incident", "incident_resolved")]
    assert [(i["key"], i["value"]["kind"]) for i in incidents] == [
        ("checkout", "incident"),
        ("checkout", "incident_resolved"),
    ]
    held = [ln for ln in lines if ln.get("held")]
    assert [h["key"] for h in held] == ["o-3", "o-4", "o-5", "o-6", "o-7"]
    assert all(h["topic"] == "shop.commands" and "observer-id" in h["headers"] for h in held)
    published = [ln for ln in lines if ln["topic"] == "shop.commands" and not ln.get("held")]
    assert [p["key"] for p in published] == ["o-2", "o-8"]


def test_observer_actions_hold_in_replay_holds_every_action_and_nothing_else() -> None:
    normal = replay()
    dry = replay({"OBSERVER_ACTIONS": "hold"})
    assert [ln for ln in dry if ln["topic"] != "shop.commands"] == [
        ln for ln in normal if ln["topic"] != "shop.commands"
    ]
    commands = [ln for ln in dry if ln["topic"] == "shop.commands"]
    assert commands and all(ln.get("held") is True for ln in commands)
    assert {ln["headers"]["observer-id"] for ln in commands} == {
        ln["headers"]["observer-id"] for ln in normal if ln["topic"] == "shop.commands"
    }


def test_a_flow_without_guardrails_publishes_every_deviation_at_once(tmp_path: Path) -> None:
    text = (OUTAGE / "flow.yaml").read_text()
    flow = text.split("guardrails:")[0] + "actions:" + text.split("\nactions:")[1]
    (tmp_path / "flow.yaml").write_text(flow)
    res = CliRunner().invoke(
        main, ["replay", str(tmp_path / "flow.yaml"), "--events", str(OUTAGE / "events.jsonl")]
    )
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert not any(ln.get("held") for ln in lines)
    assert len([ln for ln in lines if ln["topic"] == "shop.commands"]) == 7
    assert all(ln["value"].get("kind") != "incident" for ln in lines)


def test_observer_actions_must_be_publish_or_hold() -> None:
    res = CliRunner().invoke(
        main,
        ["replay", str(OUTAGE / "flow.yaml"), "--events", str(OUTAGE / "events.jsonl")],
        env={"OBSERVER_ACTIONS": "maybe"},
    )
    assert res.exit_code == 2 and "OBSERVER_ACTIONS" in res.output


_ = Publish  # the records in the pure tests are strings: `decide` is generic over them
