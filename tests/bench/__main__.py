"""Run every benchmark and print one table of figures with their same-run baselines (``make bench``).

    python -m tests.bench [--quick] [--no-orthanc] [--only NAME ...] [--args NAME="..."]

Each benchmark runs in its own process and prints its detailed tables; every figure it records
(tests/bench/measure.py, ``record``) is gathered here into one summary table: Tessera's figure,
the baseline measured in the same run (openslide, the ffmpeg CLI, whole rendered frames, Orthanc),
and their ratio. ``--quick`` runs every benchmark at tiny sizes (a smoke run: the figures mean
nothing, the table has every row). The full run fills the query archive with 100,000 instances and
ingests 10,000; the tiles benchmark generates a 40,000 x 30,000 slide on first use (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.measure import FIGURES_ENV, Figure, print_table
from tests.bench.servers import OrthancProcess

BENCHMARKS = ["archive", "dimse", "tiles", "cardiology", "mammography"]

FULL = {
    "archive": [
        "--files",
        "10000",
        "--instances",
        "100000",
        "--orthanc-instances",
        "10000",
        "--repeat",
        "100",
    ],
    "dimse": ["--store-files", "300", "--instances", "10000", "--repeats", "30"],
    "tiles": [],
    "cardiology": ["--frames", "100", "1000"],
    "mammography": [],
}
QUICK = {
    "archive": [
        *("--files", "6", "--instances", "60", "--orthanc-instances", "30", "--repeat", "3", "--no-import")
    ],
    "dimse": ["--store-files", "4", "--instances", "40", "--repeats", "3"],
    "tiles": ["--size", "small", "--tiles", "8", "--concurrency", "2"],
    "cardiology": ["--frames", "12"],
    "mammography": ["--size", "192x240", "--slices", "3", "--runs", "1"],
}
ORTHANC_FLAG = {"archive": "--no-orthanc", "dimse": "--no-orthanc"}

# The tiles benchmark (owned elsewhere) prints one progress line per cell; its figures are read from those.
TILE_CELL = re.compile(
    r"^(tessera-dicom|tessera-tiff|openslide)\s+(full-res|all-levels)\s+c=(\d+)\s+"
    r"cold\s+([\d.]+)/s\s+warm\s+([\d.]+)/s",
    re.MULTILINE,
)


def tile_figures(output: str) -> list[Figure]:
    cells: dict[tuple[str, str, int], tuple[float, float]] = {}
    for name, kind, concurrency, cold, warm in TILE_CELL.findall(output):
        cells[(name, kind, int(concurrency))] = (float(cold), float(warm))
    if not cells:
        return []
    top = max(c for _, _, c in cells)
    out = []
    for kind in ("full-res", "all-levels"):
        base = cells.get(("openslide", kind, top))
        for name, setup in (("tessera-dicom", "DICOM WSI, 2 proc"), ("tessera-tiff", "tiled TIFF, 2 proc")):
            ours = cells.get((name, kind, top))
            if ours is None:
                continue
            for index, cache in enumerate(("cold", "warm")):
                out.append(
                    Figure(
                        "tiles",
                        f"DZI tiles/s, {kind}, {cache}, {top} clients",
                        setup,
                        "tiles/s",
                        ours[index],
                        "openslide DeepZoomGenerator",
                        base[index] if base else None,
                    )
                )
    return out


def run(name: str, args: list[str], figures: Path) -> tuple[bool, str]:
    """Run one benchmark; its output goes to ours as it comes (kept for the tiles parser)."""
    command = [sys.executable, "-m", f"tests.bench.bench_{name}", *args]
    print(f"\n# {name}: {shlex.join(command[1:])}\n", flush=True)
    env = {**os.environ, FIGURES_ENV: str(figures)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)
    return process.wait() == 0, "".join(lines)


def summary_rows(figures: list[Figure]) -> list[list[object]]:
    rows: list[list[object]] = []
    for f in figures:
        if f.baseline is None or not f.baseline or not f.tessera:
            ratio = "–"
        else:
            ratio = f"{(f.tessera / f.baseline) if f.higher else (f.baseline / f.tessera):.2f}"
        baseline = f"{f.baseline_name}: " + (
            _number(f.baseline) if f.baseline is not None else f"n/a ({f.baseline_note or 'not measured'})"
        )
        rows.append([f.area, f.figure, f.setup, f"{_number(f.tessera)} {f.unit}", baseline, ratio])
    return rows


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every row")
    parser.add_argument("--no-orthanc", action="store_true", help="skip the Orthanc baselines")
    parser.add_argument(
        "--args", action="append", default=[], metavar='NAME="..."', help="replace one benchmark's arguments"
    )
    options = parser.parse_args(argv)
    names = options.names or BENCHMARKS
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    arguments = {name: list(args) for name, args in (QUICK if options.quick else FULL).items()}
    for item in options.args:
        name, _, text = item.partition("=")
        if name not in BENCHMARKS:
            parser.error(f"--args {item!r}: unknown benchmark {name!r}")
        arguments[name] = shlex.split(text)
    if options.no_orthanc:
        for name, flag in ORTHANC_FLAG.items():
            arguments[name].append(flag)
    elif not OrthancProcess.available():
        print("Orthanc is not installed: its baselines are n/a (apt-get install orthanc orthanc-dicomweb)")

    started = time.monotonic()
    failed = []
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="tessera-bench-figures-") as tmp:
        for name in names:
            path = Path(tmp) / f"{name}.jsonl"
            ok, output = run(name, arguments[name], path)
            if not ok:
                failed.append(name)
            if name == "tiles":
                figures += tile_figures(output)
            elif path.exists():
                figures += [Figure(**json.loads(line)) for line in path.read_text().splitlines()]
    rows = summary_rows(figures)
    for name in failed:
        rows.append([name, "benchmark failed (see its output above)", "", "n/a", "n/a", "–"])
    print_table(
        f"Summary: {os.cpu_count()} cores, {time.monotonic() - started:,.0f} s"
        + (" (--quick: sizes too small for the figures to mean anything)" if options.quick else ""),
        [
            "area",
            "figure",
            "setup",
            "Tessera",
            "baseline (same run)",
            "Tessera vs baseline (>1: Tessera better)",
        ],
        rows,
    )
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
