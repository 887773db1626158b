"""Timing and reporting shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class Latency:
    samples_ms: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p99(self) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def time_calls(fn: Callable[[], object], repeat: int, warmup: int = 3) -> Latency:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return Latency(samples)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n## {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(cells[0], widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
    return str(value)


FIGURES_ENV = "TESSERA_BENCH_FIGURES"


@dataclass
class Figure:
    """One line of the summary table (`python -m tests.bench`): a Tessera figure and its same-run baseline.

    ``higher``: whether a larger value is better (throughput) or worse (latency). ``baseline`` None
    means the baseline was not measured (``baseline_note`` says why, e.g. Orthanc not installed).
    """

    area: str
    figure: str
    setup: str
    unit: str
    tessera: float
    baseline_name: str
    baseline: float | None
    higher: bool = True
    baseline_note: str = ""


def record(figure: Figure) -> None:
    """Append a figure to the file the summary command named; a benchmark run alone just prints."""
    import json
    import os
    from dataclasses import asdict

    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(asdict(figure)) + "\n")
