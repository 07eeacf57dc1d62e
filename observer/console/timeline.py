""" "Where is my order?" as a timeline (pure): the view of one instance (`runtime/query.py`,
what `/instances` answers) turned into entries in time order — the start, each step's event
(event time; read time where the observer kept one), deadlines still ahead or missed,
deviations, published records with their observer-ids, held, released and dropped actions,
the end."""

from __future__ import annotations

from typing import Any

__all__ = ["timeline"]

_FROM_LISTS = {"deviation", "published"}  # shown from the view's own lists


def _entry(at: str | None, what: str, **detail: Any) -> dict[str, Any]:
    return {"at": at, "what": what, **{k: v for k, v in detail.items() if v is not None}}


def _history_entries(view: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for e in view.get("history", []):
        what = e.get("what")
        if not isinstance(what, str) or what in _FROM_LISTS:
            continue
        detail = {k: v for k, v in e.items() if k not in ("at", "what")}
        out.append(_entry(e.get("at"), what, **detail))
    return out


def timeline(view: dict[str, Any]) -> list[dict[str, Any]]:
    """Entries sorted by time (entries without one last), each `{"at", "what", ...}`:
    `started`, `event` (step, path, event_time, flags), `deadline` (step, kind, pending or
    missed), `deviation` (kind, step), `published` (category, observer_id, topic or webhook),
    `held` / `released` / `dropped`, `buffered` (early events, with their read time),
    `ended` (outcome)."""
    out: list[dict[str, Any]] = []
    if view.get("started_at"):
        out.append(_entry(view["started_at"], "started", version=view.get("version")))
    for s in view.get("steps", []):
        flags = [m for m in ("late", "missing", "warned", "out_of_order") if s.get(m)]
        if s.get("observed_at"):
            out.append(
                _entry(
                    s["observed_at"], "event", step=s["step"], path=s["path"],
                    event_time=s["observed_at"], flags=flags or None,
                )
            )  # fmt: skip
        elif s.get("deadline") and s.get("status") in ("waiting", "not observed"):
            state = "passed" if s.get("missing") else "pending"
            out.append(_entry(s["deadline"], "deadline", step=s["step"], state=state))
    for p in view.get("pending", []):
        if p.get("kind") not in ("missing", "warning", "retain", "expire"):
            out.append(_entry(p.get("due"), "deadline", step=p.get("step"), kind=p["kind"]))
    for d in view.get("deviations", []):
        out.append(
            _entry(d.get("detected_at"), "deviation", kind=d.get("kind"), step=d.get("step"))
        )
    for a in view.get("actions", []):
        detail = {k: v for k, v in a.items() if k != "at"}
        out.append(_entry(a.get("at"), "published", **detail))
    for b in view.get("buffered", []):
        out.append(
            _entry(
                b.get("time"), "buffered", source=b.get("source"), type=b.get("type"),
                id=b.get("id"), event_time=b.get("time"), read_at=b.get("read_at"),
            )
        )  # fmt: skip
    out += _history_entries(view)
    if view.get("ended_at") and not any(e["what"] == "ended" for e in out):
        out.append(_entry(view["ended_at"], "ended", outcome=view.get("outcome")))
    out.sort(key=_when)
    return out


def _when(entry: dict[str, Any]) -> tuple[bool, str]:
    """Sort key: ISO times with and without milliseconds compare as times."""
    at = entry["at"]
    if not isinstance(at, str):
        return True, ""
    return False, at if "." in at else at.replace("Z", ".000Z")
