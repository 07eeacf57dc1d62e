"""`guardrails:` of a flow file (contract §7) compiled: incidents and the action rate limit.

Without `guardrails.incident` a flow still has the built-in incident guardrail for
`orphaned` (100 within 1m): a flood of orphan events raises one incident, not one critical
alert per event. A flow's own `incident` covers every kind, `orphaned` included.
"""

from __future__ import annotations

from observer.flows.compiled import DEFAULT_GUARDRAILS, CompiledGuardrails
from observer.flows.spec import GuardrailsSpec
from observer.timefmt import parse_duration

__all__ = ["compile_guardrails"]


def compile_guardrails(spec: GuardrailsSpec | None) -> CompiledGuardrails:
    """The compiled guardrails (the spec checked every value already)."""
    out = DEFAULT_GUARDRAILS
    if spec is None:
        return out
    if spec.incident is not None:
        within = parse_duration(spec.incident.within)
        out = CompiledGuardrails(spec.incident.threshold, within, None)
    if spec.max_actions is not None:
        per = parse_duration(spec.max_actions.per)
        limit = spec.max_actions.count
        out = CompiledGuardrails(out.threshold, out.within_ms, out.incident_kinds, limit, per)
    return out
