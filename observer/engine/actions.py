"""A handler's `publish:` action rendered into its record, or why it cannot be carried out.

An action cannot be carried out when one of its templates fails on the instance's data, its
value cannot be encoded (as JSON, or to its Avro schema), its topic is not a Kafka topic name,
or its record is larger than its topic accepts. `alerts.py` then publishes the alert with
`action_errors` and the action's dead letter (`action_dead_letter`) instead of the record.
Pure: encoding and measuring are computation, and replay and run share them.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from typing import Any

import orjson

from observer.engine.effects import Publish
from observer.errors import RenderError
from observer.flows.compiled import CompiledAction
from observer.record_size import RecordLimits, fit_dead_letter, header_bytes, record_bytes
from observer.topics import Topics

__all__ = ["ActionFailed", "action_dead_letter", "header_text", "publish_action"]

_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_MAX_ERROR_CHARS = 300


class ActionFailed(Exception):
    """The action cannot be carried out; the message says why, in one short line."""


def _short(text: str, most: int = 60) -> str:
    text = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= most else text[: most - 1] + "…"


def _failed(reason: str) -> ActionFailed:
    return ActionFailed(_short(reason, _MAX_ERROR_CHARS))


def header_text(v: Any) -> str:
    """A rendered header value (or record key) as text: JSON for objects and lists."""
    if isinstance(v, str):
        return v
    if v is None:
        return ""
    return (
        orjson.dumps(v).decode()
        if isinstance(v, dict | list)
        else (str(v).lower() if isinstance(v, bool) else str(v))
    )


def _encode(value: Any, avro_schema: Any) -> bytes:
    """The value as published: text as UTF-8, Avro with a schema, JSON otherwise."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if avro_schema is not None:
        return _avro(value, avro_schema)
    try:
        return orjson.dumps(value)
    except TypeError as exc:
        raise _failed(f"its value cannot be encoded as JSON: {exc}") from None


def _avro(value: Any, schema: Any) -> bytes:
    import fastavro
    from fastavro.validation import ValidationError, validate

    # validated first: fastavro writes an `int` beyond 32 bits without a word, which no
    # reader can read back
    try:
        validate(value, schema, raise_errors=True)
    except ValidationError as invalid:
        first = invalid.errors[0] if invalid.errors else str(invalid)
        raise _failed(f"its value does not fit its Avro schema: {first}") from None
    buf = io.BytesIO()
    try:
        fastavro.schemaless_writer(buf, schema, value)
    except Exception as exc:  # fastavro raises assorted types on data it cannot write
        raise _failed(f"its value cannot be encoded to its Avro schema: {exc}") from None
    return buf.getvalue()


def publish_action(
    action: CompiledAction, ctx: Mapping[str, Any], oid: str, limits: RecordLimits
) -> Publish:
    """The record of a `publish:` action, its value encoded and its size checked against its
    topic's limit. Raises ActionFailed."""
    assert action.topic is not None and action.value is not None
    try:
        topic = str(action.topic(ctx))
        rkey = action.key(ctx) if action.key is not None else None
        headers = action.headers(ctx) if action.headers is not None else {}
        value = action.value(ctx)
        hdrs = (
            *tuple((str(k), header_text(v)) for k, v in headers.items()),
            ("observer-id", oid),
        )
        key = None if rkey is None else header_text(rkey)
    except RenderError as render_error:
        raise _failed(str(render_error)) from None
    except TypeError as exc:  # a header or key object that JSON cannot hold
        raise _failed(f"a header or the key cannot be encoded as JSON: {exc}") from None
    if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
        raise _failed(f"topic {_short(topic)!r} is not a Kafka topic name")
    encoded = _encode(value, action.avro_schema)
    key_len = 0 if key is None else len(key.encode("utf-8", "surrogatepass"))
    wire = 0 if action.subject is None else 5  # the Confluent wire format's magic byte and id
    size = record_bytes(key_len, wire + len(encoded), header_bytes(hdrs))
    limit = limits.of(topic)
    if size > limit:
        raise _failed(
            f"its record of {size} bytes is larger than topic {topic!r} accepts ({limit} bytes)"
        )
    return Publish(
        "action",
        topic,
        key,
        value,
        hdrs,
        oid,
        avro_schema=action.avro_schema,
        subject=action.subject,  # issue 16: the Confluent wire format (added by the runtime)
        encoded=encoded,
    )


def action_dead_letter(
    flow: str, version: int, key: str, action: str, error: str, oid: str, topics: Topics
) -> Publish:
    """The dead letter of an action that cannot be carried out: a JSON record naming it, with
    the reason in `observer-error`; its Kafka key is the correlation key."""
    value = {"flow": flow, "version": version, "key": key, "action": action, "error": error}
    body = orjson.dumps(value)
    hdrs = (("observer-error", error), ("observer-id", oid))
    rkey = key.encode("utf-8", "surrogatepass")
    limit = topics.limits.of(topics.dlq)
    fkey, fitted, headers = fit_dead_letter(rkey, body, hdrs, limit, keep=len(hdrs))
    if fitted == body:
        return Publish("dlq", topics.dlq, key, value, headers, oid, encoded=body)
    # cut to fit (a tiny limit): what is published is no JSON any more, and replay shows it so
    shown = (fitted or b"").decode("utf-8", "replace")
    rk = key if fkey == rkey else (fkey or b"").decode("utf-8", "replace")
    return Publish("dlq", topics.dlq, rk, shown, headers, oid, encoded=fitted)
