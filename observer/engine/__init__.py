"""The pure engine: (compiled flow, key slot, input, now) -> (slot changed in place, effects).

No I/O, no clock reads, no logging configuration: time is always an argument (epoch ms).
`core.Engine` is the entry point; `machine` holds the transitions, `timers` what is due when,
`alerts` what is published, `state` and `codec` what is stored, `effects` what is returned.
"""
