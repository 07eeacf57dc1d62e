"""`RegistryDecoder`: values of `format: avro|protobuf|json_schema` in the Confluent wire
format (magic byte 0, the 4-byte schema id, then the body; Protobuf adds its message indexes),
read with confluent-kafka's own deserializers over schemas from `SchemaLookups`.

- avro: `AvroDeserializer`, the writer schema resolved to the source's local `schema:` when
  it has one; a value without the magic byte is read schemaless with the local schema.
- protobuf: `ProtobufDeserializer` with a message class built from the writer schema, which
  the registry serves as a serialized FileDescriptorProto (`?format=serialized`, as Confluent
  Schema Registry does, or as confluent-kafka's serializers register it); the message becomes
  a dict by field name (int64 stay ints, enums their names, bytes base64 text).
- json_schema: `JSONDeserializer`, validated against the writer schema.
Every error says what went wrong; a schema that cannot be had carries the reason code
`schema`, anything else is `undecodable` (`Ingest` turns both into dead letters).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

from observer.adapters.schema_registry.lookups import SchemaLookups, SchemaUnavailable
from observer.flows.compiled import CompiledSource

__all__ = ["RegistryDecoder"]

_MAGIC = 0
_MAX_DESERIALIZERS = 4096  # (source, schema id, message) built at most; more: not cached


def _no_subject(ctx: Any, record_name: Any) -> None:
    """No subject: the schema id of the record is all that is looked up (no extra requests
    for subjects, associations or rules)."""
    return None


_CONF = {"subject.name.strategy": _no_subject}


class RegistryDecoder:
    """The `ValueDecoder` of `Ingest` with a schema registry: `decoder(bytes, source)`."""

    def __init__(self, lookups: SchemaLookups) -> None:
        self.lookups = lookups
        self._made: dict[tuple[str, int, tuple[int, ...]], Callable[[bytes], Any]] = {}

    def __call__(self, data: bytes, source: CompiledSource) -> Any:
        if len(data) < 5 or data[0] != _MAGIC:
            if source.format == "avro" and source.avro_schema is not None:
                import fastavro

                return fastavro.schemaless_reader(io.BytesIO(data), source.avro_schema)
            if data[:1] == b"\x01":
                raise ValueError("magic byte 1 (a schema GUID) is not supported; ids only")
            raise ValueError("not in the Confluent wire format (no magic byte 0 and schema id)")
        schema_id = int.from_bytes(data[1:5], "big")
        where = f"{source.topic}/{source.name}"
        if source.format == "protobuf":
            indexes = _message_indexes(data)
            schema = self.lookups.schema(where, schema_id, "serialized")
            key = (where, schema_id, indexes)
            decode = self._made.get(key) or self._remember(key, _protobuf(self, schema, indexes))
            return decode(data)
        self.lookups.schema(where, schema_id)  # guarded; the deserializer finds it cached
        key = (where, -1, ())  # one deserializer a source: it reads any schema id
        decode = self._made.get(key) or self._remember(key, self._deserializer(source))
        return decode(data)

    def _remember(
        self, key: tuple[str, int, tuple[int, ...]], decode: Callable[[bytes], Any]
    ) -> Callable[[bytes], Any]:
        if len(self._made) < _MAX_DESERIALIZERS:
            self._made[key] = decode
        return decode

    def _deserializer(self, source: CompiledSource) -> Callable[[bytes], Any]:
        client = self.lookups.client
        if source.format == "json_schema":
            from confluent_kafka.schema_registry.json_schema import JSONDeserializer

            json_d = JSONDeserializer(None, schema_registry_client=client, conf=dict(_CONF))
            return lambda data: json_d(data, None)
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        avro_d = AvroDeserializer(client, source.avro_schema_text, conf=dict(_CONF))
        return lambda data: avro_d(data, None)


def _message_indexes(data: bytes) -> tuple[int, ...]:
    """The message indexes after a Protobuf value's schema id (confluent's `SchemaId`)."""
    from confluent_kafka.schema_registry.serde import SchemaId

    sid = SchemaId("PROTOBUF")
    try:
        sid.from_bytes(io.BytesIO(data))
    except Exception as exc:
        raise ValueError(f"bad Protobuf message indexes: {exc}") from None
    indexes = tuple(sid.message_indexes or ())
    return indexes or (0,)


def _protobuf(
    owner: RegistryDecoder, schema: Any, indexes: tuple[int, ...]
) -> Callable[[bytes], Any]:
    """A decoder of one (schema, message) pair: confluent's ProtobufDeserializer over a
    message class built from the writer schema."""
    from confluent_kafka.schema_registry.protobuf import ProtobufDeserializer
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.message_factory import GetMessageClass

    try:
        fdp = descriptor_pb2.FileDescriptorProto.FromString(
            base64.b64decode(schema.schema_str, validate=True)
        )
    except Exception:
        raise SchemaUnavailable(
            "the registry serves this Protobuf schema as .proto text; it must serve it "
            "serialized (Confluent Schema Registry's ?format=serialized, or a schema registered "
            "as a serialized FileDescriptorProto, as confluent-kafka's serializer does)"
        ) from None
    pool = descriptor_pool.DescriptorPool()
    default = descriptor_pool.Default()
    for dep in fdp.dependency:
        if not dep.startswith("google/protobuf/"):
            raise SchemaUnavailable(f"Protobuf schema imports {dep}: references are not supported")
        pool.AddSerializedFile(default.FindFileByName(dep).serialized_pb)
    if not fdp.name:
        fdp.name = "observer-registry.proto"
    pool.Add(fdp)
    messages = fdp.message_type
    path = []
    try:
        msg = messages[indexes[0]]
        path.append(msg.name)
        for i in indexes[1:]:
            msg = msg.nested_type[i]
            path.append(msg.name)
    except IndexError:
        raise ValueError(f"message indexes {list(indexes)} are not in the schema") from None
    name = ".".join(([fdp.package] if fdp.package else []) + path)
    cls = GetMessageClass(pool.FindMessageTypeByName(name))
    conf = {"use.deprecated.format": False, **_CONF}
    proto_d = ProtobufDeserializer(cls, conf, owner.lookups.client)
    return lambda data: _as_dict(proto_d(data, None))


def _as_dict(msg: Any) -> dict[str, Any]:
    """A Protobuf message as the dict selectors read: every field by its name (unset scalars
    at their default, as proto3 reads them), int64 as int, enums by name, bytes as base64."""
    out: dict[str, Any] = {}
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            out[field.name] = {
                k: _value(field.message_type.fields_by_name["value"], v) for k, v in value.items()
            }
        elif _repeated(field):
            out[field.name] = [_value(field, v) for v in value]
        elif field.message_type is not None and not msg.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = _value(field, value)
    return out


def _repeated(field: Any) -> bool:
    """(protobuf 7 has `is_repeated` and no `label`; older ones only `label`)"""
    flag = getattr(field, "is_repeated", None)
    return bool(flag) if flag is not None else field.label == 3


def _value(field: Any, value: Any) -> Any:
    if field.message_type is not None:
        full = field.message_type.full_name
        if full.startswith("google.protobuf."):
            from google.protobuf import json_format

            return json_format.MessageToDict(value, preserving_proto_field_name=True)
        return _as_dict(value)
    if field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        return known.name if known is not None else value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value
