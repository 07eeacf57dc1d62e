"""The exception tree.

    ObserverError                 root: everything the observer raises on purpose
    ├── FlowError                 a flow file is invalid (carries every problem found)
    ├── InputError                an input file for `observer replay` is malformed
    ├── ConfigError               runtime configuration is invalid
    ├── StoreError                the state store (Redis) failed; adapters translate to it
    └── RenderError               a template failed on an instance's data (short message)
        └── TemplateLimitError    ... because it went beyond a limit (observer/limits.py)

Adapters translate library errors (`raise StoreError(...) from exc`); nothing else leaks.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "FlowError",
    "FlowProblem",
    "InputError",
    "ObserverError",
    "RenderError",
    "StoreError",
    "TemplateLimitError",
]


class ObserverError(Exception):
    """Root of every error the observer raises on purpose."""


@dataclass(frozen=True, slots=True)
class FlowProblem:
    """One problem in a flow file, located by file and 1-based line."""

    file: str
    line: int
    message: str
    flow: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        prefix = f"flow '{self.flow}': " if self.flow else ""
        return f"{where}: {prefix}{self.message}"


class FlowError(ObserverError):
    """One or more flow files are invalid; `problems` lists every problem found."""

    def __init__(self, problems: list[FlowProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.message))
        super().__init__("\n".join(str(p) for p in self.problems))


class InputError(ObserverError):
    """An input file (replay events) is malformed at a given line."""

    def __init__(self, file: str, line: int, message: str) -> None:
        self.file, self.line = file, line
        super().__init__(f"{file}:{line}: {message}")


class ConfigError(ObserverError):
    """Runtime configuration is invalid (a flag, an environment variable)."""


class StoreError(ObserverError):
    """The state store failed (connection lost, script error)."""


class RenderError(ObserverError):
    """A template could not be rendered on an instance's data (undefined data, a type error,
    a division by zero, a limit). The message is short and names the template; whatever went
    wrong inside Jinja is the `__cause__`."""


class TemplateLimitError(RenderError):
    """A template went beyond a limit of `observer/limits.py` (size, work, loops,
    64-bit integers). Found while validating when it does not depend on the data."""
