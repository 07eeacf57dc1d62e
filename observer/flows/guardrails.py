"""`guardrails:` of a flow file (contract §7) compiled: incidents and the action rate limit.

An incident covers deviations of every kind (`orphaned` included); a flow without
`guardrails:` has none of it and publishes exactly as before.
"""

from __future__ import annotations

from observer.flows.compiled import DEFAULT_GUARDRAILS, CompiledGuardrails
from observer.flows.spec import GuardrailsSpec
from observer.timefmt import parse_duration

__all__ = ["compile_guardrails"]


def compile_guardrails(spec: GuardrailsSpec | None) -> CompiledGuardrails:
    """The compiled guardrails (the spec checked every value already)."""
    if spec is None or (spec.incident is None and spec.max_actions is None):
        return DEFAULT_GUARDRAILS
    threshold, within, count, per = None, 0, None, None
    if spec.incident is not None:
        threshold, within = spec.incident.threshold, parse_duration(spec.incident.within)
    if spec.max_actions is not None:
        count, per = spec.max_actions.count, parse_duration(spec.max_actions.per)
    return CompiledGuardrails(threshold, within, count, per)
