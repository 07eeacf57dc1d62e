"""Recorded event timelines and their expected output through `observer replay`, byte for byte.

Each folder holds `events.jsonl`, `expected.jsonl` and optionally `args` (extra CLI arguments,
one a line) and `flow.yaml`, or `flow` naming a flow file of this folder that several cases
share (default: `spec-example.flow.yaml`, the contract's own example).
Regenerate after an intended change with `python tests/golden/test_golden.py --update`, then
read the diff: every changed line must be explained by the change.

Every case runs twice: with the hot path as installed (compiled by mypyc, see setup.py) and
from its Python sources (`OBSERVER_PURE_PYTHON=1`): both must give the same bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
CASES = sorted(p for p in HERE.iterdir() if p.is_dir() and (p / "events.jsonl").exists())


def flow_of(case: Path) -> Path:
    if (case / "flow.yaml").exists():
        return case / "flow.yaml"
    if (case / "flow").exists():
        return HERE / (case / "flow").read_text().strip()
    return HERE / "spec-example.flow.yaml"


def replay(case: Path, pure_python: bool = False) -> subprocess.CompletedProcess[bytes]:
    flow = flow_of(case)
    args = (case / "args").read_text().split("\n") if (case / "args").exists() else []
    cmd = [
        sys.executable,
        "-m",
        "observer.cli",
        "replay",
        str(flow.relative_to(ROOT)),
        "--events",
        str((case / "events.jsonl").relative_to(ROOT)),
        *[a for a in args if a],
    ]
    env = dict(os.environ, OBSERVER_PURE_PYTHON="1" if pure_python else "")
    return subprocess.run(cmd, capture_output=True, cwd=ROOT, timeout=60, env=env)


@pytest.mark.parametrize("build", ["installed", "sources"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden(case: Path, build: str) -> None:
    res = replay(case, pure_python=build == "sources")
    assert res.returncode == 0, res.stderr.decode()
    assert res.stdout.decode() == (case / "expected.jsonl").read_text()


if __name__ == "__main__" and "--update" in sys.argv:
    for case in CASES:
        res = replay(case)
        assert res.returncode == 0, res.stderr.decode()
        (case / "expected.jsonl").write_bytes(res.stdout)
        print(f"{case.name}: {len(res.stdout.splitlines())} lines")
