"""The composition root and command line: `observer validate | replay | run | status | ...`.

Only this package wires concrete pieces together (`wiring.py`) and configures logging
(`logs.py`); each command lives in `commands.py` or a module of its own.
"""

from observer.cli import actions as _actions  # noqa: F401  (registers `observer actions`)
from observer.cli import backtest as _backtest  # noqa: F401  (registers `observer backtest`)
from observer.cli import deploy as _deploy  # noqa: F401  (registers `observer deploy`)
from observer.cli import health as _health  # noqa: F401  (registers `observer health`)
from observer.cli import rules as _rules  # noqa: F401  (registers `observer rules`)
from observer.cli import suggest as _suggest  # noqa: F401  (registers `observer suggest`)
from observer.cli.commands import main
from observer.cli.wiring import build_service

__all__ = ["build_service", "main"]
