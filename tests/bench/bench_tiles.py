"""Deep-zoom tile throughput: Tessera (DICOM WSI, tiled TIFF) against openslide's DeepZoomGenerator.

One run measures, on the same large synthetic slide, three servers of 2 worker processes
each (sharing a port with SO_REUSEPORT, so both cores serve), taking turns cell by cell:

* ``tessera-dicom``: the real Tessera app and pathology routes over the archive;
* ``tessera-tiff``: the same tiling engine over the tiled TIFF through ``OpenSlideSource``;
* ``openslide``: the baseline, ``DeepZoomGenerator`` behind a minimal tornado handler
  (254 px tiles, overlap 1, JPEG quality 75, decode and re-encode every tile, like
  openslide's deepzoom example), ``get_tile`` in a thread pool.

Tile sets are seeded: ``full-res`` draws tiles from the full-resolution DZI level,
``all-levels`` picks one of the 8 largest DZI levels uniformly, then a tile. "cold" is
the first request of each tile after the servers start (the OS page cache is warm: the
files were just written); "warm" repeats the set after two warm-up passes (a keep-alive
connection lands on either process, and each process has its own tile cache). Cold cells use
a lean keep-alive HTTP/1.1 client on asyncio in this process (each tile exactly once); warm
cells use wrk when it is installed (Debian package ``wrk``; ``--client python`` otherwise),
cycling over the set for ``--seconds``: a Python client costs about as much CPU per request
as a warm tile, and on two shared cores it would cap the ratio it is measuring. Besides tiles/s and latency,
each cell reports the servers' CPU time per tile (from /proc): on a shared machine that is
the figure other load does not distort.

    .venv/bin/python tests/bench/bench_tiles.py [--slide-dir DIR] [--tiles 1500]

The large slide (40,000 × 30,000 px) is generated into --slide-dir on first use (~2 min).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BASELINE_TILE, BASELINE_OVERLAP, BASELINE_QUALITY = 254, 1, 75


# -- servers (run in child processes) ---------------------------------------------------------------


def _listen(app: object, port: int) -> None:
    from tornado.httpserver import HTTPServer
    from tornado.ioloop import IOLoop
    from tornado.netutil import bind_sockets

    server = HTTPServer(app)  # type: ignore[arg-type]
    server.add_sockets(bind_sockets(port, "127.0.0.1", reuse_port=True))
    IOLoop.current().start()


def serve_tessera_dicom(port: int, data_dir: Path) -> None:
    from server.archive.archive import Archive
    from server.config import load_settings
    from server.context import ServerContext
    from server.modules import ModuleRegistry
    from server.serve import freeze_startup_heap
    from server.web.app import make_app

    settings = load_settings({}, data_dir=data_dir)
    archive = Archive(settings, run_migrations=False)
    ctx = ServerContext(
        settings, archive, ThreadPoolExecutor(settings.worker_threads), ModuleRegistry.discover()
    )
    assert ctx.registry is not None
    ctx.registry.setup(ctx)
    app = make_app(ctx)
    freeze_startup_heap()  # as ``tessera serve`` does once start-up is done
    _listen(app, port)


def serve_tessera_tiff(port: int, slide: Path) -> None:
    """The engine over a vendor file: the module's tile path minus the archive lookup."""
    from tornado.web import Application, RequestHandler

    from modules.pathology.openslide_source import OpenSlideSource
    from server.tiles import CachedTile, DeepZoom, TileCache
    from server.tiles.http import finish_cached

    deepzoom = DeepZoom(OpenSlideSource(slide))
    cache = TileCache()
    executor = ThreadPoolExecutor(8)

    def produce(level: int, column: int, row: int) -> CachedTile:
        tile = deepzoom.read_tile(level, column, row)
        return CachedTile.of(tile.data, tile.media_type)

    class Tile(RequestHandler):
        async def get(self, level: str, column: str, row: str) -> None:
            key = (deepzoom.identity, int(level), int(column), int(row))
            tile = cache.get(key)
            if tile is None:
                tile = await asyncio.get_running_loop().run_in_executor(
                    executor, produce, int(level), int(column), int(row)
                )
                cache.put(key, tile)
            finish_cached(self, tile.data, tile.media_type, tile.etag)

    _listen(Application([(r"/tiles/(\d+)/(\d+)_(\d+)\.jpeg", Tile)]), port)


def serve_openslide(port: int, slide: Path) -> None:
    """The baseline: decode and re-encode every tile, as openslide's deepzoom example does."""
    import io

    import openslide
    from openslide.deepzoom import DeepZoomGenerator
    from tornado.web import Application, RequestHandler

    generator = DeepZoomGenerator(
        openslide.OpenSlide(str(slide)), BASELINE_TILE, BASELINE_OVERLAP, limit_bounds=True
    )
    executor = ThreadPoolExecutor(8)

    def render(level: int, column: int, row: int) -> bytes:
        buffer = io.BytesIO()
        generator.get_tile(level, (column, row)).save(buffer, "jpeg", quality=BASELINE_QUALITY)
        return buffer.getvalue()

    class Tile(RequestHandler):
        async def get(self, level: str, column: str, row: str) -> None:
            body = await asyncio.get_running_loop().run_in_executor(
                executor, render, int(level), int(column), int(row)
            )
            self.set_header("Content-Type", "image/jpeg")
            self.finish(body)

    _listen(Application([(r"/tiles/(\d+)/(\d+)_(\d+)\.jpeg", Tile)]), port)


# -- client -------------------------------------------------------------------------------------------


@dataclass
class Result:
    tiles_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_ms_per_tile: float = 0.0  # server processes' CPU time (all threads): immune to other load


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (all their threads), from /proc."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


async def _worker(port: int, paths: list[str], latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for path in paths:
            started = time.perf_counter()
            writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def _load(port: int, paths: list[str], concurrency: int) -> Result:
    latencies: list[float] = []
    errors: list[int] = []
    shares = [paths[i::concurrency] for i in range(concurrency)]
    started = time.perf_counter()
    await asyncio.gather(*(_worker(port, share, latencies, errors) for share in shares if share))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return Result(
        len(paths) / elapsed,
        statistics.median(latencies) * 1000,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        len(errors),
    )


WRK_SCRIPT = """
local paths, i = {}, 0
for line in io.lines(os.getenv("BENCH_PATHS")) do paths[#paths + 1] = line end
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), summary.errors.status))
end
"""


def run_wrk(
    port: int, paths: list[str], concurrency: int, pids: list[int], seconds: float, work: Path
) -> Result:
    """Warm cells with wrk (C, one thread): a load generator cheap enough that the two cores it
    shares with the servers go to the servers, so throughput ratios are not capped by the client."""
    path_file = work / "wrk-paths.txt"
    path_file.write_text("\n".join(paths) + "\n")
    script = work / "wrk-paths.lua"
    script.write_text(WRK_SCRIPT)
    before = cpu_seconds(pids)
    output = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", str(script), f"http://127.0.0.1:{port}"],
        env={**os.environ, "BENCH_PATHS": str(path_file)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    spent = cpu_seconds(pids) - before
    line = next(line for line in output.splitlines() if line.startswith("RESULT "))
    requests, micros, p50, p99, errors = (int(v) for v in line.split()[1:])
    return Result(requests / (micros / 1e6), p50 / 1000, p99 / 1000, errors, spent * 1000 / max(requests, 1))


def run_load(port: int, paths: list[str], concurrency: int, pids: list[int] | None = None) -> Result:
    before = cpu_seconds(pids) if pids else 0.0
    result = asyncio.run(_load(port, paths, concurrency))
    if pids:
        result.cpu_ms_per_tile = (cpu_seconds(pids) - before) * 1000 / len(paths)
    return result


# -- tile sets ----------------------------------------------------------------------------------------


def tile_set(level_tiles: list[tuple[int, int]], kind: str, count: int, seed: int, prefix: str) -> list[str]:
    """Distinct seeded tile paths: the full-resolution level, or one of the 8 largest levels."""
    rng = random.Random(seed)
    top = len(level_tiles) - 1
    chosen: dict[tuple[int, int, int], None] = {}
    capacity = (
        level_tiles[top][0] * level_tiles[top][1]
        if kind == "full-res"
        else sum(c * r for c, r in level_tiles[top - 7 :])
    )
    while len(chosen) < min(count, capacity):
        level = top if kind == "full-res" else rng.randint(top - 7, top)
        columns, rows = level_tiles[level]
        chosen[(level, rng.randrange(columns), rng.randrange(rows))] = None
    return [f"{prefix}{level}/{column}_{row}.jpeg" for level, column, row in chosen]


# -- orchestration ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(kind: str, argument: Path, processes: int) -> tuple[int, list[subprocess.Popen[bytes]]]:
    port = free_port()
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--port", str(port), "--argument", str(argument)],
            cwd=ROOT,
        )
        for _ in range(processes)
    ]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                time.sleep(1.0)  # let every process reach its accept loop
                return port, children
        except OSError:
            time.sleep(0.2)
    stop(children)
    raise RuntimeError(f"{kind} server did not start")


def stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        child.terminate()
    for child in children:
        child.wait(10)


def prepare(slide_dir: Path, size: str, work: Path) -> tuple[Path, Path, str]:
    """The slide (generated when missing) and an archive holding its DICOM files."""
    from sample_data.wsi import SIZES, generate
    from server.archive.archive import Archive
    from server.config import load_settings

    spec = SIZES[size]
    tiff = slide_dir / "slide.tiff"
    if not tiff.exists():
        print(f"generating the {size} slide into {slide_dir} …", flush=True)
        generate(spec, slide_dir, progress=True)
    data_dir = work / "tessera-data"
    archive = Archive(load_settings({}, data_dir=data_dir))
    for path in sorted((slide_dir / "dicom").glob("*.dcm")):
        outcome = archive.ingest_path(path)
        assert outcome.ok, outcome.reason
    archive.close()
    return data_dir, tiff, str(spec.series_instance_uid)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=("large", "small"), default="large", help="small: a smoke run")
    parser.add_argument("--slide-dir", type=Path, help="default: $TMPDIR/tessera-bench/{size}")
    parser.add_argument("--tiles", type=int, default=1500, help="distinct tiles per set and concurrency")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument(
        "--client",
        choices=("wrk", "python"),
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator for warm cells (cold cells always use the Python client: each tile once)",
    )
    parser.add_argument("--seconds", type=int, default=4, help="length of each warm cell with wrk")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--argument", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve = {
            "tessera-dicom": serve_tessera_dicom,
            "tessera-tiff": serve_tessera_tiff,
            "openslide": serve_openslide,
        }
        serve[args.serve](args.port, args.argument)
        return

    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    from server.tiles import dzi_level_dimensions

    concurrencies = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="tessera-bench-"))
    try:
        slide_dir = args.slide_dir or Path(tempfile.gettempdir()) / "tessera-bench" / args.size
        data_dir, tiff, series_uid = prepare(slide_dir, args.size, work)
        width, height = openslide.OpenSlide(str(tiff)).dimensions
        ours = [(-(-w // 256), -(-h // 256)) for w, h in dzi_level_dimensions(width, height)]
        baseline_dz = DeepZoomGenerator(
            openslide.OpenSlide(str(tiff)), BASELINE_TILE, BASELINE_OVERLAP, limit_bounds=True
        )
        theirs = list(baseline_dz.level_tiles)
        servers = [
            ("tessera-dicom", data_dir, ours, f"/pathology/slides/{series_uid}_files/"),
            ("tessera-tiff", tiff, ours, "/tiles/"),
            ("openslide", tiff, theirs, "/tiles/"),
        ]
        results: dict[tuple[str, str, str, int], Result] = {}
        # All servers run at once and take turns cell by cell, so load from anything else on the
        # machine falls on all of them alike (an idle server costs nothing).
        running: list[tuple[str, int, list[tuple[int, int]], str]] = []
        pids: dict[str, list[int]] = {}
        children: list[subprocess.Popen[bytes]] = []
        try:
            for name, argument, level_tiles, prefix in servers:
                port, started = start(name, argument, args.processes)
                children.extend(started)
                pids[name] = [child.pid for child in started]
                running.append((name, port, level_tiles, prefix))
            for set_index, kind in enumerate(("full-res", "all-levels")):
                # one seeded draw per set, cut into disjoint parts: every "cold" tile is new to the servers
                sets = {
                    name: tile_set(level_tiles, kind, args.tiles * len(concurrencies), set_index, prefix)
                    for name, _, level_tiles, prefix in running
                }
                for part, concurrency in enumerate(concurrencies):
                    cut = {
                        name: paths[part * args.tiles : (part + 1) * args.tiles]
                        for name, paths in sets.items()
                    }
                    for name, port, _, _ in running:
                        results[(name, kind, "cold", concurrency)] = run_load(
                            port, cut[name], concurrency, pids[name]
                        )
                    for name, port, _, _ in running:
                        if name != "openslide":  # no tile cache to fill; a repeat would only cost time
                            for _ in range(2):  # connections land on either process: let both cache the set
                                run_load(port, cut[name], concurrency)
                    for name, port, _, _ in running:
                        results[(name, kind, "warm", concurrency)] = (
                            run_wrk(port, cut[name], concurrency, pids[name], args.seconds, work)
                            if args.client == "wrk"
                            else run_load(port, cut[name], concurrency, pids[name])
                        )
                    for name, _, _, _ in running:
                        cold = results[(name, kind, "cold", concurrency)]
                        warm = results[(name, kind, "warm", concurrency)]
                        print(
                            f"{name:14} {kind:10} c={concurrency:<3} cold {cold.tiles_per_second:7.0f}/s "
                            f"warm {warm.tiles_per_second:7.0f}/s  errors {cold.errors + warm.errors}",
                            flush=True,
                        )
        finally:
            stop(children)
        report(results, concurrencies, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(
    results: dict[tuple[str, str, str, int], Result], concurrencies: list[int], args: argparse.Namespace
) -> None:
    print(
        f"\nTiles/s (p50 / p99 ms), {args.tiles} distinct tiles per cell, {args.processes} server processes each, "
        f"{os.cpu_count()} cores shared with the client. Ratio = Tessera ÷ openslide baseline, same cell.\n"
    )
    header = (
        f"{'set':10} {'cache':5} {'conc':>4} | "
        + " | ".join(f"{name:^30}" for name in ("tessera-dicom", "tessera-tiff", "openslide"))
        + " | ratio dicom | ratio tiff"
    )
    print(header)
    print("-" * len(header))
    for kind in ("full-res", "all-levels"):
        for cache in ("cold", "warm"):
            for concurrency in concurrencies:
                cells = []
                for name in ("tessera-dicom", "tessera-tiff", "openslide"):
                    r = results[(name, kind, cache, concurrency)]
                    cells.append(f"{r.tiles_per_second:8.0f} ({r.p50_ms:6.1f} / {r.p99_ms:6.1f})")
                base = results[("openslide", kind, cache, concurrency)].tiles_per_second
                dicom = results[("tessera-dicom", kind, cache, concurrency)].tiles_per_second / base
                tiff = results[("tessera-tiff", kind, cache, concurrency)].tiles_per_second / base
                print(
                    f"{kind:10} {cache:5} {concurrency:>4} | "
                    + " | ".join(f"{c:^30}" for c in cells)
                    + f" | {dicom:10.1f}× | {tiff:8.1f}×"
                )
    print(
        "\nServer CPU per tile (ms, both processes, all threads) — what a tile costs whatever else runs "
        "on the machine; capacity ≈ cores ÷ CPU per tile. Ratio = openslide ÷ Tessera.\n"
    )
    print(
        f"{'set':10} {'cache':5} {'conc':>4} | {'dicom':>7} {'tiff':>7} {'openslide':>9} | ratio dicom | ratio tiff"
    )
    for kind in ("full-res", "all-levels"):
        for cache in ("cold", "warm"):
            for concurrency in concurrencies:
                cost = {
                    n: results[(n, kind, cache, concurrency)].cpu_ms_per_tile
                    for n in ("tessera-dicom", "tessera-tiff", "openslide")
                }
                ratio = {n: cost["openslide"] / cost[n] if cost[n] else float("inf") for n in cost}
                print(
                    f"{kind:10} {cache:5} {concurrency:>4} | {cost['tessera-dicom']:7.2f} {cost['tessera-tiff']:7.2f} "
                    f"{cost['openslide']:9.2f} | {ratio['tessera-dicom']:10.1f}× | {ratio['tessera-tiff']:8.1f}×"
                )
    errors = sum(r.errors for r in results.values())
    print(f"\nnon-200 answers: {errors}")


if __name__ == "__main__":
    main()
