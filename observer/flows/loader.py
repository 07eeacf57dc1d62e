"""Read flow files: YAML with line numbers -> `FlowSpec`, every problem located by file:line.

ruamel.yaml is used because it keeps the line of every key and item (PyYAML does not), so a
pydantic error's location path can be mapped back to the line the user has to fix.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from observer.errors import FlowError, FlowProblem
from observer.flows.spec import FlowSpec
from observer.limits import (
    MAX_FLOW_FILE_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_INT,
    MAX_YAML_NODES,
    MIN_YAML_INT,
)

__all__ = [
    "LineMap",
    "LoadedFlow",
    "document_digest",
    "flow_files",
    "load_flow_file",
    "load_flow_text",
    "load_flows",
]

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
    # issue 15 (versions kept with the state): what rebuilds the flow exactly elsewhere — the
    # text of its file, which document of it this is, the digest of the document as data (the
    # same whatever its comments and layout), and Avro schema texts by path as written (set
    # when rebuilt from the store instead of read from files next to the flow)
    text: str = ""
    document: int = 0
    digest: str = ""
    schemas: Mapping[str, str] | None = None


def flow_files(target: str | Path) -> list[Path]:
    """The flow files named by a file or a folder (`*.yaml`/`*.yml`, recursively, sorted)."""
    p = Path(target)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml") and f.is_file())
    return [p]


class _TooBig(Exception):
    """A document exceeds a limit of the loader; carries the 1-based line and the problem."""

    def __init__(self, line: int, message: str) -> None:
        self.line, self.message = line, message
        super().__init__(message)


class _Expander:
    """Convert ruamel nodes to plain Python, recording the line of every key and item.

    ruamel keeps an alias as a reference to its anchor's node; copying it out here expands it.
    Every node copied counts against MAX_YAML_NODES for the whole file, so nested aliases (a
    "billion laughs") stop at the budget instead of taking minutes and gigabytes."""

    def __init__(self) -> None:
        self.nodes = 0

    def plain(self, node: Any, path: Path_, lines: dict[Path_, int], depth: int = 0) -> Any:
        self.nodes += 1
        if self.nodes > MAX_YAML_NODES:
            raise _TooBig(
                lines.get(path[:1], 1),  # the line of the top-level key being expanded
                f"the file holds more than {MAX_YAML_NODES} values (counting every alias expanded)",
            )
        if isinstance(node, CommentedMap | CommentedSeq) and depth >= MAX_YAML_DEPTH:
            raise _TooBig(
                lines.get(path, 1), f"mappings and lists nest more than {MAX_YAML_DEPTH} deep"
            )
        if isinstance(node, CommentedMap):
            out: dict[Any, Any] = {}
            for k, v in node.items():
                try:
                    line = node.lc.key(k)[0] + 1
                except (KeyError, TypeError, AttributeError):
                    line = lines.get(path, 1)
                key = self._key(k, line)
                child = (*path, key)
                lines[child] = line
                out[key] = self.plain(v, child, lines, depth + 1)
            return out
        if isinstance(node, CommentedSeq):
            items = []
            for i, v in enumerate(node):
                try:
                    line = node.lc.item(i)[0] + 1
                except (KeyError, TypeError, AttributeError, IndexError):
                    line = lines.get(path, 1)
                lines[(*path, i)] = line
                items.append(self.plain(v, (*path, i), lines, depth + 1))
            return items
        if isinstance(node, str):
            return _text(str(node))
        if isinstance(node, int) and not isinstance(node, bool):
            return _small_int(int(node), lines.get(path, 1))
        return node

    def _key(self, key: Any, line: int) -> str:
        if isinstance(key, int) and not isinstance(key, bool):
            return str(_small_int(int(key), line))
        return _text(str(key))


def _small_int(value: int, line: int) -> int:
    if not MIN_YAML_INT <= value <= MAX_YAML_INT:
        digits = value.bit_length()
        raise _TooBig(
            line,
            f"an integer of {digits} bits is beyond what the observer can store (64-bit integers)",
        )
    return value


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
    expander = _Expander()  # one budget for every document of the file
    for doc in yaml.load_all(text):
        lines: dict[Path_, int] = {}
        if isinstance(doc, CommentedMap | CommentedSeq):
            lines[()] = (doc.lc.line or 0) + 1
        plain = expander.plain(doc, (), lines)
        yield plain, LineMap(file, lines)


_FLOW_SIGNIFICANT = re.compile(r"""["'#\[\]{}]""")
_QUOTED = {'"': re.compile(r'"(?:[^"\\]|\\.)*"', re.S), "'": re.compile(r"'(?:[^']|'')*'", re.S)}
_SCALAR_START = frozenset("[{,:-?\n")


def _check_flow_depth(text: str) -> None:
    """Raise _TooBig if `[`/`{` collections nest more than MAX_YAML_DEPTH deep.

    ruamel's scanner takes time quadratic in that depth (seconds for a few thousand bytes of
    `[[[[`), so this is checked on the text before parsing. It follows YAML closely enough to
    skip quoted scalars and comments; where it cannot tell, it counts a bracket."""
    depth = 0
    pos = 0
    while (m := _FLOW_SIGNIFICANT.search(text, pos)) is not None:
        ch, at = m.group(), m.start()
        pos = at + 1
        if ch in "]}":
            depth = max(0, depth - 1)
            continue
        j = at - 1
        while j >= 0 and text[j] in " \t":
            j -= 1
        starts = j < 0 or text[j] in _SCALAR_START
        if ch == "#":
            if j < at - 1 or j < 0 or text[j] == "\n":  # a comment: after a space or alone
                end = text.find("\n", at)
                pos = len(text) if end < 0 else end
        elif ch in "\"'":
            if starts:
                quoted = _QUOTED[ch].match(text, at)
                if quoted is None:
                    return  # unterminated: the parser reports it
                pos = quoted.end()
        elif starts or depth:
            depth += 1
            if depth > MAX_YAML_DEPTH:
                line = text.count("\n", 0, at) + 1
                raise _TooBig(line, f"mappings and lists nest more than {MAX_YAML_DEPTH} deep")


def _read(path: str | Path) -> str:
    """The text of a flow file: at most MAX_FLOW_FILE_BYTES of UTF-8 (a device or a FIFO named
    as a flow file is read no further). Raises _TooBig or OSError."""
    with open(path, "rb") as f:
        data = f.read(MAX_FLOW_FILE_BYTES + 1)
    if len(data) > MAX_FLOW_FILE_BYTES:
        raise _TooBig(0, f"the file is larger than {MAX_FLOW_FILE_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _TooBig(line, f"not UTF-8 text (byte 0x{data[exc.start]:02x})") from None


def document_digest(data: Any) -> str:
    """The digest of a flow document as data: comments, layout and key order do not count."""
    canonical = orjson.dumps(data, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(canonical).hexdigest()


def load_flow_file(path: str | Path) -> tuple[list[LoadedFlow], list[FlowProblem]]:
    """Parse every document of one file; return the flows and all problems found."""
    file = str(path)
    try:
        text = _read(path)
    except OSError as exc:
        return [], [FlowProblem(file, 0, f"cannot read file: {exc}")]
    except _TooBig as exc:
        return [], [FlowProblem(file, exc.line, exc.message)]
    return load_flow_text(text, file)


def load_flow_text(
    text: str, file: str, schemas: Mapping[str, str] | None = None
) -> tuple[list[LoadedFlow], list[FlowProblem]]:
    """Parse every document of a flow file's text (`file` names it in messages); `schemas`:
    the Avro schemas it names, by path as written (default: read next to `file`)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FLOW_FILE_BYTES:
        return [], [FlowProblem(file, 0, f"the file is larger than {MAX_FLOW_FILE_BYTES} bytes")]
    flows: list[LoadedFlow] = []
    problems: list[FlowProblem] = []
    try:
        _check_flow_depth(text)
        docs = list(_documents(text, file))
    except _TooBig as exc:
        return [], [FlowProblem(file, exc.line, exc.message)]
    except RecursionError:
        return [], [FlowProblem(file, 0, f"invalid YAML: nests more than {MAX_YAML_DEPTH} deep")]
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        reason = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        return [], [FlowProblem(file, line, f"invalid YAML: {reason or exc}")]
    except YAMLError as exc:
        return [], [FlowProblem(file, 0, f"invalid YAML: {exc}")]
    except Exception as exc:  # ruamel raises assorted errors on hostile input
        return [], [FlowProblem(file, 0, f"invalid YAML: {type(exc).__name__}: {exc}")]
    for document, (data, lines) in enumerate(docs):
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
        flows.append(LoadedFlow(spec, file, lines, text, document, document_digest(data), schemas))
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
