"""`SchemaLookups`: schema ids from records (the sender chooses them) looked up in the
registry without letting a sender stall the loop or grow memory.

- Bounded time: the client's requests time out after `schema_registry_timeout_ms` and are not
  retried (confluent's `max.retries` 0): no retry loop on the loop's thread.
- A negative cache: an id whose lookup failed (unknown, refused, unreachable registry) is not
  asked again for `negative_ttl_ms`; its records go to the dead-letter topic with the reason.
- A bound per source: at most `max_ids` distinct schema ids (found, or failed and not yet
  expired) per source; an id beyond it is not looked up and its record is dead-lettered.
Schemas found are cached by confluent's client (ids are immutable), once per id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from observer.errors import ConfigError

__all__ = ["SchemaLookups", "SchemaUnavailable", "connect"]

log = logging.getLogger(__name__)


class SchemaUnavailable(ValueError):
    """A schema id that cannot be had (now); its record goes to the dead-letter topic."""

    code = "schema"  # the dead letter's reason (`observer/correlation.py`)


def connect(conf: Mapping[str, Any]) -> Any:
    """confluent-kafka's `SchemaRegistryClient` (its configuration names); a configuration it
    refuses is a ConfigError (the credentials are never part of the message)."""
    from confluent_kafka.schema_registry import SchemaRegistryClient

    try:
        return SchemaRegistryClient(dict(conf))
    except (ValueError, TypeError, OSError) as exc:
        raise ConfigError(f"schema registry settings: {exc}") from None


class SchemaLookups:
    """Schemas by id for the decoders, per source, guarded (see the module's docstring)."""

    def __init__(
        self,
        client: Any,
        *,
        negative_ttl_s: float,
        max_ids: int,
        monotonic: Callable[[], float],
    ) -> None:
        self.client = client
        self._ttl = negative_ttl_s
        self._max = max_ids
        self._now = monotonic
        self._found: dict[str, set[int]] = {}  # source -> ids found
        self._failed: dict[int, tuple[float, str, str]] = {}  # id -> (until, source, reason)

    def schema(self, source: str, schema_id: int, fmt: str | None = None) -> Any:
        """The registry's schema `schema_id` (confluent's `Schema`); raises SchemaUnavailable."""
        found = self._found.setdefault(source, set())
        if schema_id in found:
            return self.client.get_schema(schema_id, None, fmt)  # cached by the client
        now = self._now()
        failed = self._failed.get(schema_id)
        if failed is not None:
            if failed[0] > now:
                raise SchemaUnavailable(f"{failed[2]} (not asked again for a while)")
            del self._failed[schema_id]
        if len(found) + self._failing(source, now) >= self._max:
            raise SchemaUnavailable(
                f"schema id {schema_id} not looked up: this source brought more than "
                f"{self._max} distinct schema ids"
            )
        try:
            schema = self.client.get_schema(schema_id, None, fmt)
        except Exception as exc:
            reason = f"schema id {schema_id}: {_why(exc)}"
            self._failed[schema_id] = (now + self._ttl, source, reason)
            log.warning("schema registry: %s; its records go to the dead-letter topic", reason)
            raise SchemaUnavailable(reason) from None
        found.add(schema_id)
        return schema

    def _failing(self, source: str, now: float) -> int:
        """Failed ids of `source` still in the negative cache (expired ones are dropped)."""
        for sid in [s for s, (until, _src, _r) in self._failed.items() if until <= now]:
            del self._failed[sid]
        return sum(1 for _until, src, _r in self._failed.values() if src == source)


def _why(exc: Exception) -> str:
    """What went wrong with a lookup, in a few words (never a credential: the client's errors
    carry the registry's answer or the transport error, not the request)."""
    from confluent_kafka.schema_registry import SchemaRegistryError

    if isinstance(exc, SchemaRegistryError):
        return f"the registry answered {exc.http_status_code} ({exc.error_message})"
    return f"the registry cannot be reached ({type(exc).__name__}: {exc})"
