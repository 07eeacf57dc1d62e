"""Builds the hot path with mypyc: the modules below become C extensions (the same modules, from
the same sources, serve `observer replay` and `observer run`). Everything else is in
pyproject.toml.

The build never fails for want of a compiler: without one, or with `OBSERVER_PURE_PYTHON=1`,
the pure-Python modules are installed and run. Either way `observer/_build.json` records what
was built from which source, and `observer/__init__.py` runs the sources instead of a compiled
module whose source has changed since (docs/running.md, "The compiled hot path").
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
MANIFEST = ROOT / "observer" / "_build.json"

# The modules every event goes through (benchmarks/PROFILE.md, session 6). A compiled module's
# classes cannot be patched at run time and its annotations are checked at run time, so a type
# that lies fails here first.
HOT_PATH = [
    "observer/timefmt.py",
    "observer/ingest.py",
    "observer/engine/actions.py",
    "observer/engine/alerts.py",
    "observer/engine/alias_slots.py",
    "observer/engine/aliases.py",
    "observer/engine/budget.py",
    "observer/engine/codec.py",
    "observer/engine/core.py",
    "observer/engine/effects.py",
    "observer/engine/ids.py",
    "observer/engine/machine.py",
    "observer/engine/state.py",
    "observer/engine/timers.py",
    "observer/flows/compiled.py",
    "observer/flows/registry.py",
    "observer/flows/selectors.py",
    "observer/runtime/batch.py",
    "observer/runtime/cache.py",
    "observer/runtime/commits.py",
    "observer/runtime/deadlines.py",
    "observer/runtime/due_bounds.py",
    "observer/runtime/keyed.py",
    "observer/runtime/local.py",
    "observer/runtime/outbox.py",
    "observer/runtime/router.py",
    "observer/runtime/slot_history.py",
    "observer/runtime/tracker.py",
    "observer/runtime/watermark.py",
    "observer/runtime/writes.py",
    "observer/adapters/redis/keys.py",
    "observer/adapters/redis/store.py",
    "observer/adapters/redis/wire.py",
]

# What mypyc type-checks with: not the project's strict config (`mypy --strict` runs on the same
# sources in CI). The libraries whose types the hot path uses are build requirements
# (pyproject.toml): with their types `Any` the compiled code runs ~1.5x slower. Only the compiled
# modules' own errors count.
MYPY_FLAGS = [
    "--config-file=",
    "--python-version=3.11",
    "--ignore-missing-imports",
    "--follow-imports=silent",
]


def _digest(path: str) -> str:
    return hashlib.blake2b((ROOT / path).read_bytes(), digest_size=16).hexdigest()


def _module(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


# setuptools runs this file for every build hook; only these commands build extensions
BUILDS = {"build", "build_ext", "bdist_wheel", "editable_wheel", "develop", "install"}


def _compiled() -> tuple[list[Any], str | None]:
    """The extensions to build, or none and why not."""
    if not BUILDS & set(sys.argv[1:]):
        return [], "metadata only"
    if os.environ.get("OBSERVER_PURE_PYTHON", "") not in ("", "0"):
        return [], "OBSERVER_PURE_PYTHON is set"
    if not sysconfig.get_config_var("CC"):
        return [], "no C compiler configured for this Python"
    try:
        from mypyc.build import mypycify
    except ImportError as e:
        return [], f"mypyc is not installed ({e})"
    try:
        return mypycify(
            MYPY_FLAGS + HOT_PATH, opt_level="3", debug_level="0", group_name="observer.hot_path"
        ), None
    except BaseException as e:  # mypyc's own errors end in SystemExit
        return [], f"mypyc failed ({type(e).__name__}: {e})"


def _write_manifest(compiled: bool, why: str | None) -> None:
    MANIFEST.write_text(
        json.dumps(
            {
                "compiled": compiled,
                "why_not": why,
                "sources": {_module(p): _digest(p) for p in HOT_PATH},
            },
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )


class BuildExtOrPure(build_ext):
    """`build_ext` that falls back to the pure-Python modules when the C compiler fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # CompileError, LinkError, missing headers
            print(
                f"observer: the hot path is not compiled: the build failed ({e})", file=sys.stderr
            )
            _write_manifest(False, f"the C build failed: {e}")


extensions, why_not = _compiled()
if why_not != "metadata only":
    if why_not:
        print(f"observer: the hot path is not compiled: {why_not}", file=sys.stderr)
    _write_manifest(bool(extensions), why_not)
setup(ext_modules=extensions, cmdclass={"build_ext": BuildExtOrPure})
