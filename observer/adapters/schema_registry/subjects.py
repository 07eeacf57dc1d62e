"""The Confluent wire format of actions that name a registry `subject:` (with their local
Avro `schema:`): when the observer starts, each (subject, schema) is looked up in the registry
(and registered if the subject does not have it yet, as confluent-kafka's serializers do by
default; `register=False` only looks up) and its id becomes the 5-byte header
(magic byte 0, schema id) put before the Avro body of every such record. No lookup ever
happens while records are planned."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from observer.errors import ConfigError, ObserverError
from observer.flows.compiled import CompiledAction, CompiledFlow

__all__ = ["resolve_subjects", "subjects_of"]

log = logging.getLogger(__name__)


def subjects_of(flows: Iterable[CompiledFlow]) -> dict[str, tuple[str, str]]:
    """subject -> (its schema as written, the first action naming it) of every action with a
    subject; two actions giving one subject different schemas is a ConfigError."""
    out: dict[str, tuple[str, str]] = {}
    for flow in flows:
        for action in _actions(flow, set()):
            subject, text = action.subject, action.avro_schema_text
            if subject is None or text is None:
                continue
            where = f"flow {flow.name} v{flow.version} action {action.name}"
            known = out.get(subject)
            if known is not None and _canonical(known[0]) != _canonical(text):
                raise ConfigError(
                    f"{where} gives subject '{subject}' another schema than {known[1]}"
                )
            out.setdefault(subject, (text, where))
    return out


def _actions(obj: Any, seen: set[int]) -> Iterator[CompiledAction]:
    """Every action anywhere in a compiled flow (handlers of steps, errors, paths, SLA...)."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, CompiledAction):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _actions(getattr(obj, f.name), seen)
    elif isinstance(obj, tuple | list):
        for item in obj:
            yield from _actions(item, seen)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _actions(item, seen)


def resolve_subjects(
    client: Any, subjects: dict[str, tuple[str, str]], *, register: bool = True
) -> dict[str, bytes]:
    """subject -> wire-format header. Raises ConfigError when the registry refuses a schema,
    ObserverError when it cannot be reached or fails (`Service` retries those)."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryError

    out: dict[str, bytes] = {}
    for subject, (text, where) in subjects.items():
        schema = Schema(text, "AVRO")
        try:
            try:
                found = client.lookup_schema(subject, schema)
                schema_id = found.schema_id
            except SchemaRegistryError as exc:
                if exc.http_status_code != 404 or not register:
                    raise
                schema_id = client.register_schema(subject, schema)
                log.info(
                    "registered the schema of %s under subject %s (id %s)",
                    where,
                    subject,
                    schema_id,
                )
        except SchemaRegistryError as exc:
            if exc.http_status_code >= 500:
                raise ObserverError(f"schema registry: {exc.error_message}") from None
            raise ConfigError(
                f"{where}: subject '{subject}': the registry answered {exc.http_status_code} "
                f"({exc.error_message})"
            ) from None
        except Exception as exc:
            raise RuntimeError(
                f"schema registry cannot be reached: {type(exc).__name__}: {exc}"
            ) from None
        out[subject] = b"\x00" + int(schema_id).to_bytes(4, "big")
    return out


def _canonical(text: str) -> str:
    import json

    try:
        return json.dumps(json.loads(text), sort_keys=True)
    except ValueError:
        return text
