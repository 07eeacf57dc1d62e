"""The runtime: the consumer loop, the deadline ticker, watermarks, offsets and the outbox.

Pure parts (`watermark`, `offsets`, `outbox`, `batch`, `inspect`) do no I/O; `loop` drives the
ports of `ports` that the adapters implement; `observer.cli` wires them together.
"""
