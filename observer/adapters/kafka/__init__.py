"""Kafka adapters over confluent-kafka: the consumer (`KafkaEventSource`), the idempotent
producer (`KafkaRecordSink`), topic creation (`ensure_topics`) and Avro decoding with a
schema registry (now `adapters/schema_registry/`)."""
