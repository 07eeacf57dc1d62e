"""What `observer run` (and `observer replay --schema-registry`) needs of the registry, built
from the runtime configuration and the flows: the decoder of registry formats, the wire-format
headers of actions that name a subject, and the step that resolves those headers (before the
loop starts; retried while the registry cannot be reached)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from observer.adapters.schema_registry.decoder import RegistryDecoder
from observer.adapters.schema_registry.lookups import SchemaLookups, connect
from observer.adapters.schema_registry.subjects import resolve_subjects, subjects_of
from observer.errors import ConfigError, ObserverError
from observer.flows.compiled import CompiledFlow

__all__ = ["RegistryParts", "registry_parts"]

_WIRE_FORMATS = ("protobuf", "json_schema")


@dataclass
class RegistryParts:
    """`decoder` None: no registry (Avro with local schemas only). `wire` is filled by
    `resolve` (None: no action names a subject)."""

    decoder: RegistryDecoder | None = None
    wire: dict[str, bytes] = field(default_factory=dict)
    resolve: Callable[[], None] | None = None
    close: Callable[[], None] = lambda: None
    # flows about to be deployed (hot reload, issue 15): a ConfigError refuses them
    check: Callable[[Iterable[CompiledFlow]], None] = lambda flows: None


def _needs(flows: Iterable[CompiledFlow]) -> list[str]:
    """What in the flows cannot work without a registry."""
    out = []
    for flow in flows:
        for src in flow.sources.values():
            if src.format in _WIRE_FORMATS:
                out.append(f"flow {flow.name} source {src.name} (format: {src.format})")
    return out


def registry_parts(
    conf: Mapping[str, Any] | None,
    flows: Iterable[CompiledFlow],
    *,
    negative_ttl_s: float,
    max_ids: int,
    monotonic: Callable[[], float],
    register: bool = True,
) -> RegistryParts:
    """`conf`: the client's configuration (`ObserverConfig.schema_registry_settings()`).
    Raises ConfigError when a flow needs a registry and none is configured."""
    flows = list(flows)
    subjects = subjects_of(flows)
    if conf is None:
        _check_without_registry(flows)
        return RegistryParts(check=_check_without_registry)
    client = connect(conf)
    lookups = SchemaLookups(
        client, negative_ttl_s=negative_ttl_s, max_ids=max_ids, monotonic=monotonic
    )
    parts = RegistryParts(RegistryDecoder(lookups), close=client.close)
    if subjects:

        def resolve() -> None:
            parts.wire.update(resolve_subjects(client, subjects, register=register))

        parts.resolve = resolve

    def check(new: Iterable[CompiledFlow]) -> None:
        """Subjects of flows deployed later are resolved then (on the loop's thread, bounded
        by the client's timeout); one that cannot be refuses the deployment."""
        wanted = {s: v for s, v in subjects_of(new).items() if s not in parts.wire}
        if wanted:
            try:
                parts.wire.update(resolve_subjects(client, wanted, register=register))
            except ObserverError as exc:
                raise ConfigError(str(exc)) from None

    parts.check = check
    return parts


def _check_without_registry(flows: Iterable[CompiledFlow]) -> None:
    flows = list(flows)
    needs = _needs(flows) + [f"subject '{s}' ({w})" for s, (_t, w) in subjects_of(flows).items()]
    if needs:
        raise ConfigError(
            "a schema registry is needed (set OBSERVER_SCHEMA_REGISTRY_URL) for " + "; ".join(needs)
        )
