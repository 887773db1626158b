"""Run every benchmark in turn: ``python -m tests.bench [NAME ...]`` (``make bench``).

Each prints its figures next to a baseline measured in the same run. Names: archive,
dimse, tiles, cardiology, mammography (default: all). The tiles benchmark generates a
40,000 x 30,000 slide on first use (a few minutes).
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ["archive", "dimse", "tiles", "cardiology", "mammography"]


def main(argv: list[str]) -> int:
    names = argv or BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    failed = []
    for name in names:
        print(f"\n# {name}\n", flush=True)
        if subprocess.call([sys.executable, "-m", f"tests.bench.bench_{name}"]) != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
