"""What Gradio's per-event analytics summary costs each request, at Gradio's default
(rebuilt after every event) and at the app's setting (once per ``ANALYTICS_EVERY`` events).

Gradio's queue keeps its last events (up to 10,000) and, after each event, summarises them
through a pandas DataFrame for its monitoring page. This calls the queue's own summary, as
the queue does after an event, with ``--events`` of them recorded, and reports the mean
milliseconds per event: over ``--runs`` events at Gradio's default, over one whole cycle of
``ANALYTICS_EVERY`` events (one rebuild among them) at the app's.

    python benchmarks/bench_analytics.py [--events 100 1000 10000] [--runs 50]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradio as gr  # noqa: E402

from vit_demo.ui import ANALYTICS_ENV, ANALYTICS_EVERY  # noqa: E402

API_NAMES = ("classify", "rollout", "compare")


def ms_per_event(frequency: int, events: int, runs: int) -> float:
    """Mean ms of the queue's end-of-event summary with ``events`` recorded events."""
    os.environ[ANALYTICS_ENV] = str(frequency)
    queue = gr.Blocks().queue()._queue  # the queue reads the variable when it is made
    rng = random.Random(0)
    for i in range(events):
        queue.event_analytics[f"event-{i}"] = {
            "time": time.time(), "status": "success", "process_time": rng.random(),
            "function": rng.choice(API_NAMES), "session_hash": f"{rng.getrandbits(40):010x}"}
    start = time.perf_counter()
    for _ in range(runs):
        queue.events_recorded += 1  # as the queue counts an event
        queue.compute_analytics_summary(list(queue.event_analytics.values()))
    return (time.perf_counter() - start) / runs * 1000


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[100, 1000, 10000],
                        help="events the queue holds (Gradio keeps at most 10,000)")
    parser.add_argument("--runs", type=int, default=50, help="events timed at Gradio's default")
    args = parser.parse_args(argv)
    rows = [{"events": n, "gradio_default_ms": round(ms_per_event(1, n, args.runs), 3),
             "app_ms": round(ms_per_event(ANALYTICS_EVERY, n, ANALYTICS_EVERY), 3)} for n in args.events]
    result = {"app_frequency": ANALYTICS_EVERY, "runs": args.runs, "rows": rows}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
