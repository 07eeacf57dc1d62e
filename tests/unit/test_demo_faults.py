"""Fault assignment: deterministic by seed, exact rates per block of orders."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from demo.faults import BLOCK, DEFAULT_RATES, PLANNED, Fault, FaultPlanner


def faults(seed: int, n: int, rates: dict[Fault, float] | None = None) -> list[Fault | None]:
    planner = FaultPlanner(seed, DEFAULT_RATES if rates is None else rates)
    return [planner.fault_of(i) for i in range(1, n + 1)]


def test_same_seed_same_faults_different_seed_different_faults() -> None:
    assert faults(7, 100) == faults(7, 100)
    assert faults(7, 100) != faults(8, 100)


def test_an_order_fault_does_not_depend_on_which_orders_were_asked_before() -> None:
    planner = FaultPlanner(7, DEFAULT_RATES)
    assert planner.fault_of(37) == faults(7, 37)[-1]


def test_default_rates_show_every_fault_twice_in_twenty_orders() -> None:
    counts = Counter(faults(7, 20))
    assert {f: counts[f] for f in PLANNED} == dict.fromkeys(PLANNED, 2)
    assert counts[None] == 10


def test_small_rates_are_exact_over_many_blocks() -> None:
    rates = {Fault.SLOW_PAYMENT: 0.03, Fault.DUPLICATE: 0.25}
    counts = Counter(faults(1, 60 * BLOCK, rates))
    assert counts[Fault.SLOW_PAYMENT] == round(0.03 * 60 * BLOCK)
    assert counts[Fault.DUPLICATE] == round(0.25 * 60 * BLOCK)
    assert counts[Fault.LOST_EVENT] == 0


def test_zero_rates_give_clean_orders() -> None:
    assert set(faults(3, 50, {})) == {None}


@pytest.mark.parametrize(
    "rates", [{Fault.DUPLICATE: 1.5}, {Fault.DUPLICATE: -0.1}, dict.fromkeys(Fault, 0.3)]
)
def test_bad_rates_are_refused(rates: dict[Fault, float]) -> None:
    with pytest.raises(ValueError):
        FaultPlanner(1, rates)


@given(
    st.integers(0, 10_000),
    st.lists(st.floats(0, 1), min_size=len(PLANNED), max_size=len(PLANNED)).filter(
        lambda r: sum(r) <= 1
    ),
)
def test_every_block_holds_exactly_its_orders(seed: int, shares: list[float]) -> None:
    planner = FaultPlanner(seed, dict(zip(PLANNED, shares, strict=True)))
    for index in range(3):
        assert len(planner.block(index)) == BLOCK
