"""Flow versions as kept with the group's state (contract §8), and the rules of deploying them.

A deployed version is stored as what rebuilds it exactly: the text of its file, which document
of the file it is, the texts of the Avro schemas it names, and the file's name for messages.
It is recompiled when loaded, so an open or retained instance runs on its own version after any
restart, whatever files are passed.

Two definitions are the same when their documents hold the same data (comments, layout and key
order do not count) and their schemas the same JSON. A flow and version already deployed with
another definition is refused: a changed flow needs a new version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from observer.errors import FlowError, FlowProblem
from observer.flows.avro import read_avro_texts
from observer.flows.compiled import CompiledFlow
from observer.flows.compiler import compile_flow, compile_flows
from observer.flows.loader import LoadedFlow, load_flow_text, load_flows
from observer.flows.registry import FlowRegistry
from observer.timefmt import format_time

__all__ = [
    "DeployPlan",
    "StoredFlow",
    "deployable",
    "load_deployable",
    "plan_deploy",
    "rebuild",
    "rebuild_all",
    "stored_flow",
]


@dataclass(frozen=True, slots=True)
class StoredFlow:
    """One deployed flow version, as the group's state keeps it."""

    flow: str
    version: int
    file: str  # where it was deployed from (for messages)
    text: str  # the whole text of that file
    document: int  # which YAML document of the file is this flow
    schemas: Mapping[str, str]  # Avro schema texts, by path as written in the flow
    digest: str  # of the document as data and of the schemas: what "the same" means
    line: int = 0  # of `version:` in the file (messages)
    deployed_at: int | None = None  # epoch ms of the store's clock, once stored

    @property
    def field(self) -> str:
        """`<flow>:<version>`: its name in the store."""
        return f"{self.flow}:{self.version}"

    @property
    def label(self) -> str:
        when = "" if self.deployed_at is None else f", deployed {format_time(self.deployed_at)}"
        return f"{self.flow} v{self.version} ({self.file}{when})"

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "flow": self.flow,
                "version": self.version,
                "file": self.file,
                "text": self.text,
                "document": self.document,
                "schemas": dict(self.schemas),
                "digest": self.digest,
                "line": self.line,
                "deployed_at": self.deployed_at,
            }
        )

    @staticmethod
    def from_json(raw: bytes | str) -> StoredFlow:
        """Raises ValueError when `raw` is not a stored flow."""
        try:
            d = orjson.loads(raw)
            return StoredFlow(
                flow=str(d["flow"]),
                version=int(d["version"]),
                file=str(d["file"]),
                text=str(d["text"]),
                document=int(d["document"]),
                schemas={str(k): str(v) for k, v in dict(d["schemas"]).items()},
                digest=str(d["digest"]),
                line=int(d.get("line") or 0),
                deployed_at=None if d.get("deployed_at") is None else int(d["deployed_at"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a stored flow version: {exc}") from None


def _definition_digest(document_digest: str, schemas: Mapping[str, str]) -> str:
    parsed: dict[str, Any] = {}
    for path, text in schemas.items():
        try:
            parsed[path] = orjson.loads(text)
        except orjson.JSONDecodeError:
            parsed[path] = text
    canonical = orjson.dumps([document_digest, parsed], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def stored_flow(loaded: LoadedFlow) -> tuple[StoredFlow | None, list[FlowProblem]]:
    """What the store keeps of a loaded flow (its schemas read next to its file)."""
    texts, bad = read_avro_texts(loaded)
    line = loaded.lines.line(("version",))
    problems = [
        FlowProblem(
            loaded.file,
            line,
            f"Avro schema '{path}' cannot be kept with the flow: {why} (a kept flow is rebuilt "
            "from its schemas' texts alone: named types must be defined in the same file)",
            loaded.spec.flow,
        )
        for path, why in bad
    ]
    if problems:
        return None, problems
    flow = StoredFlow(
        flow=loaded.spec.flow,
        version=loaded.spec.version,
        file=loaded.file,
        text=loaded.text,
        document=loaded.document,
        schemas=texts,
        digest=_definition_digest(loaded.digest, texts),
        line=line,
    )
    return flow, []


def load_deployable(targets: Iterable[str | Path]) -> tuple[FlowRegistry, list[StoredFlow]]:
    """Load, compile and capture flow files or folders for deployment. Raises FlowError with
    every problem found."""
    return deployable(load_flows(targets))


def deployable(loaded: Sequence[LoadedFlow]) -> tuple[FlowRegistry, list[StoredFlow]]:
    """Compile and capture loaded flows for deployment. Raises FlowError."""
    registry = compile_flows(loaded)
    out: list[StoredFlow] = []
    problems: list[FlowProblem] = []
    for lf in loaded:
        flow, bad = stored_flow(lf)
        problems += bad
        if flow is not None:
            out.append(flow)
    if problems:
        raise FlowError(problems)
    return registry, out


def rebuild(stored: StoredFlow) -> CompiledFlow:
    """Compile a stored version again, exactly as it was deployed. Raises FlowError (a
    version this observer cannot rebuild, e.g. after a change of the flow language)."""
    loaded, problems = load_flow_text(stored.text, stored.file, stored.schemas)
    doc = next((lf for lf in loaded if lf.document == stored.document), None)
    if doc is None:
        if not problems:
            problems = [FlowProblem(stored.file, 0, "the stored document is missing")]
        raise FlowError(problems)
    if (doc.spec.flow, doc.spec.version) != (stored.flow, stored.version):
        found = f"{doc.spec.flow} v{doc.spec.version}"
        raise FlowError(
            [FlowProblem(stored.file, stored.line, f"the stored document holds {found}")]
        )
    compiled, problems = compile_flow(doc)
    if compiled is None:
        raise FlowError(problems)
    return compiled


def rebuild_all(stored: Iterable[StoredFlow]) -> tuple[FlowRegistry, list[str]]:
    """Every stored version rebuilt into one registry, and a message per version that cannot
    be (left out)."""
    registry = FlowRegistry()
    problems: list[str] = []
    for sf in sorted(stored, key=lambda s: (s.flow, s.version)):
        try:
            registry.add(rebuild(sf))
        except FlowError as exc:
            problems.append(f"{sf.label} cannot be rebuilt:\n{exc}")
    return registry, problems


@dataclass
class DeployPlan:
    """What deploying candidates onto what is stored does: versions to add, versions already
    there with the same definition, and refusals (then nothing is deployed)."""

    added: list[StoredFlow] = field(default_factory=list)
    unchanged: list[StoredFlow] = field(default_factory=list)
    refused: list[FlowProblem] = field(default_factory=list)


def plan_deploy(candidates: Sequence[StoredFlow], stored: Mapping[str, StoredFlow]) -> DeployPlan:
    """Compare candidates with the stored versions (by `field`); a candidate whose version is
    stored with another definition is refused, with a message naming both."""
    plan = DeployPlan()
    seen: dict[str, StoredFlow] = {}
    for c in candidates:
        other = stored.get(c.field) or seen.get(c.field)
        if other is None:
            plan.added.append(c)
            seen[c.field] = c
        elif other.digest == c.digest:
            plan.unchanged.append(c)
        else:
            plan.refused.append(
                FlowProblem(
                    c.file,
                    c.line,
                    f"version {c.version} is already deployed with a different definition "
                    f"(from {other.file}"
                    + ("" if other.deployed_at is None else f", {format_time(other.deployed_at)}")
                    + "); a changed flow needs a new version",
                    c.flow,
                )
            )
    return plan
