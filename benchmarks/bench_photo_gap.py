"""How much accuracy a model loses when a CIFAR-10 test image reaches it the way a photo does.

Each test image is degraded as a photo would be before the app sees it, then goes through the
app's own preprocessing (``inference.preprocess`` with the model's data config), and the
accuracy is compared with the clean 32 px image's:

- ``upscaled``: enlarged (bicubic) to a random side of 224-512 px, as a phone photo is large;
- ``jpeg``: that, saved as JPEG at quality 60-90;
- ``off-centre``: that, cropped to 80 % of its side at a random position (the object is rarely
  centred in a photo);
- ``all``: the three together.

Run: ``python benchmarks/bench_photo_gap.py --name vit-scratch-cifar10 [--images 2000]``.
Seeded: the same images get the same degradations in every run.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vit_demo.checkpoint import default_weights_dir  # noqa: E402
from vit_demo.data import load_cifar10  # noqa: E402
from vit_demo.inference import preprocess  # noqa: E402
from vit_demo.registry import load_checkpoint  # noqa: E402


def upscaled(img: Image.Image, rng: random.Random) -> Image.Image:
    side = rng.randint(224, 512)
    return img.resize((side, side), Image.BICUBIC)


def jpeg(img: Image.Image, rng: random.Random) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=rng.randint(60, 90))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def off_centre(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    cw, ch = int(0.8 * w), int(0.8 * h)
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((left, top, left + cw, top + ch))


DEGRADATIONS = {
    "clean": [],
    "upscaled": [upscaled],
    "jpeg": [upscaled, jpeg],
    "off-centre": [upscaled, off_centre],
    "all": [upscaled, jpeg, off_centre],
}


def main() -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="vit-scratch-cifar10")
    parser.add_argument("--weights-dir", type=Path, default=None)
    parser.add_argument("--data-dir", default=os.environ.get("VIT_DEMO_DATA_DIR"))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, _, data_cfg, _ = load_checkpoint(args.weights_dir or default_weights_dir(), args.name)
    test = load_cifar10("test", args.data_dir)
    n = min(args.images, len(test))
    result = {}
    for what, steps in DEGRADATIONS.items():
        rng = random.Random(0)
        correct = 0
        with torch.inference_mode():
            for i in range(n):
                img = Image.fromarray(test.x[i].numpy())
                for step in steps:
                    img = step(img, rng)
                correct += int(model(preprocess(img, data_cfg)).argmax(-1).item() == test.y[i].item())
        result[what] = round(correct / n, 4)
        print(f"{what:<11} {result[what]:.2%}", flush=True)
    print(json.dumps({"name": args.name, "images": n, "accuracy": result}))
    return result


if __name__ == "__main__":
    main()
