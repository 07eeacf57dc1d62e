"""The demo: a simulated checkout shop on Kafka, the observer watching it, a live view.

Not part of the observer: a program of this repository, installed with the `[demo]` extra
(`pip install -e '.[demo]'`, which `ops/demo` does). Run it with `python -m demo` (or
`ops/demo`); see docs/demo.md. Modules:

    faults     which order gets which fault (seeded, exact rates)            pure
    shop       the eight services and their answers to commands               pure
    wire       a shop event -> the Kafka record the flow's selectors read     pure
    binding    what the demo reads from the flow file to run the shop         pure
    outage     --outage: a service down for a while; the flow's guarded copy   pure (+ the copy)
    simulator  the shop over time (pure `Simulation`) + `KafkaShop` producer
    records    the observer's alerts, outcomes and commands, read per order   pure
    expected   what the observer should publish: the engine over the shop's records
    summary    observed against expected -> verdicts per order and fault       pure
    tally      orders, faults and the observer's records, as the run goes     pure
    offline    the shop against the engine on a virtual clock (tests, --offline)
    kafka_io   topics, a consumer group starting at the end, the observer feed
    process    `observer run` as a child process
    held       the observer's held actions, read from its Redis (--outage)
    view       --plain log lines and the summary; live: the full-terminal view (rich)
    loop       the live loop: shop, feed, view, in turn, until every order ended
    app        the live run: topics, the observer, the loop, the summary
"""

__all__: list[str] = []
