"""Summarise a `py-spy record --format raw` file (collapsed stacks): the functions with the
most self time and the most inclusive time, as a share of the samples under `--root`.

    py-spy record -o prof.txt --format raw -- python benchmarks/pipeline.py --profile cycle
    python benchmarks/profile_summary.py prof.txt --root stage_cycle
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")


def _name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    m = re.match(r"^(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not m:
        return frame
    func, path = m.groups()
    return f"{func} ({Path(path).name})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("file", type=Path)
    ap.add_argument("--root", default="", help="count only stacks through this function")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    selfs: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in args.file.read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        stack, n = m.group(1), int(m.group(2))
        frames = [_name(f) for f in stack.split(";")]
        if args.root:
            root = args.root
            idx = next(
                (
                    i
                    for i, f in enumerate(frames)
                    if (f.startswith(root + " ") or f.split(" ")[0].endswith("." + root))
                ),
                None,
            )
            if idx is None:
                continue
            frames = frames[idx:]
        total += n
        selfs[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"{total} samples under {args.root or 'all'}")
    print("\nself time:")
    for f, n in selfs.most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {f}")
    print("\ninclusive time:")
    for f, n in incl.most_common(args.top):
        print(f"  {100 * n / total:5.1f} %  {f}")


if __name__ == "__main__":
    main()
