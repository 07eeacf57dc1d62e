"""Adapters: every piece of I/O (Kafka, Redis, HTTP out) behind the runtime's ports.

Adapters translate library errors into `observer.errors` and never import each other; only
`observer.cli` wires them together.
"""
