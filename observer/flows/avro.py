"""Local Avro schemas named by a flow (`schema:` of a source or of a `publish:` action).

A relative path is resolved against the flow file's folder (as an editor resolves the
`$schema` comment), so flows validate from any directory. A flow rebuilt from the group's
state (`stored.py`) carries the schemas' texts instead, by path as written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from observer.flows.loader import LoadedFlow
from observer.flows.spec import FlowSpec

__all__ = ["avro_paths", "avro_text", "load_avro", "read_avro_texts"]


def avro_paths(spec: FlowSpec) -> list[str]:
    """Every local schema the flow names, as written, in order, once each."""
    paths = [s.schema_ for s in spec.sources.values() if s.format == "avro" and s.schema_]
    paths += [a.publish.schema_ for a in spec.actions.values() if a.publish and a.publish.schema_]
    return list(dict.fromkeys(p for p in paths if p is not None))


def load_avro(path: str, loaded: LoadedFlow) -> Any:
    """The parsed schema at `path` (as written in the flow). Raises on any problem."""
    import fastavro
    import fastavro.schema

    if loaded.schemas is not None:
        text = loaded.schemas.get(path)
        if text is None:
            raise ValueError("the schema was not stored with the flow")
        return fastavro.parse_schema(orjson.loads(text))
    return fastavro.schema.load_schema(str(Path(loaded.file).parent / path))


def avro_text(path: str, loaded: LoadedFlow) -> str:
    """The schema at `path` as written (issue 16: what a schema registry is given, and the
    reader schema of its Avro deserializer). Raises on any problem."""
    if loaded.schemas is not None:
        text = loaded.schemas.get(path)
        if text is None:
            raise ValueError("the schema was not stored with the flow")
        return text
    return (Path(loaded.file).parent / path).read_text(encoding="utf-8")


def read_avro_texts(loaded: LoadedFlow) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The text of every schema the flow names, read next to its file, checked to stand on
    its own (a flow kept with the state is rebuilt from these texts alone); and the
    (path, problem) of those that cannot be."""
    import fastavro

    if loaded.schemas is not None:
        return dict(loaded.schemas), []
    texts: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for path in avro_paths(loaded.spec):
        try:
            text = (Path(loaded.file).parent / path).read_text(encoding="utf-8")
            fastavro.parse_schema(orjson.loads(text))
        except Exception as exc:
            problems.append((path, f"{type(exc).__name__}: {exc}"))
            continue
        texts[path] = text
    return texts, problems
