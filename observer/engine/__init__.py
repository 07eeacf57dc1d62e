"""The pure engine: (compiled flow, key slot, input, now) -> (slot changed in place, effects).

No I/O, no clock reads, no logging configuration: time is always an argument (epoch ms).
"""

from observer.engine.core import Engine
from observer.engine.effects import Effect, Publish, Signal
from observer.engine.state import BufferedEvent, Event, InstanceState, KeySlot

__all__ = [
    "BufferedEvent",
    "Effect",
    "Engine",
    "Event",
    "InstanceState",
    "KeySlot",
    "Publish",
    "Signal",
]
