"""Avro values in the Confluent wire format (magic byte 0, 4-byte big-endian schema id, then
the Avro body), with writer schemas fetched from a schema registry over HTTP and cached.

Without a registry, a value is read schemaless with the source's local schema (as in replay).
With one, a value that starts with the magic byte is read with the registry's writer schema
(resolved to the local schema when the source has one); anything else falls back to the local
schema. A registry that does not answer is retried with backoff for a bounded time before the
record is given up (it then goes to the dead-letter topic like any undecodable value).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from typing import Any

import fastavro
import httpx

from observer.flows.compiled import CompiledSource

__all__ = ["ConfluentAvroDecoder", "SchemaRegistryClient"]

log = logging.getLogger(__name__)
MAGIC = 0


class SchemaRegistryClient:
    """Fetches schemas by id (`GET /schemas/ids/{id}`), parsed and cached forever (ids are
    immutable). Credentials may be given in the URL (https://user:pass@host)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        retry_for_s: float = 30.0,
        client: httpx.Client | None = None,
    ) -> None:
        self._url = url.rstrip("/")
        self._client = client or httpx.Client(timeout=timeout_s)
        self._retry_for_s = retry_for_s
        self._cache: dict[int, Any] = {}
        self._lock = threading.Lock()

    def schema(self, schema_id: int) -> Any:
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        with self._lock:
            cached = self._cache.get(schema_id)
            if cached is None:
                cached = self._cache[schema_id] = fastavro.parse_schema(self._fetch(schema_id))
        return cached

    def _fetch(self, schema_id: int) -> Any:
        deadline = time.monotonic() + self._retry_for_s
        delay = 0.1
        while True:
            try:
                resp = self._client.get(f"{self._url}/schemas/ids/{schema_id}")
            except httpx.HTTPError as exc:
                problem = f"schema registry unreachable: {exc}"
            else:
                if resp.status_code == 200:
                    import orjson

                    return orjson.loads(orjson.loads(resp.content)["schema"])
                if 400 <= resp.status_code < 500:
                    raise ValueError(f"schema id {schema_id}: registry answered {resp.status_code}")
                problem = f"schema registry answered {resp.status_code}"
            if time.monotonic() + delay > deadline:
                raise ValueError(f"schema id {schema_id}: {problem}")
            log.warning("%s; retrying in %.1fs", problem, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def close(self) -> None:
        self._client.close()


class ConfluentAvroDecoder:
    """The `avro` decoder for `Ingest`: `decoder(bytes, source) -> object`."""

    def __init__(self, registry: SchemaRegistryClient | None) -> None:
        self._registry = registry

    def __call__(self, data: bytes, source: CompiledSource) -> Any:
        if self._registry is not None and len(data) >= 5 and data[0] == MAGIC:
            writer = self._registry.schema(int.from_bytes(data[1:5], "big"))
            return fastavro.schemaless_reader(io.BytesIO(data[5:]), writer, source.avro_schema)
        if source.avro_schema is None:
            raise ValueError("no Avro schema for this source (set schema: or a schema registry)")
        return fastavro.schemaless_reader(io.BytesIO(data), source.avro_schema)
