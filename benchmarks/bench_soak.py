"""Soak: a launched app under mixed well-formed load plus the hostile requests of issue 29, for
``--minutes`` (default 30), reported every ``--period-s`` seconds (default 300).

The server runs in a process of its own (so that its memory is its own), on 127.0.0.1 with the
shipped scratch ViT (a tiny random one when it is absent; ViT-B/16 is not loaded: no hub),
behind-a-proxy mode on, so that each simulated visitor is its own client by the last
``X-Forwarded-For`` address, as on a Space. At the same time:

- a bystander (one client) classifies an image every second: its latency is the figure;
- ``--visitors`` well-formed visitors each loop over /classify, /rollout, /inside, /status;
- a flooder (one client, ``--flood`` threads) sends /classify back to back: beyond its share
  (``client_requests`` in flight) it is refused with HTTP 429, which is the expected answer;
- every ``--hostile-every-s`` seconds one round of the hostile requests: a 1 x 1,000,000 px
  PNG, a Content-Length over the limit, a chunked upload over it, two files in one upload, an
  empty session id, an example index past the examples, an image given as a URL, and an image
  inline as a data: URL. Each must get its refusal (or, for the long PNG, an answer).

Per period: well-formed requests done per second, the bystander's p50/p95, errors among
well-formed requests (any failure is one), the flooder's answered / refused counts, hostile
requests that did not get what they should, the server's resident memory and its cache folder.

Run: ``python benchmarks/bench_soak.py [--minutes 30] [--period-s 300] [--data-dir DIR]``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import httpx  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_load import rss_mb, write_images  # noqa: E402

ROLLOUT = ["scratch", "grad", "mean", 0.0, 0, "predicted", -1, None, "jet", 0.5, False, "photo",
           False]
SERVER = """
import sys, time
from pathlib import Path
from vit_demo.checkpoint import default_weights_dir
from vit_demo.registry import SCRATCH_CHECKPOINT
from vit_demo.ui import build_demo, create_context, serve_locally
sys.path.insert(0, sys.argv[3])
from bench_load import tiny_weights
weights = default_weights_dir()
if not (weights / f"{SCRATCH_CHECKPOINT}.safetensors").is_file():
    weights = tiny_weights(Path(sys.argv[2]))
ctx = create_context(weights, sys.argv[1] or None, allow_hub=False)
demo = build_demo(ctx)
print(serve_locally(demo, ctx), flush=True)
while True:
    time.sleep(3600)
"""


class Tally:
    """Thread-safe counts and latencies of one period."""

    def __init__(self):
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.bystander: list[float] = []
        self.seen: dict[str, str] = {}  # the first failure of each kind, in words

    def add(self, key: str, failure: Exception | None = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if failure is not None:
                self.seen.setdefault(key, f"{type(failure).__name__}: {failure}"[:200])

    def take(self) -> tuple[Counter, list[float], dict[str, str]]:
        with self.lock:
            counts, latencies, seen = self.counts, self.bystander, self.seen
            self.counts, self.bystander, self.seen = Counter(), [], {}
        return counts, latencies, seen


def start_server(data_dir: str, work: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "VIT_DEMO_BEHIND_PROXY": "1", "GRADIO_TEMP_DIR": str(work / "cache"),
           "VIT_DEMO_WORK_DIR": str(work / "app"), "PYTHONPATH": str(REPO)}
    server = subprocess.Popen([sys.executable, "-c", SERVER, data_dir, str(work / "weights"),
                               str(REPO / "benchmarks")], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = ""
    while not url.startswith("http"):
        url = server.stdout.readline().strip()
        if server.poll() is not None:
            raise RuntimeError("the server did not start")
    return server, url


def client(url: str, address: str) -> Client:
    return Client(url, verbose=False, headers={"X-Forwarded-For": address}, download_files=False)


def bystander(url: str, image: Path, tally: Tally, stop: threading.Event) -> None:
    c = client(url, "10.0.0.1")
    while not stop.is_set():
        start = time.perf_counter()
        try:
            c.predict(handle_file(str(image)), "scratch", api_name="/classify")
            with tally.lock:
                tally.bystander.append(time.perf_counter() - start)
            tally.add("well-formed done")
        except Exception as exc:  # noqa: BLE001 (any failure of a well-formed request counts)
            tally.add("well-formed errors", exc)
        stop.wait(1.0)


def visitor(url: str, i: int, images: list[Path], tally: Tally, stop: threading.Event) -> None:
    c = client(url, f"10.1.0.{i}")
    calls = [lambda img: c.predict(handle_file(str(img)), "scratch", api_name="/classify"),
             lambda img: c.predict(handle_file(str(img)), *ROLLOUT, api_name="/rollout"),
             lambda img: c.predict("scratch", handle_file(str(img)), api_name="/inside"),
             lambda img: c.predict(api_name="/status")]
    n = 0
    while not stop.is_set():
        try:
            calls[n % len(calls)](images[n % len(images)])
            tally.add("well-formed done")
        except Exception as exc:  # noqa: BLE001
            tally.add("well-formed errors", exc)
        n += 1


def flooder(url: str, image: Path, tally: Tally, stop: threading.Event) -> None:
    c = client(url, "10.2.0.1")
    while not stop.is_set():
        try:
            c.predict(handle_file(str(image)), "scratch", api_name="/classify")
            tally.add("flood answered")
        except Exception as exc:  # noqa: BLE001
            refused = "429" in str(exc)
            tally.add("flood refused (429)" if refused else "flood other errors",
                      None if refused else exc)


def png_bytes(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 128).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def hostile_round(url: str, tally: Tally, max_bytes: int, long_png: Path) -> None:
    """One of each hostile request; counts those that did not get the answer they should."""
    headers = {"X-Forwarded-For": "10.3.0.1"}
    host = urlparse(url)
    checks: dict[str, bool | Exception | None] = {}  # True: the answer it should get
    with httpx.Client(timeout=60, headers=headers) as http:
        c = client(url, "10.3.0.2")
        start = time.perf_counter()
        try:
            c.predict(handle_file(str(long_png)), "scratch", api_name="/classify")
            checks["1x1,000,000 png answered within 10 s"] = time.perf_counter() - start < 10
        except Exception as exc:  # noqa: BLE001
            checks["1x1,000,000 png answered within 10 s"] = exc
        with socket.create_connection((host.hostname, host.port), timeout=30) as sock:
            sock.sendall(f"POST /gradio_api/queue/join HTTP/1.1\r\nHost: {host.netloc}\r\n"
                         f"Content-Length: {10 * max_bytes}\r\n\r\n".encode())
            checks["Content-Length over the limit: 413"] = b" 413 " in sock.recv(4096)

        def chunks():
            yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="x.bin"\r\n\r\n'
            for _ in range(max_bytes // 65536 + 2):
                yield b"x" * 65536

        answer = http.post(f"{url}gradio_api/upload", content=chunks(),
                           headers={"Content-Type": "multipart/form-data; boundary=b"})
        checks["chunked upload over the limit: 413"] = answer.status_code == 413
        two = [("files", (f"f{i}.png", b"x" * 100)) for i in range(2)]
        checks["two files in one upload: 400"] = http.post(
            f"{url}gradio_api/upload", files=two).status_code == 400
        checks["empty session id: 400"] = http.post(
            f"{url}gradio_api/queue/join",
            json={"data": [], "fn_index": 0, "session_hash": ""}).status_code == 400
        for name, call in (("example 25: clear error", lambda: c.predict(25, api_name="/classify_example")),
                           ("image URL: refused", lambda: c.predict(
                               handle_file("http://127.0.0.1:9/x.png"), "scratch", api_name="/classify"))):
            try:
                call()
                checks[name] = None
            except Exception as exc:  # noqa: BLE001
                ok = "There is no example" in str(exc) or "web address" in str(exc)
                checks[name] = exc if not ok else True
        inline = "data:image/png;base64," + base64.b64encode(png_bytes((64, 64))).decode()
        try:
            c.predict({"url": inline, "meta": {"_type": "gradio.FileData"}}, "scratch",
                      api_name="/classify")
            checks["inline data: URL answered"] = True
        except Exception as exc:  # noqa: BLE001
            checks["inline data: URL answered"] = exc
        c.close()
    for name, ok in checks.items():
        if ok is True:
            tally.add("hostile as expected")
        else:
            tally.add(f"hostile NOT as expected: {name}", ok if isinstance(ok, Exception) else None)


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2 ** 20


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--period-s", type=float, default=300.0, help="report every (s)")
    parser.add_argument("--visitors", type=int, default=3)
    parser.add_argument("--flood", type=int, default=12, help="the flooder's threads")
    parser.add_argument("--hostile-every-s", type=float, default=20.0)
    parser.add_argument("--data-dir", default=os.environ.get("VIT_DEMO_DATA_DIR", ""))
    args = parser.parse_args(argv)
    from vit_demo.settings import Settings

    max_bytes = Settings.from_env().max_bytes
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    images = write_images(work, args.data_dir or None)
    long_png = work / "long.png"
    long_png.write_bytes(png_bytes((1, 1_000_000)))
    server, url = start_server(args.data_dir, work)
    tally, stop = Tally(), threading.Event()
    threads = [threading.Thread(target=bystander, args=(url, images[0], tally, stop))]
    threads += [threading.Thread(target=visitor, args=(url, i, images, tally, stop))
                for i in range(args.visitors)]
    threads += [threading.Thread(target=flooder, args=(url, images[1], tally, stop))
                for _ in range(args.flood)]

    def hostile() -> None:
        while not stop.wait(args.hostile_every_s):
            try:
                hostile_round(url, tally, max_bytes, long_png)
            except Exception as exc:  # noqa: BLE001 (a round the server did not answer at all)
                if not stop.is_set():
                    tally.add("hostile NOT as expected: a round failed", exc)

    threads.append(threading.Thread(target=hostile))
    print(f"server {url} (pid {server.pid}); {args.minutes} min, a report every {args.period_s} s",
          flush=True)
    for t in threads:
        t.daemon = True
        t.start()
    reports, start = [], time.monotonic()
    try:
        while time.monotonic() - start < args.minutes * 60:
            begun = time.monotonic()
            time.sleep(min(args.period_s, args.minutes * 60 - (begun - start)))
            counts, latencies, seen = tally.take()
            elapsed = time.monotonic() - begun
            report = {"minute": round((time.monotonic() - start) / 60, 1),
                      "well_formed_per_s": round(counts["well-formed done"] / elapsed, 2),
                      "bystander_p50_ms": _ms(percentile(latencies, 50)),
                      "bystander_p95_ms": _ms(percentile(latencies, 95)),
                      "bystander_requests": len(latencies),
                      "well_formed_errors": counts["well-formed errors"],
                      "flood_answered": counts["flood answered"],
                      "flood_refused_429": counts["flood refused (429)"],
                      "flood_other_errors": counts["flood other errors"],
                      "hostile_as_expected": counts["hostile as expected"],
                      "hostile_not_as_expected": {k: v for k, v in counts.items()
                                                  if k.startswith("hostile NOT")},
                      "server_rss_mb": round(rss_mb(server.pid) or 0.0, 1),
                      "cache_mb": round(folder_mb(work / "cache"), 1),
                      "failures_seen": seen}
            reports.append(report)
            print(json.dumps(report), flush=True)
    finally:
        stop.set()
        server.terminate()
        server.wait(30)
    return reports


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


if __name__ == "__main__":
    results = main()
    sys.exit(1 if any(r["well_formed_errors"] or r["hostile_not_as_expected"] for r in results) else 0)
