"""The observer's own topics: where alerts, outcomes and dead letters go, and how large a
record each topic it writes accepts.

A leaf module (it imports only other leaves), so configuration, ingest, replay and the CLI can
name the topics without importing the engine. The engine gets `Topics` as an input: records it
builds are measured against `Topics.limits` there, so `observer replay` and `observer run`
decide alike which record is too large.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from observer.record_size import RecordLimits

__all__ = ["Topics"]


@dataclass(frozen=True, slots=True)
class Topics:
    """Where the observer's own records go (runtime config)."""

    alerts: str = "observer.alerts"
    outcomes: str = "observer.outcomes"
    dlq: str = "observer.dlq"
    # hostile input (issue 12): the largest record each topic accepts
    limits: RecordLimits = field(default_factory=RecordLimits)
