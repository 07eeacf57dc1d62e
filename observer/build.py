"""Which build of the hot path runs: the modules mypyc compiled at install (setup.py), or their
Python sources.

An editable install keeps the compiled modules next to their sources, and Python imports an
extension before a source of the same name: after an edit, a `git pull` or a branch switch the
old compiled code would run, silently. So at import the sources are compared with the digests
`setup.py` recorded when it built them; if any differs (or `OBSERVER_PURE_PYTHON=1` is set, or
nothing was compiled) every hot-path module is imported from its source, all of them together
(compiled modules call each other directly and cannot be mixed with sources).
`pip install -e .` builds them again.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = ["BuildInfo", "choose", "describe", "info"]

_PACKAGE = Path(__file__).resolve().parent
_MANIFEST = _PACKAGE / "_build.json"
_CHANGED = "changed since the install built it (pip install -e . again)"


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """`compiled`: the hot path runs as built by mypyc; else `why_not` says why not, and
    `stale` whether a source changed since the build (`pip install -e .` builds it again)."""

    compiled: bool
    why_not: str | None
    modules: tuple[str, ...]
    stale: bool = False


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds the listed modules as their `.py` source, before the extension next to it."""

    def __init__(self, modules: Sequence[str]) -> None:
        self._modules = frozenset(modules)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._modules:
            return None
        source = _PACKAGE.parent / (fullname.replace(".", "/") + ".py")
        return importlib.util.spec_from_file_location(fullname, source)


def _digest(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _pure_asked() -> bool:
    return os.environ.get("OBSERVER_PURE_PYTHON", "") not in ("", "0")


def _read_manifest() -> dict[str, object] | None:
    try:
        data = json.loads(_MANIFEST.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def choose() -> BuildInfo:
    """Decide, once, before any hot-path module is imported."""
    manifest = _read_manifest()
    if manifest is None:  # nothing compiled to shadow the sources
        why = "OBSERVER_PURE_PYTHON is set" if _pure_asked() else "no build record (_build.json)"
        return BuildInfo(False, why, ())
    sources = manifest.get("sources")
    modules = tuple(sources) if isinstance(sources, dict) else ()
    why_not = _why_sources(manifest, sources if isinstance(sources, dict) else {})
    if why_not is None:
        return BuildInfo(True, None, modules)
    sys.meta_path.insert(0, _SourcesFirst(modules))
    stale = bool(manifest.get("compiled")) and why_not.endswith(_CHANGED)
    return BuildInfo(False, why_not, modules, stale)


def _why_sources(manifest: dict[str, object], sources: dict[str, object]) -> str | None:
    if _pure_asked():
        return "OBSERVER_PURE_PYTHON is set"
    if not manifest.get("compiled"):
        return f"not compiled at install: {manifest.get('why_not')}"
    for module, digest in sources.items():
        source = _PACKAGE.parent / (module.replace(".", "/") + ".py")
        try:
            if _digest(source) != digest:
                name = source.relative_to(_PACKAGE.parent)
                return f"{name} {_CHANGED}"
        except OSError:
            return f"{source} is missing; {_CHANGED}"
    return None


_INFO: BuildInfo | None = None


def info() -> BuildInfo:
    """What `choose()` decided for this process."""
    global _INFO
    if _INFO is None:
        _INFO = choose()
    return _INFO


def describe() -> str:
    """One line for `observer --version` and the log at start."""
    built = info()
    if built.compiled:
        return f"hot path compiled by mypyc ({len(built.modules)} modules)"
    return f"hot path from Python sources: {built.why_not}"
