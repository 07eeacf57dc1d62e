"""Windows learned from history (issue 15): `within` and `warn` proposed per step from the
latencies a back-test observed, and the next version of the flow file with them.

The rule (`Rule`): `within` is the step's 99th percentile latency times 1.25, `warn` its 90th
percentile times 1.25, each rounded up to the next duration people write (`LADDER_MS`: 1s, 2s,
5s, 10s, 15s, 30s, 1m, ...); `warn` stays shorter than `within` (the longest rung below it).
A step observed fewer than 20 times keeps its windows. The start step has none.

The next version is written by a ruamel round trip of the flow's own document: comments,
quotes, key order and layout are kept, `version` is bumped, `within`/`warn` are set where
proposed (added after `on`/`after` when the step had none).
"""

from __future__ import annotations

import io
import math
import re
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import takewhile
from typing import Any

from observer.backtest import percentile
from observer.errors import FlowError, FlowProblem
from observer.flows.compiled import CompiledFlow
from observer.timefmt import format_duration

__all__ = ["LADDER_MS", "Proposal", "Rule", "next_version_text", "propose", "round_up"]

_S, _M, _H, _D = 1_000, 60_000, 3_600_000, 86_400_000
LADDER_MS = (
    100, 250, 500,
    _S, 2 * _S, 5 * _S, 10 * _S, 15 * _S, 30 * _S, 45 * _S,
    _M, 2 * _M, 3 * _M, 5 * _M, 10 * _M, 15 * _M, 20 * _M, 30 * _M, 45 * _M,
    _H, 2 * _H, 3 * _H, 4 * _H, 6 * _H, 8 * _H, 12 * _H,
    _D, 2 * _D, 3 * _D, 5 * _D, 7 * _D, 14 * _D, 30 * _D,
)  # fmt: skip


def round_up(ms: float) -> int:
    """The first rung of the ladder at or above `ms` (whole days beyond it)."""
    for rung in LADDER_MS:
        if ms <= rung:
            return rung
    return math.ceil(ms / _D) * _D


def _below(ms: int) -> int | None:
    rungs = [r for r in LADDER_MS if r < ms]
    return rungs[-1] if rungs else None


@dataclass(frozen=True, slots=True)
class Rule:
    """How windows are proposed (see the module doc)."""

    percentile: float = 99.0
    warn_percentile: float = 90.0
    margin: float = 1.25
    min_samples: int = 20

    def describe(self) -> str:
        return (
            f"within = p{self.percentile:g} of the step's latency times {self.margin:g}, warn = "
            f"p{self.warn_percentile:g} times {self.margin:g}, each rounded up to a duration "
            f"people write (steps seen fewer than {self.min_samples} times keep theirs)"
        )


@dataclass(frozen=True, slots=True)
class Proposal:
    """One step: what was observed, its windows now and proposed (None: none / kept)."""

    step: str
    samples: int
    p50_ms: int | None
    p90_ms: int | None
    p99_ms: int | None
    max_ms: int | None
    within_ms: int | None  # now
    warn_ms: int | None  # now
    new_within_ms: int | None  # proposed (None: kept as it is)
    new_warn_ms: int | None

    @property
    def changes(self) -> bool:
        return self.new_within_ms is not None and (
            self.new_within_ms != self.within_ms or self.new_warn_ms != self.warn_ms
        )


def propose(
    flow: CompiledFlow, latencies: Mapping[str, Sequence[int]], rule: Rule = Rule()
) -> list[Proposal]:
    """A proposal per step but the start, in declaration order."""
    out = []
    for step in flow.steps:
        if step.is_start:
            continue
        values = array("q", sorted(latencies.get(step.name, ())))
        high = percentile(values, rule.percentile)
        within = warn = None
        if len(values) >= rule.min_samples and high is not None:
            within = round_up(max(high, 1) * rule.margin)
            warn = round_up(max(percentile(values, rule.warn_percentile) or 1, 1) * rule.margin)
            if warn >= within:
                warn = _below(within)
        out.append(
            Proposal(
                step.name,
                len(values),
                percentile(values, 50),
                percentile(values, 90),
                percentile(values, 99),
                values[-1] if values else None,
                step.within_ms,
                step.warn_ms,
                within,
                warn,
            )
        )
    return out


# -- the next version of the file -----------------------------------------------------------------

_MARKER = re.compile(r"^---(\s|$)")


def _documents(text: str) -> list[list[str]]:
    """The file's lines cut at document markers (a marker line starts the next chunk)."""
    chunks: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if _MARKER.match(line) and chunks[-1]:
            chunks.append([])
        chunks[-1].append(line)
    return chunks


def _indents(lines: list[str]) -> tuple[int, int]:
    """(mapping indent, sequence dash offset) as the document writes them (default 2, 2)."""
    mapping = offset = None
    parent = False
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        if parent and indent > 0:
            if stripped.startswith("- "):
                offset = indent if offset is None else offset
            else:
                mapping = indent if mapping is None else mapping
        parent = indent == 0 and stripped.split("#")[0].rstrip().endswith(":")
        if mapping is not None and offset is not None:
            break
    return mapping or 2, 2 if offset is None else offset


def _yaml(mapping: int, offset: int) -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=mapping, sequence=offset + 2, offset=offset)
    return yaml


def _steps(doc: Any) -> dict[str, Any]:
    """Step mappings of the document by name (main path and alternate paths)."""
    found = {}
    lists = [doc.get("steps") or []]
    lists += [(p or {}).get("steps") or [] for p in (doc.get("paths") or {}).values()]
    for steps in lists:
        for s in steps:
            if isinstance(s, dict) and isinstance(s.get("step"), str):
                found[s["step"]] = s
    return found


def _set(step: Any, key: str, value: str, after: tuple[str, ...]) -> None:
    if key in step:
        step[key] = value
        return
    keys = list(step)
    at = max((keys.index(k) + 1 for k in after if k in keys), default=len(keys))
    step.insert(at, key, value)


def next_version_text(
    text: str, flow: CompiledFlow, proposals: Sequence[Proposal], version: int
) -> str:
    """The flow's file with its document at `version` and the proposed windows; the other
    documents as they are. Raises FlowError when the document cannot be found."""
    chunks = _documents(text)
    yaml = None
    for i, lines in enumerate(chunks):
        mapping, offset = _indents(lines)
        yaml = _yaml(mapping, offset)
        doc = yaml.load("".join(lines))
        if not (isinstance(doc, dict) and doc.get("flow") == flow.name):
            continue
        if doc.get("version") != flow.version:
            continue
        doc["version"] = version
        steps = _steps(doc)
        for p in proposals:
            step = steps.get(p.step)
            if step is None or p.new_within_ms is None:
                continue
            _set(step, "within", format_duration(p.new_within_ms), ("after", "on", "step"))
            if p.new_warn_ms is not None:
                _set(step, "warn", format_duration(p.new_warn_ms), ("within",))
        out = io.StringIO()
        marker = lines[0] if _MARKER.match(lines[0]) else ""
        body = lines[1:] if marker else lines
        blank = "".join(takewhile(lambda line: not line.strip(), body))  # ruamel drops them
        yaml.dump(doc, out)
        chunks[i] = [marker, blank, out.getvalue().lstrip("\n") if blank else out.getvalue()]
        return "".join("".join(c) for c in chunks)
    raise FlowError(
        [FlowProblem(flow.file, 0, f"version {flow.version} not found in the file", flow.name)]
    )
