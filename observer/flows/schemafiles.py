"""Local schema files named by a flow (`schema:` of an Avro source or action)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["load_avro"]


def load_avro(path: str, flow_file: str) -> tuple[Any, str]:
    """A local Avro schema, parsed and as written (what a schema registry is given); a
    relative `path` is resolved against the flow file's folder (as an editor resolves the
    `$schema` comment), so flows validate from any directory."""
    import fastavro.schema

    file = Path(flow_file).parent / path
    return fastavro.schema.load_schema(str(file)), file.read_text(encoding="utf-8")
