"""What the public-Space limits cost an attacker and a visitor, measured against a launched app.

- The inline-image attack: images sent in the API's JSON as ``data:`` URLs, one of 169
  megapixels, then four of 81 megapixels at once; the server process's peak resident memory
  above its level before the attack, and what each call got back.
- Stop latency: the time from Stop to a stopped job in each phase (the validation before the
  first step, training, the test), with evaluation batches of 10 images so that each phase
  lasts long enough to be stopped in.

Run: ``python benchmarks/bench_public.py [--data-dir DIR]`` (offline, CPU, about a minute).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from conftest import save_tiny_scratch  # noqa: E402
from test_security import _png_of, _rss_mb, sse_result  # noqa: E402
from vit_demo.finetune import job as job_module  # noqa: E402
from vit_demo.finetune.request import FinetuneRequest  # noqa: E402
from vit_demo.finetune.runner import RUNNING, TESTING, JobRunner  # noqa: E402
from vit_demo.finetune.store import FinetuneStore  # noqa: E402
from vit_demo.registry import SCRATCH_CHECKPOINT, Registry  # noqa: E402


def inline_attack(data_dir: str | None) -> dict:
    from vit_demo.ui import build_demo, create_context, serve_locally

    weights = Path(tempfile.mkdtemp()) / "weights"
    save_tiny_scratch(weights, SCRATCH_CHECKPOINT)
    ctx = create_context(weights, data_dir, allow_hub=False)
    demo = build_demo(ctx)
    url = serve_locally(demo, ctx)
    huge = "data:image/png;base64," + base64.b64encode(_png_of(13_000, 13_000)).decode()
    big = "data:image/png;base64," + base64.b64encode(_png_of(9_000, 9_000)).decode()
    peak, done = [0.0], threading.Event()
    before = _rss_mb()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()
    file = {"meta": {"_type": "gradio.FileData"}}
    start = time.perf_counter()
    one = sse_result(url, "classify", [{**file, "url": huge}, "scratch"])
    huge_s = time.perf_counter() - start
    with ThreadPoolExecutor(4) as pool:
        four = list(pool.map(lambda _: sse_result(url, "classify", [{**file, "url": big}, "scratch"]),
                             range(4)))
    done.set()
    demo.close()
    return {"rss_before_mb": round(before), "peak_rise_mb": round(peak[0] - before),
            "169MP": {"event": one[0], "message": json.loads(one[1]) if one[1] != "null" else None,
                      "seconds": round(huge_s, 3)},
            "4x81MP": [event for event, _ in four]}


def stop_latency(data_dir: str | None) -> dict:
    job_module.eval_batch_size = lambda kind, device: 10
    out = {}
    for phase in ("validation", "training", "test"):
        tmp = Path(tempfile.mkdtemp())
        save_tiny_scratch(tmp / "weights", SCRATCH_CHECKPOINT)
        registry = Registry(tmp / "weights", allow_hub=False, finetune_dir=tmp / "ft")
        runner = JobRunner(registry, FinetuneStore(tmp / "ft", 3), data_dir, state_dir=tmp / "state")
        runner.start(FinetuneRequest(train_images=2000, batch_size=16, epochs=5, val_images=5000,
                                     test_images=10_000, name="bench"), owner="me")
        reached = {"validation": lambda s: s.status == RUNNING and not s.history,
                   "training": lambda s: s.step >= 5,
                   "test": lambda s: s.status == TESTING}[phase]
        while not reached(runner.snapshot()):
            time.sleep(0.002)
        asked = time.perf_counter()
        runner.stop(owner="me")
        state = runner.wait(timeout=60)
        out[phase] = {"stop_to_stopped_s": round(time.perf_counter() - asked, 3),
                      "status": state.status, "model_kept": state.model_key is not None}
    return out


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=os.environ.get("VIT_DEMO_DATA_DIR"))
    args = parser.parse_args()
    result = {"inline_attack": inline_attack(args.data_dir), "stop": stop_latency(args.data_dir)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
