"""Start-up time of ``python app.py``: seconds until the page answers (the scratch model is
loaded before the server starts), and how ViT-B/16's background load ends (``/status``).

    python benchmarks/bench_startup.py [--timeout 120]

The app runs as a child process on a free loopback port, with the environment of this shell
(so without network it tries the real hub and fails in the background).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def model_status(client) -> dict[str, dict]:
    """The app's ``/status`` answer, by model key."""
    return {m["key"]: m for m in client.predict(api_name="/status")}


def wait_up(url: str, deadline: float) -> bool:
    while time.perf_counter() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    start = time.perf_counter()
    app = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result: dict = {"page_s": None, "vitb16_settled_s": None}
    try:
        if wait_up(url, start + args.timeout):
            result["page_s"] = round(time.perf_counter() - start, 2)
            from gradio_client import Client

            client = Client(url, verbose=False)
            result["scratch"] = model_status(client)["scratch"]["state"]
            while time.perf_counter() - start < args.timeout:
                vit = model_status(client)["vit-b16"]
                if vit["state"] in ("ready", "unavailable"):
                    result["vitb16_settled_s"] = round(time.perf_counter() - start, 2)
                    result["vitb16"] = f"{vit['state']}: {vit['reason'][:160]}"
                    break
                time.sleep(0.5)
            client.close()
    finally:
        app.terminate()
        app.wait(timeout=30)
    print(f"page up after {result['page_s']} s, scratch model {result.get('scratch')}")
    print(f"ViT-B/16 settled after {result['vitb16_settled_s']} s: {result.get('vitb16')}")
    return result


if __name__ == "__main__":
    main()
