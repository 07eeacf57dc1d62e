"""The Schema Registry: confluent-kafka's own `schema_registry` client and deserializers
behind the runtime's decoding of `format: avro|protobuf|json_schema` values in the Confluent
wire format (`decoder.py`), a guard that keeps a sender who chooses schema ids from stalling
the loop or growing memory (`lookups.py`), and the wire format of actions that name a subject
(`subjects.py`)."""

from observer.adapters.schema_registry.decoder import RegistryDecoder
from observer.adapters.schema_registry.lookups import SchemaLookups, SchemaUnavailable, connect
from observer.adapters.schema_registry.setup import RegistryParts, registry_parts
from observer.adapters.schema_registry.subjects import resolve_subjects, subjects_of

__all__ = [
    "RegistryDecoder",
    "RegistryParts",
    "SchemaLookups",
    "SchemaUnavailable",
    "connect",
    "registry_parts",
    "resolve_subjects",
    "subjects_of",
]
