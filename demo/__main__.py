"""`python -m demo`: a simulated shop, the observer watching it, and what it catches.

The composition root of the demo: parses options, configures nothing else globally, picks
the view and runs either the live demo (Kafka, Redis, an `observer run` child process) or,
with `--offline`, the same shop against the engine on a virtual clock.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from demo.faults import DEFAULT_RATES, Fault
from demo.wire import DemoError

if TYPE_CHECKING:
    from demo.outage import Outage
    from demo.view import View

__all__ = ["main"]


def _default_flow() -> str:
    """flows/checkout.yaml of the working directory, else of the repository this runs from."""
    here = Path("flows/checkout.yaml")
    if here.exists():
        return str(here)
    repo = Path(__file__).resolve().parents[1] / "flows" / "checkout.yaml"
    return str(repo) if repo.exists() else str(here)


def _rate(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    fault = Fault(name)
    return click.option(
        f"--{name.replace('_', '-')}s",
        name,
        type=click.FloatRange(0, 1),
        default=DEFAULT_RATES[fault],
        show_default=True,
        help=f"Share of orders with the fault '{fault.label}'.",
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--orders",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after N orders, wait for them to end, print the summary.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop placing orders after S seconds.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=2.0,
    show_default=True,
    help="New orders per second.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed of every choice (faults, timings, data); random if not given.",
)
@_rate("slow_payment")
@_rate("lost_event")
@_rate("payment_failure")
@_rate("duplicate")
@_rate("out_of_order")
@click.option(
    "--outage",
    default=None,
    metavar="SERVICE:DURATION[@OFFSET]",
    help="Take a service down, e.g. payments:30s (from 10s after the first order; "
    "payments:30s@5s from 5s). The observer then runs the flow with guardrails.",
)
@click.option(
    "--plain",
    is_flag=True,
    help="One log line per alert, outcome and command (the default when not on a terminal).",
)
@click.option(
    "--offline", is_flag=True, help="No Kafka: run the shop against the engine on a virtual clock."
)
@click.option(
    "--flow",
    "flow_file",
    default=_default_flow,
    show_default="flows/checkout.yaml",
    help="The flow file the observer runs.",
)
@click.option(
    "--bootstrap-servers",
    default=lambda: (
        os.environ.get("OBSERVER_BOOTSTRAP_SERVERS")
        or f"localhost:{os.environ.get('OBSERVER_KAFKA_PORT') or 9092}"
    ),
    show_default="localhost:9092",
    help="Kafka [OBSERVER_BOOTSTRAP_SERVERS; else ops/stack's OBSERVER_KAFKA_PORT].",
)
@click.option(
    "--redis-url",
    default=lambda: (
        os.environ.get("OBSERVER_REDIS_URL")
        or f"redis://localhost:{os.environ.get('OBSERVER_REDIS_PORT') or 6379}/0"
    ),
    show_default="redis://localhost:6379/0",
    help="Redis for the observer [OBSERVER_REDIS_URL; else ops/stack's OBSERVER_REDIS_PORT].",
)
@click.option(
    "--http-port",
    type=int,
    default=None,
    help="Port of the observer's HTTP API (default: a free one).",
)
@click.option(
    "--key-prefix",
    default=None,
    help="The observer's Redis key prefix (default: observer-demo-<run id>).",
)
@click.option(
    "--keep-state", is_flag=True, help="Keep the run's Redis keys and consumer group afterwards."
)
@click.option(
    "--settle",
    type=click.FloatRange(min=0),
    default=None,
    help="After the last order, wait at most S seconds for every order to end (default: from the flow's windows).",
)
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where the logs, faults.jsonl and summary.json go (default: a folder under the temp dir).",
)
@click.option(
    "--summary-json",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the summary as JSON here.",
)
def main(
    orders: int | None,
    duration: float | None,
    rate: float,
    seed: int | None,
    slow_payment: float,
    lost_event: float,
    payment_failure: float,
    duplicate: float,
    out_of_order: float,
    outage: str | None,
    plain: bool,
    offline: bool,
    flow_file: str,
    bootstrap_servers: str,
    redis_url: str,
    http_port: int | None,
    key_prefix: str | None,
    keep_state: bool,
    settle: float | None,
    run_dir: Path | None,
    summary_json: Path | None,
) -> None:
    """A simulated checkout shop on Kafka, the observer watching it, and what it catches.

    Eight services (stock, shipping, tax, payment, packing, transport, stock levels, CRM) handle a
    steady stream of orders; some orders get a fault: a slow payment, a lost shipping event, a
    failed payment, a duplicate event, events read out of order. The observer (`observer run
    flows/checkout.yaml`, started here) raises alerts and sends compensating commands, which the
    services act on. The end shows whether every injected fault was detected.
    """
    # Ctrl-C stops the demo cleanly, even when started from somewhere that ignores SIGINT
    signal.signal(signal.SIGINT, signal.default_int_handler)
    rates = {
        Fault.SLOW_PAYMENT: slow_payment,
        Fault.LOST_EVENT: lost_event,
        Fault.PAYMENT_FAILURE: payment_failure,
        Fault.DUPLICATE: duplicate,
        Fault.OUT_OF_ORDER: out_of_order,
    }
    if sum(rates.values()) > 1:
        raise click.BadParameter(
            "the fault rates add up to more than 1 (an order gets at most one fault)"
        )
    if seed is None:
        seed = random.SystemRandom().randrange(1, 100_000)
    if orders is None and duration is None and offline:
        orders = 20
    try:
        down = _outage(outage)
        if offline:
            sys.exit(_offline(flow_file, seed, rates, orders or 20, rate, down))
        from demo.app import Options, run_live
        from demo.view import PlainView

        view: View = PlainView() if plain or not sys.stdout.isatty() else _live_view()
        opts = Options(
            flow_file=flow_file,
            rate=rate,
            seed=seed,
            rates=rates,
            orders=orders,
            duration_s=duration,
            settle_s=settle,
            bootstrap=bootstrap_servers,
            redis_url=redis_url,
            http_port=http_port,
            key_prefix=key_prefix,
            keep_state=keep_state,
            run_dir=run_dir,
            summary_json=summary_json,
            outage=down,
        )
        sys.exit(run_live(opts, view))
    except DemoError as exc:
        click.echo(f"demo: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def _live_view() -> View:
    """The full-terminal view, or a DemoError saying how to get rich (the `[demo]` extra)."""
    try:
        from demo.live import LiveView
    except ModuleNotFoundError as exc:
        if exc.name != "rich":
            raise
        raise DemoError(
            "the live view needs rich, which the [demo] extra installs: "
            "pip install -e '.[demo]' (ops/demo does it), or run with --plain"
        ) from None
    return LiveView()


def _outage(text: str | None) -> Outage | None:
    from demo.outage import parse_outage
    from demo.shop import CHECKOUT

    if text is None:
        return None
    return parse_outage(text, tuple(s.name for s in CHECKOUT.services if s.after))


def _offline(
    flow_file: str,
    seed: int,
    rates: dict[Fault, float],
    orders: int,
    rate: float,
    outage: Outage | None,
) -> int:
    import tempfile

    from demo.binding import bind
    from demo.offline import START_MS, run_offline
    from demo.outage import guard_flow
    from demo.shop import CHECKOUT
    from demo.view import Header, format_entry, format_summary

    binding = bind(flow_file, CHECKOUT)
    if outage is not None:
        run_dir = Path(tempfile.mkdtemp(prefix="observer-demo-offline-"))
        flow_file, guarded = guard_flow(flow_file, binding.spec, run_dir)
        click.echo(guarded)
        binding = bind(flow_file, CHECKOUT)
    click.echo(
        f"offline: {orders} orders through the engine on a virtual clock (seed {seed}); no Kafka, no Redis"
    )
    tally = run_offline(
        binding,
        seed=seed,
        rates=rates,
        orders=orders,
        rate=rate,
        on_entry=lambda e: click.echo(format_entry(e)),
        outage=outage,
    )
    header = Header(
        binding.flow.name,
        binding.flow.version,
        "sim",
        seed,
        rate,
        orders,
        None,
        "in-process",
        "-",
        "-",
        "",
    )
    summary = tally.summary()
    virtual_s = (max((e.at_ms for e in tally.entries), default=START_MS) - START_MS) / 1000
    click.echo(format_summary(summary, header, virtual_s))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    main()
