"""Which order gets which fault: deterministic for a seed, exact rates over every 20 orders. Pure.

Each order gets at most one fault. Rates are fractions of orders (0.1 = one order in ten). The
planner deals orders in blocks of `BLOCK`; a fault's count in a block is what its rate owes so
far (error diffusion: rate 0.03 gives one order in blocks 1, 2 and 4 — 3 in 60), and the block
is shuffled with a generator seeded by (seed, block). So `--orders 20` with the default rates
shows every fault, and the same seed always picks the same orders.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["BLOCK", "DEFAULT_RATES", "PLANNED", "Fault", "FaultPlanner", "order_rng"]

BLOCK = 20


class Fault(enum.StrEnum):
    """A fault the simulator can inject into one order."""

    SLOW_PAYMENT = "slow_payment"  # payment captured after its window: `late`
    LOST_EVENT = "lost_event"  # a shipping event never published: `missing`, a command
    PAYMENT_FAILURE = "payment_failure"  # PaymentFailed: `error`, compensation path
    DUPLICATE = "duplicate"  # one event published twice with the same id: nothing
    OUT_OF_ORDER = "out_of_order"  # OrderPlaced read after later events: nothing
    # not dealt by the planner (no rate): an order that reached the service of `--outage`
    # while it was down; what the observer does about it is the engine's (and guardrails') to say
    OUTAGE = "outage"

    @property
    def label(self) -> str:
        return self.value.replace("_", " ")

    @property
    def needs_alert(self) -> bool:
        """A deviation from the process the observer is there to catch (slow payment, lost
        event, failed payment), not transport noise it must absorb in silence (a duplicate,
        records read out of order). Which alerts it raises is the engine's to say."""
        return self in (Fault.SLOW_PAYMENT, Fault.LOST_EVENT, Fault.PAYMENT_FAILURE)


PLANNED: tuple[Fault, ...] = tuple(f for f in Fault if f is not Fault.OUTAGE)  # dealt by rate

DEFAULT_RATES: Mapping[Fault, float] = {
    Fault.SLOW_PAYMENT: 0.1,
    Fault.LOST_EVENT: 0.1,
    Fault.PAYMENT_FAILURE: 0.1,
    Fault.DUPLICATE: 0.1,
    Fault.OUT_OF_ORDER: 0.1,
}


def order_rng(seed: int, order_no: int, purpose: str) -> random.Random:
    """A generator for one purpose of one order: independent of how many others were drawn."""
    return random.Random(f"{seed}/{order_no}/{purpose}")


@dataclass(frozen=True, slots=True)
class FaultPlanner:
    """Assigns faults to order numbers (1-based). Rates must be >= 0 and sum to at most 1."""

    seed: int
    rates: Mapping[Fault, float]

    def __post_init__(self) -> None:
        bad = [f"{f.value}={r}" for f, r in self.rates.items() if not 0 <= r <= 1]
        if bad:
            raise ValueError(f"fault rates must be between 0 and 1: {', '.join(bad)}")
        if sum(self.rates.values()) > 1 + 1e-9:
            raise ValueError("fault rates add up to more than 1 (an order gets at most one fault)")

    def _owed(self, fault: Fault, orders: int) -> int:
        # floor with a small tolerance, so 0.1 * 20 * 3 counts as 6, not 5.999...
        return math.floor(self.rates.get(fault, 0.0) * orders + 1e-9)

    def block(self, index: int) -> list[Fault | None]:
        """The faults of orders `index*BLOCK + 1 .. (index+1)*BLOCK`, in order."""
        deck: list[Fault | None] = []
        for fault in PLANNED:
            deck += [fault] * (
                self._owed(fault, (index + 1) * BLOCK) - self._owed(fault, index * BLOCK)
            )
        del deck[BLOCK:]  # rates adding up to ~1 may round one over in a block
        deck += [None] * (BLOCK - len(deck))
        random.Random(f"{self.seed}/block/{index}").shuffle(deck)
        return deck

    def fault_of(self, order_no: int) -> Fault | None:
        """The fault of order `order_no` (1-based), or None for a clean order."""
        if order_no < 1:
            raise ValueError("order numbers start at 1")
        index, pos = divmod(order_no - 1, BLOCK)
        return self.block(index)[pos]
