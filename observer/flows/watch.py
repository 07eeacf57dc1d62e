"""`WatchedFlowFiles`: the flow files `observer run` was given, watched for changes (issue 15).

A change is seen by comparing the (path, mtime, size) of every flow file under the targets, and
of the Avro schemas the flows name, with what they were at the last load: a `stat` per file,
cheap enough to ask every couple of seconds. The signature is taken before the files are read,
so a file written during a load is loaded again at the next look.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from observer.flows.loader import flow_files
from observer.flows.registry import FlowRegistry
from observer.flows.stored import StoredFlow, load_deployable

__all__ = ["WatchedFlowFiles"]

_Signature = tuple[tuple[str, int | None, int | None], ...]


class WatchedFlowFiles:
    """Flow files or folders, loaded for deployment and watched."""

    def __init__(self, targets: Iterable[str | Path]) -> None:
        self.targets = tuple(str(t) for t in targets)
        self._schemas: tuple[Path, ...] = ()
        self._seen: _Signature | None = None

    def _signature(self, schemas: bool = True) -> _Signature:
        paths: list[Path] = []
        for target in self.targets:
            found = flow_files(target)
            paths += found if found else [Path(target)]
        return _stat([*paths, *(self._schemas if schemas else ())])

    def changed(self) -> bool:
        return self._signature() != self._seen

    def load(self) -> tuple[FlowRegistry, list[StoredFlow]]:
        """Raises FlowError; what was seen counts as loaded either way (a broken file is
        reported once, not at every look)."""
        files = self._signature(schemas=False)
        self._seen = files + _stat(self._schemas)
        registry, stored = load_deployable(self.targets)
        self._schemas = tuple(
            dict.fromkeys(Path(sf.file).parent / path for sf in stored for path in sf.schemas)
        )
        self._seen = files + _stat(self._schemas)
        return registry, stored


def _stat(paths: Iterable[Path]) -> _Signature:
    out: list[tuple[str, int | None, int | None]] = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(p), None, None))
    return tuple(out)
