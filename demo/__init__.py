"""The demo: a simulated checkout shop on Kafka, the observer watching it, a live view.

Run it with `python -m demo` (or `ops/demo`); see docs/demo.md. Modules:

    faults     which order gets which fault (seeded, exact rates)          pure
    shop       the eight services and their answers to commands             pure
    wire       a shop event -> the Kafka record the flow's selectors read   pure
    binding    what the demo reads from the flow file, and checks           pure
    simulator  the shop over time (pure `Simulation`) + `KafkaShop` producer
    tally      orders, faults and the observer's records -> verdicts        pure
    offline    the shop against the engine on a virtual clock (tests, --offline)
    kafka_io   topics, a consumer group starting at the end, the observer feed
    process    `observer run` as a child process
    view       live terminal view (rich) and --plain log lines
    app        the live loop
"""

__all__: list[str] = []
