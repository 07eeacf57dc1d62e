"""The observer's own topics: where alerts, outcomes and dead letters go.

A leaf module (it imports nothing of the observer), so configuration, ingest, replay and the
CLI can name the topics without importing the engine.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Topics"]


@dataclass(frozen=True, slots=True)
class Topics:
    """Where the observer's own records go (runtime config)."""

    alerts: str = "observer.alerts"
    outcomes: str = "observer.outcomes"
    dlq: str = "observer.dlq"
