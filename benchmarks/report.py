"""The table `benchmarks/run.py` prints from a run's figures, and the targets they are held to
(docs/benchmarks.md, "Targets")."""

from __future__ import annotations

import json
import math
from typing import Any

from benchmarks.common import fmt_rate

TARGETS = {
    "observer_events_per_s": 150_000,
    "vs_faust": 10.0,
    "vs_quix": 2.0,
    "latency_p99_ms": 100.0,
    "redis_bytes_per_open_instance": 250,
    "scaling_within": 0.20,
}


def _ok(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "NO")


def report(res: dict[str, Any]) -> str:
    """The table: the workload, throughput rows and their alert checks, latency, memory,
    targets (each section only when its part ran)."""
    lines = _workload_lines(res)
    lines += _throughput_lines(res, _throughput_rows(res))
    lines += _latency_lines(res.get("latency"))
    lines += _memory_lines(res.get("memory"))
    t = res.get("targets")
    if t:
        lines.append("")
        lines.append("targets: " + ", ".join(f"{k} {_ok(v)}" for k, v in t.items()))
    return "\n".join(lines)


def _workload_lines(res: dict[str, Any]) -> list[str]:
    wlm = res.get("workload")
    if not wlm:
        return []
    return [
        f"workload: {wlm['orders']:,} orders, {wlm['events']:,} events ({wlm['events_per_order']:.1f}/order), {wlm['partitions']} partitions x {len(wlm['source_topics'])} topics, produced at {fmt_rate(wlm.get('produce_events_per_s'))} events/s"
    ]


Row = tuple[str, dict[str, Any], str]  # name, figures, note


def _throughput_rows(res: dict[str, Any]) -> list[Row]:
    """observer xN (scaling against x1), direct x1, the peers (ratios against the best single
    process)."""
    rows = []
    obs = res.get("observer", {})
    base = obs.get("1", {}).get("events_per_s")
    for n, r in sorted(obs.items(), key=lambda kv: int(kv[0])):
        scale = r["events_per_s"] / base if base and r.get("events_per_s") else None
        note = f"x{scale:.2f} of 1 proc; " if scale else ""
        if r.get("routed_events_per_s"):
            note += f"router alone {fmt_rate(r['routed_events_per_s'])}/s, keyed backlog then {r.get('keyed_backlog_at_routed') or 0:,}"
        rows.append((f"observer x{n}", r, note))
    direct = res.get("direct")
    if direct:
        scale = direct["events_per_s"] / base if base and direct.get("events_per_s") else None
        rows.append(("direct x1", direct, f"x{scale:.2f} of 1 keyed proc; " if scale else ""))
    cluster = res.get("cluster")
    if cluster:
        scale = cluster["events_per_s"] / base if base and cluster.get("events_per_s") else None
        note = f"x{scale:.2f} of 1 keyed proc on one Redis; " if scale else ""
        rows.append(
            ("cluster x1", cluster, note + "keyed routing, state on a 3-master Redis Cluster")
        )
    one = best_single(res)
    base = one.get("events_per_s")
    for kind in ("faust", "quix"):
        r = res.get(kind)
        if r:
            ratio = base / r["events_per_s"] if base and r.get("events_per_s") else None
            base_cpu = one.get("events_per_cpu_s")
            cpu_ratio = (
                base_cpu / r["events_per_cpu_s"] if base_cpu and r.get("events_per_cpu_s") else None
            )
            note = f"ours ({one.get('routing', 'keyed')} x1)/{kind} = {ratio:.1f}x" if ratio else ""
            if cpu_ratio:
                note += f" ({cpu_ratio:.1f}x per CPU s)"
            rows.append((kind, r, note))
    return rows


def _throughput_lines(res: dict[str, Any], rows: list[Row]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        f"{'throughput':<14}{'events/s':>11}{'events':>11}{'seconds':>9}{'tail s':>8}{'cpu s':>8}{'ev/cpu-s':>10}{'peak RSS MB':>13}  {'alerts':<7}{'by kind':<44} note",
    ]
    for name, r, note in rows:
        if r.get("redis_cpu_us_per_event") is not None:
            note = f"Redis {r['redis_cpu_us_per_event']:.1f} us CPU/event; {note}"
        secs = r.get("seconds")
        tail = r.get("durable_tail_s")
        check = r.get("alerts_check") or {}
        lines.append(
            f"{name:<14}{fmt_rate(r.get('events_per_s')):>11}{r.get('events', 0):>11,}{(secs or 0):>9.2f}{'-' if tail is None else f'{tail:.2f}':>8}{sum(r.get('cpu_s', [])):>8.1f}{fmt_rate(r.get('events_per_cpu_s')):>10}{max(r.get('peak_rss_mb', [0])):>13.0f}  {_ok(check.get('ok')):<7}{json.dumps(r.get('alerts', {})):<44} {note}{'' if r.get('complete') else ' (INCOMPLETE: ' + str(r.get('stopped')) + ')'}"
        )
    obs = res.get("observer", {})
    first = obs.get("1") or next(iter(obs.values()), None) or res.get("direct")
    if first:
        lines.append(
            f"observer: seconds = first source commit -> state durable (keyed: group <group>.keyed committed all routed, source group all; direct: the source group committed all); keyed includes `tail s` = routed -> durable; the commit delay is {first.get('commit_delay_ms')} ms"
        )
    for name, r, _ in rows:
        check = r.get("alerts_check")
        if not check:
            continue
        problems = {
            k: check[k]
            for k in ("out_of_range", "unexpected", "duplicates", "absent")
            if check.get(k)
        }
        if problems or check.get("repeats"):
            lines.append(
                f"{name} alerts: {json.dumps(problems)}; repeats of an observer-id (allowed, dropped): {check.get('repeats', 0)}; e.g. {check.get('examples', [])[:3]}"
            )
    checks = [
        r["alerts_check"] for n, r, _ in rows if n.startswith("observer") and r.get("alerts_check")
    ]
    if checks:
        lines.append(
            "observer alerts per order and within the replay's expected range: "
            + _ok(all(c["ok"] for c in checks))
        )
    return lines


def _latency_lines(lat: dict[str, Any] | None) -> list[str]:
    if not lat:
        return []
    w, k, d = lat["ms_after_watermark"], lat["ms_after_knowable"], lat["ms_after_deadline"]
    lines = [
        "",
        f"detection latency ({lat['deadlines']} deadlines of `{lat['missing_step']}`, live at {lat['events_per_s']:.0f} events/s, idle grace {lat['idle_grace_ms']} ms):",
        f"  alert broker time - when the watermark passed:     p50 {w['p50']:.0f} ms, p99 {w['p99']:.0f} ms, max {w['max']:.0f} ms",
    ]
    st = lat.get("ms_after_watermark_steady")
    if st:
        lines.append(
            f"    after the first {lat.get('warmup_s', 0):.0f} s of deadlines:            p50 {st['p50']:.0f} ms, p99 {st['p99']:.0f} ms, max {st['max']:.0f} ms"
        )
    lines += [
        f"  alert broker time - all records <= D acked:        p50 {k['p50']:.0f} ms, p99 {k['p99']:.0f} ms, max {k['max']:.0f} ms",
        f"  alert broker time - deadline:                      p50 {d['p50']:.0f} ms, p99 {d['p99']:.0f} ms, max {d['max']:.0f} ms",
        f"  alerts matched {lat['alerts_matched']}/{lat['deadlines']}, unexpected {lat['unexpected_alerts'] or 0}",
    ]
    return lines


def _memory_lines(mem: dict[str, Any] | None) -> list[str]:
    if not mem or mem.get("open_instances") is None:
        return []
    b = mem.get("bytes_per_open_instance")
    return [
        "",
        f"memory ({mem['open_instances']:,} open instances, {mem['key_style']} keys): Redis {b or 0:.0f} B per open instance by MEMORY USAGE {json.dumps({k: round(v) for k, v in mem['bytes_per_open_instance_by_kind'].items()})}, used_memory delta {mem['used_memory_delta_per_open_instance'] or 0:.0f} B/instance; observer RSS {mem['rss_mb'][0]} MB",
    ]


def best_single(res: dict[str, Any]) -> dict[str, Any]:
    """The faster one-process run (keyed or direct routing): what the one-process targets and
    the peer ratios compare."""
    runs = [r for r in (res.get("observer", {}).get("1"), res.get("direct")) if r]
    return max(runs, key=lambda r: r.get("events_per_s") or 0, default={})


def targets(res: dict[str, Any]) -> dict[str, bool | None]:
    obs = res.get("observer", {})
    one = best_single(res).get("events_per_s")
    keyed_one = obs.get("1", {}).get("events_per_s")
    out: dict[str, bool | None] = {}
    out[">=150k/s 1 proc"] = one >= TARGETS["observer_events_per_s"] if one else None
    for kind, need in (("faust", TARGETS["vs_faust"]), ("quix", TARGETS["vs_quix"])):
        theirs = res.get(kind, {}).get("events_per_s")
        out[f">={need:.0f}x {kind}"] = one / theirs >= need if one and theirs else None
    for n in ("2", "4"):
        r = obs.get(n, {}).get("events_per_s")
        out[f"{n} procs within 20% of linear"] = (
            r >= int(n) * keyed_one * (1 - TARGETS["scaling_within"]) if r and keyed_one else None
        )
    lat = res.get("latency", {}).get("ms_after_watermark", {}).get("p99")
    out["p99 <=100 ms"] = (
        lat <= TARGETS["latency_p99_ms"] if lat is not None and not math.isnan(lat) else None
    )
    b = res.get("memory", {}).get("bytes_per_open_instance")
    out["<=250 B/open instance"] = b <= TARGETS["redis_bytes_per_open_instance"] if b else None
    return out
