"""Load test of ``/classify``: many concurrent gradio_client clients against one app.

Launches the app in this process on 127.0.0.1 with the scratch model (the shipped
``weights/vit-scratch-cifar10.safetensors`` when it exists, else a tiny random one in a temporary
folder; ViT-B/16 is not loaded), or uses a running app given by ``--url`` (loopback only; pass
``--pid`` to measure its memory). Each round, ``--clients`` threads each send ``--requests``
``/classify`` requests back to back, uploading CIFAR-10 test images (random images when the
data set is absent). Every request must succeed. Reports per round: throughput, p50/p95
latency, and the server process's resident memory (RSS) after the round, with its growth.
In-process, the RSS includes the clients, which are created once and reused. ``--trace``
(in-process only) also follows the Python objects with ``tracemalloc`` from the end of round 1
to the end of the last round, and prints how much they grew and the lines that allocated most
of it; the timings of a traced run are slower and not comparable.

Run: ``python benchmarks/bench_load.py [--rounds N] [--clients N] [--requests N]
[--url URL --pid PID] [--threads N] [--trace]``; exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

# Run as a script from anywhere: make the repository root importable.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vit_demo.adapters import ModelKind  # noqa: E402
from vit_demo.card import ModelCard, save_model  # noqa: E402
from vit_demo.data import CIFAR10_DATA_CONFIG, CLASSES, DataUnavailable, load_cifar10  # noqa: E402
from vit_demo.model import PRESETS, ViT  # noqa: E402
from vit_demo.registry import SCRATCH, SCRATCH_CHECKPOINT  # noqa: E402
from vit_demo.settings import Settings  # noqa: E402

LOOPBACK = ("127.0.0.1", "localhost", "::1")
N_IMAGES = 16  # distinct images cycled through the requests
REQUEST_TIMEOUT_S = 120.0  # one request; a slower one counts as failed
ROUND_TIMEOUT_S = 600.0  # a whole round; requests not sent by then count as failed


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (Linux /proc), None where unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def write_images(folder: Path, data_dir: str | None) -> list[Path]:
    """``N_IMAGES`` PNG files: CIFAR-10 test images, or random 32x32 ones without the data."""
    try:
        pixels = load_cifar10("test", data_dir, download=False).x[:N_IMAGES].numpy()
    except DataUnavailable:
        pixels = np.random.default_rng(0).integers(0, 256, (N_IMAGES, 32, 32, 3), dtype=np.uint8)
    paths = []
    for i, x in enumerate(pixels):
        path = folder / f"bench-{i:02d}.png"
        Image.fromarray(x).save(path)
        paths.append(path)
    return paths


def tiny_weights(folder: Path) -> Path:
    """A random-weight ``cifar10-64x2/4`` scratch checkpoint under the shipped name."""
    torch.manual_seed(0)
    model = ViT(PRESETS["cifar10-64x2/4"])
    card = ModelCard(ModelKind.SCRATCH, CLASSES, CIFAR10_DATA_CONFIG, model_config=model.cfg,
                     preset="cifar10-64x2/4")
    save_model(folder, SCRATCH_CHECKPOINT, model.state_dict(), card)
    return folder


def launch_app(stack: ExitStack, data_dir: str | None) -> tuple[str, str]:
    """Start the app on a free loopback port; returns (url, where the weights came from)."""

    from vit_demo.checkpoint import default_weights_dir
    from vit_demo.ui import build_demo, create_context, serve_locally

    shipped = default_weights_dir()
    if (shipped / f"{SCRATCH_CHECKPOINT}.safetensors").is_file():
        weights, source = shipped, f"shipped {shipped / SCRATCH_CHECKPOINT}.safetensors"
    else:
        weights = tiny_weights(Path(stack.enter_context(tempfile.TemporaryDirectory())))
        source = "tiny random cifar10-64x2/4 (no shipped checkpoint)"
    # the clients are threads of this process: one client to the per-client cap, lifted here
    settings = replace(Settings.from_env(), client_requests=10 ** 6)
    ctx = create_context(weights, data_dir, allow_hub=False, settings=settings)
    demo = build_demo(ctx)
    url = serve_locally(demo, ctx)
    stack.callback(demo.close)
    return url, source


def client_loop(client, images: list[Path], offset: int, requests: int, start: threading.Barrier,
                deadline: float) -> tuple[list[float], list[str]]:
    """``requests`` back-to-back /classify calls until ``deadline`` (time.monotonic());
    (latencies in s of the successes, errors; requests left unsent count as errors)."""
    from gradio_client import handle_file

    latencies, errors = [], []
    start.wait()
    for j in range(requests):
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            errors += ["not sent: the round's time limit passed"] * (requests - j)
            break
        path = images[(offset + j) % len(images)]
        t0 = time.perf_counter()
        try:
            job = client.submit(handle_file(str(path)), SCRATCH, api_name="/classify")
            left, _, _ = job.result(timeout=min(REQUEST_TIMEOUT_S, left_s))
            if not left or left.get("label") not in CLASSES:
                raise ValueError(f"no class in the answer: {left!r}")
            latencies.append(time.perf_counter() - t0)
        except Exception as exc:  # every failure is counted and reported, none stops the round
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
    return latencies, errors


def python_growth(first: tracemalloc.Snapshot, last: tracemalloc.Snapshot, top: int = 6
                  ) -> tuple[int, list[tuple[int, str]]]:
    """Bytes of Python objects allocated between two snapshots and not freed, and the ``top``
    lines (innermost frame outside the standard library) that allocated the most of them."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = last.filter_traces(ignore).compare_to(first.filter_traces(ignore), "traceback")
    by_line: dict[str, int] = {}
    for stat in diff:
        frames = [f for f in stat.traceback if "site-packages" in f.filename
                  or str(REPO) in f.filename] or list(stat.traceback)
        where = f"{frames[-1].filename.split('site-packages/')[-1]}:{frames[-1].lineno}"
        by_line[where] = by_line.get(where, 0) + stat.size_diff
    lines = sorted(((size, where) for where, size in by_line.items()), reverse=True)[:top]
    return sum(stat.size_diff for stat in diff), lines


def run_round(clients: list, images: list[Path], requests: int) -> dict:
    """All clients at once; throughput, latency percentiles and failures of this round."""
    start = threading.Barrier(len(clients) + 1)
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    with ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(client_loop, c, images, i, requests, start, deadline)
                   for i, c in enumerate(clients)]
        start.wait()
        t0 = time.perf_counter()
        results = [f.result() for f in futures]
        wall = time.perf_counter() - t0
    latencies = sorted(t for lat, _ in results for t in lat)
    errors = [e for _, errs in results for e in errs]
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"requests": len(clients) * requests, "ok": len(latencies), "failed": len(errors),
            "errors": errors[:5], "wall_s": wall, "throughput_rps": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "max_ms": float(ms.max())}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print a table, return the settings, every round and the totals."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--requests", type=int, default=25, help="requests per client per round "
                        "(default 25)")
    parser.add_argument("--url", help="a running app on this machine (default: launch one here)")
    parser.add_argument("--pid", type=int, help="with --url: the server's process id, for its RSS")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default "
                        "$VIT_DEMO_DATA_DIR or torchvision's cache; random images without it)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in-process")
    parser.add_argument("--trace", action="store_true", help="follow the Python objects' growth "
                        "(tracemalloc) from round 1 to the last (in-process only; slower)")
    args = parser.parse_args(argv)
    if min(args.rounds, args.clients, args.requests) < 1 or args.clients * args.requests > 10_000:
        parser.error("rounds, clients and requests must be >= 1, clients x requests <= 10000")
    if args.trace and (args.url or args.rounds < 2):
        parser.error("--trace needs the app in this process and at least 2 rounds")
    if args.url and urlparse(args.url).hostname not in LOOPBACK:
        parser.error(f"--url must point at this machine ({', '.join(LOOPBACK)})")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    from gradio_client import Client

    with ExitStack() as stack:
        if args.url:
            url, source, pid = args.url.rstrip("/") + "/", "external app", args.pid
        else:
            url, source = launch_app(stack, args.data_dir)
            pid = os.getpid()
        images = write_images(Path(stack.enter_context(tempfile.TemporaryDirectory())),
                              args.data_dir)
        clients = [Client(url, verbose=False, max_workers=2, download_files=False)
                   for _ in range(args.clients)]
        for client in clients:
            stack.callback(client.close)
        client_loop(clients[0], images, 0, 1, threading.Barrier(1),
                    time.monotonic() + REQUEST_TIMEOUT_S)  # warm-up, untimed

        print(f"{url} ({source}), {args.clients} clients x {args.requests} requests, "
              f"{args.rounds} rounds, torch {torch.get_num_threads()} threads")
        print(f"{'round':>5} {'ok':>6} {'failed':>6} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} "
              f"{'max ms':>8} {'RSS MiB':>8} {'growth':>7}")
        rounds, snapshots = [], []
        if args.trace:
            tracemalloc.start(12)
        for r in range(1, args.rounds + 1):
            result = run_round(clients, images, args.requests)
            gc.collect()
            if args.trace and r in (1, args.rounds):
                snapshots.append(tracemalloc.take_snapshot())
            result["rss_mb"] = rss_mb(pid) if pid else None
            previous = rounds[-1]["rss_mb"] if rounds else None
            result["rss_growth_mb"] = (result["rss_mb"] - previous
                                       if result["rss_mb"] is not None and previous is not None
                                       else None)
            rounds.append(result)
            rss = "-" if result["rss_mb"] is None else f"{result['rss_mb']:.1f}"
            growth = "-" if result["rss_growth_mb"] is None else f"{result['rss_growth_mb']:+.1f}"
            print(f"{r:>5} {result['ok']:>6} {result['failed']:>6} {result['throughput_rps']:>7.2f} "
                  f"{result['p50_ms']:>8.1f} {result['p95_ms']:>8.1f} {result['max_ms']:>8.1f} "
                  f"{rss:>8} {growth:>7}")
            for error in result["errors"]:
                print(f"      {error}")

    rss = [r["rss_mb"] for r in rounds if r["rss_mb"] is not None]
    summary = {
        "url": url, "weights": source, "clients": args.clients, "requests_per_client": args.requests,
        "rounds": rounds, "failed": sum(r["failed"] for r in rounds),
        "rss_growth_first_to_last_mb": rss[-1] - rss[0] if len(rss) == len(rounds) else None,
    }
    verdict = "all requests succeeded" if summary["failed"] == 0 else f"{summary['failed']} FAILED"
    growth = summary["rss_growth_first_to_last_mb"]
    print(verdict + ("" if growth is None else f"; RSS growth round 1 -> {len(rss)}: {growth:+.1f} MiB"))
    if snapshots:
        total, lines = python_growth(*snapshots)
        tracemalloc.stop()
        requests = (args.rounds - 1) * args.clients * args.requests
        summary["python_growth_bytes"], summary["python_growth_by_line"] = total, lines
        print(f"Python objects, round 1 -> {args.rounds}: {total / 1024:+.1f} KiB "
              f"({total / requests:+.0f} B a request); most from:")
        for size, where in lines:
            print(f"  {size / 1024:+8.1f} KiB  {where}")
    return summary


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
