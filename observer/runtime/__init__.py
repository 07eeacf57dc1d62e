"""The runtime of `observer run`: the consumer loop and its parts.

`loop.Runtime` coordinates one turn of the loop: the `router` (source topics -> keyed topic),
then the `tracker` (keyed topic -> state, deadlines, records), each with its own offset
bookkeeping (`commits`). The tracker writes through `writes`, publishes through `publisher`,
and fires deadlines with `deadlines`. Pure parts (`watermark`, `offsets`, `outbox`, `batch`,
`keyed`, `shards`, `cache`, `query`) do no I/O; everything else talks to the world only
through the ports of `ports`, which the adapters implement; `observer.cli` wires them together.
"""
