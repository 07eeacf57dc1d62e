"""Read flow files: YAML with line numbers -> `FlowSpec`, every problem located by file:line.

ruamel.yaml is used because it keeps the line of every key and item (PyYAML does not), so a
pydantic error's location path can be mapped back to the line the user has to fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from observer.errors import FlowError, FlowProblem
from observer.flows.spec import FlowSpec

__all__ = ["LineMap", "LoadedFlow", "flow_files", "load_flow_file", "load_flows"]

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class LineMap:
    """1-based line of every node of one YAML document, by its path from the root."""

    file: str
    lines: dict[Path_, int]

    def line(self, path: Iterable[str | int]) -> int:
        """Line of the deepest known node on `path` (unknown parts, e.g. union tags, skipped)."""
        best = self.lines.get((), 1)
        current: Path_ = ()
        for part in path:
            candidate = (*current, part)
            if candidate in self.lines:
                current = candidate
                best = self.lines[candidate]
        return best


@dataclass(frozen=True, slots=True)
class LoadedFlow:
    """A parsed, shape-checked flow document and where it came from."""

    spec: FlowSpec
    file: str
    lines: LineMap


def flow_files(target: str | Path) -> list[Path]:
    """The flow files named by a file or a folder (`*.yaml`/`*.yml`, recursively, sorted)."""
    p = Path(target)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml") and f.is_file())
    return [p]


def _plain(node: Any, path: Path_, lines: dict[Path_, int]) -> Any:
    """Convert ruamel nodes to plain Python, recording the line of every key and item."""
    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for k, v in node.items():
            try:
                line = node.lc.key(k)[0] + 1
            except (KeyError, TypeError, AttributeError):
                line = lines.get(path, 1)
            child = (*path, str(k))
            lines[child] = line
            out[str(k)] = _plain(v, child, lines)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, v in enumerate(node):
            try:
                line = node.lc.item(i)[0] + 1
            except (KeyError, TypeError, AttributeError, IndexError):
                line = lines.get(path, 1)
            lines[(*path, i)] = line
            items.append(_plain(v, (*path, i), lines))
        return items
    if isinstance(node, str):
        return _text(str(node))
    return node


def _text(s: str) -> str:
    """Recombine surrogate pairs (ruamel leaves JSON-style escapes of astral characters as
    lone surrogates); a lone surrogate that remains becomes U+FFFD, never a crash."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _describe(loc: tuple[str | int, ...], data: Any) -> str:
    """Human path of a location, naming steps by their name: `steps[2] (paid).within`."""
    out: list[str] = []
    node = data
    for part in loc:
        if isinstance(part, int):
            label = f"[{part}]"
            if isinstance(node, list) and part < len(node):
                node = node[part]
                if isinstance(node, dict) and isinstance(node.get("step"), str):
                    label += f" ({node['step']})"
            out.append(label)
        else:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif not isinstance(node, dict):
                continue  # a union tag or validator name, not a YAML key
            out.append(("." if out else "") + part)
    return "".join(out)


def _pydantic_problems(
    exc: ValidationError, data: Any, lines: LineMap, flow: str | None
) -> list[FlowProblem]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = _describe(loc, data)
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'"
            where = _describe(loc[:-1], data)
        elif kind == "missing":
            msg = f"missing required key '{loc[-1]}'"
            where = _describe(loc[:-1], data)
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
        text = f"{where}: {msg}" if where else msg
        problems.append(FlowProblem(lines.file, lines.line(loc), text, flow))
    return problems


def _documents(text: str, file: str) -> Iterator[tuple[Any, LineMap]]:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    for doc in yaml.load_all(text):
        lines: dict[Path_, int] = {}
        if isinstance(doc, CommentedMap | CommentedSeq):
            lines[()] = (doc.lc.line or 0) + 1
        plain = _plain(doc, (), lines)
        yield plain, LineMap(file, lines)


def load_flow_file(path: str | Path) -> tuple[list[LoadedFlow], list[FlowProblem]]:
    """Parse every document of one file; return the flows and all problems found."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [FlowProblem(file, 0, f"cannot read file: {exc}")]
    flows: list[LoadedFlow] = []
    problems: list[FlowProblem] = []
    try:
        docs = list(_documents(text, file))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        reason = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        return [], [FlowProblem(file, line, f"invalid YAML: {reason or exc}")]
    except YAMLError as exc:
        return [], [FlowProblem(file, 0, f"invalid YAML: {exc}")]
    except Exception as exc:  # ruamel raises assorted errors on hostile input
        return [], [FlowProblem(file, 0, f"invalid YAML: {type(exc).__name__}: {exc}")]
    for data, lines in docs:
        if data is None:
            continue
        if not isinstance(data, dict):
            problems.append(FlowProblem(file, lines.line(()), "a flow document must be a mapping"))
            continue
        name = data.get("flow") if isinstance(data.get("flow"), str) else None
        try:
            spec = FlowSpec.model_validate(data)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(exc, data, lines, name))
            continue
        flows.append(LoadedFlow(spec, file, lines))
    if not flows and not problems:
        problems.append(FlowProblem(file, 0, "no flow in this file"))
    return flows, problems


def load_flows(targets: Iterable[str | Path]) -> list[LoadedFlow]:
    """Load every flow file named (files or folders). Raises FlowError listing all problems."""
    flows: list[LoadedFlow] = []
    problems: list[FlowProblem] = []
    seen: set[Path] = set()
    for target in targets:
        files = flow_files(target)
        if not files or (not Path(target).exists()):
            problems.append(FlowProblem(str(target), 0, "no such file or folder"))
            continue
        for f in files:
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            got, bad = load_flow_file(f)
            flows.extend(got)
            problems.extend(bad)
    if problems:
        raise FlowError(problems)
    return flows
