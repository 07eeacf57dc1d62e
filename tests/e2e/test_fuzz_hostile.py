"""Generated hostile flows and records through `observer validate`, `observer replay` and a
live `observer run` (issue 12): nothing a producer or a flow author writes stops the observer
or swallows an alert.

Flow files are generated from a menu of templates (arithmetic on text, `| length` of a number,
megabyte results, constant-folding bombs, nested loops), numbers and durations beyond what can
be stored. Each goes through `observer validate` (in process, with a time bound): it answers 0
or 2, never a traceback, and every refusal names the file and the line. The accepted ones run
together on one source topic of records from bytes to megabytes: orders whose values break
careless templates and budgets (text, beyond-64-bit and 100 KB totals, notes up to 1.2 MB,
nested lists), keys beyond 64 bits, the usual bad input (empty, not JSON, not UTF-8, 5000-deep
nesting, 1.5 MB, no type, empty or 5 KB key, times out of range, NaN, 1e999) and a burst of
orphans. `observer replay` of the same records says what must be published; the live process
must publish exactly that -- every alert (its `action_errors` too), action record and dead
letter, by `observer-id`, each dead letter once -- without exiting, logging a traceback or
taking longer than a bound. The figures (inputs tried, crashes, records lost, largest RSS) are
printed with the e2e figures and kept in docs/running.md. Run twice: keyed routing, and
direct routing with a kill -9 mid-way and a restart (records may then repeat, with their ids).
Takes about 40 s in all.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from observer import jsonexact
from observer.cli import main
from observer.replay import run_replay
from observer.topics import Topics
from tests.e2e.conftest import ObserverProcesses, observer_env
from tests.e2e.fuzz.harness import wait_for
from tests.e2e.fuzz.hostile import HANDWRITTEN, Sent, flow_files, records
from tests.integration.kafka_helpers import Record, consume_all

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SEED = 2026
FLOWS = 24  # generated; about half are accepted
ORDERS = 160
ORPHANS = 40
VALIDATE_BOUND_S = 10.0  # one flow file, on a loaded 2-core machine


def _validate(flows: list[str], folder: Path) -> tuple[list[Path], int, float]:
    """Each flow file through `observer validate`: (accepted files, refused, slowest s)."""
    accepted, refused, slowest = [], 0, 0.0
    for n, text in enumerate(flows):
        f = folder / f"gen{n}.yaml"
        f.write_text(text)
        started = time.perf_counter()
        result = CliRunner().invoke(main, ["validate", str(f)])
        took = time.perf_counter() - started
        slowest = max(slowest, took)
        assert took < VALIDATE_BOUND_S, (took, text)
        assert not isinstance(result.exception, Exception) or isinstance(
            result.exception, SystemExit
        ), (result.exception, text)
        assert result.exit_code in (0, 2) and "Traceback" not in result.output, result.output
        if result.exit_code == 0:
            accepted.append(f)
        else:  # every problem named at its file and line
            assert f"{f}:" in result.output, result.output
            refused += 1
            f.unlink()
    return accepted, refused, slowest


def _replay_lines(recs: list[Sent], source: str) -> bytes:
    lines = []
    for s in recs:
        key = s.key.decode("utf-8", "replace") if s.key is not None else None
        line = {"topic": source, "key": key, "value": s.replay, "timestamp": s.at}
        lines.append(jsonexact.dumps({**line, "headers": {"eid": s.eid}}) + b"\n")
    return b"".join(lines)


def _produce(bootstrap: str, topic: str, recs: list[Sent]) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "message.max.bytes": 4_000_000}
    )
    for s in recs:
        headers: list[tuple[str, str | bytes | None]] = list(s.headers)
        producer.produce(
            topic, value=s.value, key=s.key, headers=headers, partition=0, timestamp=s.at
        )
        producer.poll(0)
    assert producer.flush(30) == 0, "records not delivered"


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _ids(records: list[Record]) -> Counter[str]:
    return Counter((r.header("observer-id") or b"").decode() for r in records)


Expected = dict[str, list[dict[str, Any]]]


def _oracle(folder: Path, events: Path, until: int, topics: Topics, cmds: str) -> Expected:
    """What `observer replay` publishes to the alerts, action and dead-letter topics."""
    expected: Expected = {topics.alerts: [], cmds: [], topics.dlq: []}
    for raw in run_replay(str(folder), str(events), until, [], topics):
        line = orjson.loads(raw)
        if line["topic"] in expected:
            expected[line["topic"]].append(line)
    return expected


def _live(
    stack: Any,
    env: dict[str, str],
    folder: Path,
    want: dict[str, Counter[str]],
    crash: bool,
    procs: ObserverProcesses,
) -> tuple[dict[str, list[Record]], int]:
    """One `observer run` until it published every record replay says it must (`crash`: it is
    killed with SIGKILL once its first dead letter is out, and started again); what it
    published and its largest RSS (KB); the processes are added to `procs`."""
    args = ("--bootstrap-servers", stack.bootstrap_servers, "--group-id", env["OBSERVER_GROUP_ID"])
    started = [procs.start("observer", folder, env, *args)]
    got: dict[str, list[Record]] = {}
    rss = 0

    def everything() -> bool:
        for topic in want:
            got[topic] = consume_all(stack.bootstrap_servers, topic, timeout=2)
        return all(set(ids) <= set(_ids(got[topic])) for topic, ids in want.items())

    if crash:
        dlq = list(want)[2]
        dead = lambda: consume_all(stack.bootstrap_servers, dlq, timeout=1)  # noqa: E731
        wait_for(dead, 60, "a first dead letter", started[0])
        rss = _rss_kb(started[0].pid)
        assert started[0].kill() == -9
        started.append(procs.start("observer-again", folder, env, *args))
    last = started[-1]
    wait_for(everything, 120, "every record replay publishes", last)
    rss = max(rss, _rss_kb(last.pid))
    assert last.running(), last.tail()
    assert last.stop() == 0, last.tail()
    assert all("Traceback" not in p.log for p in started)
    return got, rss


@pytest.mark.parametrize(("routing", "crash"), [("keyed", False), ("direct", True)])
def test_generated_flows_and_records_never_stop_the_observer_nor_lose_a_record(
    routing: str,
    crash: bool,
    stack: Any,
    unique: str,
    tmp_path: Path,
    create_topics: Callable[..., list[str]],
    observer_procs: ObserverProcesses,
    figures: list[str],
) -> None:
    source, cmds, alerts, dlq, outcomes = (
        f"{unique}.{n}" for n in ("source", "cmds", "alerts", "dlq", "outcomes")
    )
    create_topics([source], 1, {"max.message.bytes": "4000000"})  # megabyte source records
    create_topics([cmds, alerts, dlq, outcomes], 1)
    rng = random.Random(SEED)
    flows = [HANDWRITTEN, *flow_files(rng, FLOWS)]
    texts = [t.replace("SOURCE", source).replace("CMDS", cmds) for t in flows]
    folder = tmp_path / "flows"
    folder.mkdir()
    accepted, refused, slowest = _validate(texts, folder)
    assert len(accepted) >= 4 and refused >= 4, (len(accepted), refused)
    assert folder / "gen0.yaml" in accepted  # the hand-written flow

    t0 = (time.time_ns() // 1_000_000) - 600_000  # ten minutes ago: every window has passed
    gen = records(rng, t0, ORDERS, ORPHANS)
    events = tmp_path / "events.jsonl"
    events.write_bytes(_replay_lines(gen.records, source))
    topics = Topics(alerts=alerts, outcomes=outcomes, dlq=dlq)
    expected = _oracle(folder, events, t0 + gen.span_ms + 60_000, topics, cmds)
    want = {t: Counter(ln["headers"]["observer-id"] for ln in lns) for t, lns in expected.items()}
    assert all(n == 1 for ids in want.values() for n in ids.values())  # distinct ids
    assert any("action_errors" in ln["value"] for ln in expected[alerts])
    handwritten = {t: [ln for ln in lns if _of_handwritten(ln)] for t, lns in expected.items()}
    assert len(handwritten[alerts]) > 60, len(handwritten[alerts])
    assert len(handwritten[cmds]) > 40 and len(handwritten[dlq]) > 20, handwritten[dlq][:3]
    assert any("action_errors" in ln["value"] for ln in handwritten[alerts])
    bad = sum(1 for s in gen.records if s.what not in ("order", "orphan"))

    _produce(stack.bootstrap_servers, source, gen.records)
    env = observer_env(
        stack,
        unique,
        OBSERVER_GROUP_ID=f"{unique}-g",
        OBSERVER_ALERTS_TOPIC=alerts,
        OBSERVER_OUTCOMES_TOPIC=outcomes,
        OBSERVER_DLQ_TOPIC=dlq,
        OBSERVER_IDLE_GRACE_MS="200",
        OBSERVER_ROUTING=routing,
        # direct: the restarted process takes over within seconds (the default is 30 s; 2 s
        # is shorter than a batch of these records can take on a loaded machine)
        OBSERVER_LEASE_TTL_MS="8000",
    )
    started = time.perf_counter()
    got, rss_kb = _live(stack, env, folder, want, crash, observer_procs)
    live_s = time.perf_counter() - started
    repeats = _check_same(expected, got, want, gen.records, crash)
    lost = sum(len(set(want[t]) - set(_ids(got[t]))) for t in want)
    figures.append(
        f"generated (seed {SEED}), {routing} routing{', kill -9 and restart' if crash else ''}: "
        f"{len(texts)} flow files ({len(accepted)} valid, {refused} refused with file:line, "
        f"slowest validate {slowest:.2f}s) and {len(gen.records)} records ({ORDERS} orders, "
        f"{bad} bad, {ORPHANS} orphans; largest {max(len(s.value) for s in gen.records) // 1000}"
        f" KB): inputs tried {len(texts) + len(gen.records)}, crashes 0, records lost {lost}; "
        f"published {sum(len(want[t]) for t in want)} distinct records as replay (alerts "
        f"{len(want[alerts])}, actions {len(want[cmds])}, dead letters {len(want[dlq])}"
        f"{f'; {repeats} repeats after the kill' if crash else ''}) in {live_s:.1f}s; "
        f"observer's largest RSS "
        f"{rss_kb // 1024} MB"
    )


def _of_handwritten(line: dict[str, Any]) -> bool:
    """A record of the hand-written flow: its alerts and action dead letters name it, its
    commands say `by: hostile`."""
    value = line["value"]
    if isinstance(value, str):  # a dead letter's value as text: an action's is JSON
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return False
    return isinstance(value, dict) and "hostile" in (value.get("flow"), value.get("by"))


def _check_same(
    expected: dict[str, list[dict[str, Any]]],
    got: dict[str, list[Record]],
    want: dict[str, Counter[str]],
    sent: list[Sent],
    crash: bool,
) -> int:
    """The live records are replay's, by observer-id, each once (after a crash a record may
    be published again, with its id: the repeats are returned); alerts as replay rendered
    them (but when they were decided, and the orphans' times: their buffer runs from when
    the event was read); dead letters the original bytes."""
    repeats = 0
    for topic, ids in want.items():
        live = _ids(got[topic])
        assert set(live) == set(ids), (topic, set(live) ^ set(ids))
        twice = {i: n for i, n in live.items() if n > 1}
        assert crash or not twice, (topic, twice)
        repeats += sum(twice.values()) - len(twice)
    alerts, _cmds, dlq = expected
    live_alerts = {(r.header("observer-id") or b"").decode(): r for r in got[alerts]}
    for line in expected[alerts]:
        value = orjson.loads(live_alerts[line["headers"]["observer-id"]].value or b"")
        when = ("deadline", "summary") if value["kind"] == "orphaned" else ()
        for field in ("detected_at", *when):
            value.pop(field, None)
            line["value"].pop(field, None)
        assert value == line["value"]
    keys = {a.key for a in got[alerts]}  # keys beyond 64 bits exact, never merged
    assert not any(k is not None and b"e+" in k for k in keys), keys
    big = {k for k in keys if k is not None and k.startswith(b"1000000")}
    assert len(big) >= 2 and big <= {s.key for s in sent if s.what == "order"}, big
    _check_dead_letters(got[dlq], sent)
    return repeats


def _check_dead_letters(dead: list[Record], sent: list[Sent]) -> None:
    """Each bad record dead-lettered once, as it was (a megabyte one cut, its headers kept);
    no good one."""
    by_eid = {s.eid: s for s in sent}
    offsets = {str(i): s for i, s in enumerate(sent)}
    bad = {str(i) for i, s in enumerate(sent) if s.what not in ("order", "orphan")}
    seen: list[str] = []
    cut = 0
    for d in dead:
        offset = (d.header("observer-source-offset") or b"").decode()
        if not offset:  # an action's dead letter (JSON, by flow, key and action)
            assert {"flow", "key", "action", "error"} <= set(orjson.loads(d.value or b"")), d
            continue
        s = offsets[offset]
        seen.append(offset)
        assert by_eid[s.eid] is s and d.key == s.key
        assert dict(d.headers)["eid"] == s.eid.encode() and d.header("observer-error")
        if d.header("observer-truncated") is None:
            assert d.value == s.value, (s.what, d.value)
        else:  # cut to fit the dead-letter topic, headers kept
            assert len(s.value) > 1_000_000 and (d.value or b"") in s.value
            cut += 1
    # (each once by observer-id, checked by the caller; a repeat after a kill is the same)
    assert set(seen) == bad and cut >= 1, (sorted(seen), sorted(bad), cut)
